"""Batch-free norms checked against closed-form numpy normalization."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timm_xbn.layers import GroupNorm2d, InstanceNorm2d, create_bfn, resolve_groups


def numpy_group_norm(x: np.ndarray, groups: int, eps: float = 1e-5) -> np.ndarray:
    n, c, h, w = x.shape
    g = x.reshape(n, groups, c // groups * h * w).astype(np.float64)
    out = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return out.reshape(n, c, h, w)


@pytest.mark.parametrize("channels, groups, expected", [(256, 64, 64), (32, 64, 32), (64, 64, 64), (128, 32, 32)])
def test_groups_clamped_to_channels(channels, groups, expected):
    assert resolve_groups(channels, groups) == expected


def test_channels_per_group():
    assert resolve_groups(256, channels_per_group=16) == 16
    with pytest.raises(ValueError, match="does not divide 24"):
        resolve_groups(24, channels_per_group=16)


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match="64 groups does not divide 120 channels"):
        create_bfn("gn", 120)


def test_unknown_kind():
    with pytest.raises(ValueError, match="gn, in, ln"):
        create_bfn("bn", 64)


def test_group_norm_matches_closed_form():
    torch.manual_seed(0)
    x = torch.randn(3, 128, 5, 4) * 3 + 1
    gn = create_bfn("gn", 128, groups=32)
    assert isinstance(gn, GroupNorm2d) and gn.num_groups == 32
    np.testing.assert_allclose(gn(x).detach().numpy(), numpy_group_norm(x.numpy(), 32), atol=1e-5)


def test_instance_norm_matches_closed_form_and_keeps_activation():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 6) * 2 - 1
    norm = create_bfn("in", 16, act=torch.nn.ReLU())
    assert isinstance(norm, InstanceNorm2d) and norm.weight is None  # authors: affine=False
    expected = np.maximum(numpy_group_norm(x.numpy(), 16), 0)
    np.testing.assert_allclose(norm(x).numpy(), expected, atol=1e-5)


def test_layer_norm_style_is_one_group():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 3, 3)
    ln = create_bfn("ln", 8)
    reference = F.layer_norm(x, x.shape[1:], eps=1e-5)
    torch.testing.assert_close(ln(x), reference, atol=1e-5, rtol=1e-5)


def test_bfn_is_batch_independent():
    torch.manual_seed(0)
    x = torch.randn(6, 64, 4, 4)
    gn = create_bfn("gn", 64, groups=8).train()
    torch.testing.assert_close(gn(x)[:2], gn(x[:2]))
