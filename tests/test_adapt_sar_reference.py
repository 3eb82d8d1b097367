"""SAR as its reference code (Niu et al. 2023, github.com/mr-eggplant/SAR), point by point (issue 24).

Each expectation is written out by hand from the reference: which layers ``collect_params`` adapts,
its ``main.py`` learning-rate rule, and the SGD step it takes even when no sample passes a filter.
(The EMA kept across a recovery is pinned in test_adapt_values.py.)
"""
import pytest
import torch
import torch.nn as nn

from test_adapt import AFFINE, affine_of, batch, tiny_net
from timm_xbn.adapt import SAR
from timm_xbn.adapt.norms import norm_affine_parameters, sar_affine_parameters
from timm_xbn.adapt.sar import sar_learning_rate


def named_net() -> nn.Module:
    """Modules named as in a ResNet and a ViT, with every norm type."""
    m = nn.Module()
    m.bn1 = nn.BatchNorm2d(2)
    m.layer1 = nn.Sequential(nn.BatchNorm2d(2), nn.GroupNorm(1, 2), nn.InstanceNorm2d(2, affine=True), nn.BatchNorm1d(2))
    m.layer4 = nn.Sequential(nn.BatchNorm2d(2))
    m.blocks = nn.Sequential(*[nn.Module() for _ in range(12)])
    for block in m.blocks:
        block.norm1 = nn.LayerNorm(2)
    m.norm = nn.LayerNorm(2)
    m.fc_norm = nn.LayerNorm(2)
    m.head = nn.Module()
    m.head.norm = nn.Module()
    m.head.norm.ln = nn.LayerNorm(2)
    return m


def test_sar_adapts_the_layers_the_reference_collects():
    names = [n for n, _ in sar_affine_parameters(named_net())]
    modules = ["bn1", "layer1.0", "layer1.1"] + [f"blocks.{i}.norm1" for i in range(9)] + ["fc_norm"]
    assert names == [f"{m}.{kind}" for m in modules for kind in ("weight", "bias")]
    # left out: IN and BN1d (not BN2d/GN/LN), layer4, blocks 9-11, the final "norm", "head.norm.ln" ("norm.")
    assert len(norm_affine_parameters(named_net())) == 2 * (len(modules) + 2 + 1 + 3 + 1 + 1)


def test_sar_layers_option():
    net = named_net()
    net.head = nn.Linear(2, 2)
    reference = SAR(net)
    everything = SAR(net, layers="all")
    assert len(reference.params) == 2 * 13 and len(everything.params) == 2 * 20  # + IN, BN1d, layer4, blocks 9-11, norm
    with pytest.raises(ValueError, match="layers"):
        SAR(net, layers="top")


@pytest.mark.parametrize("bs,vit,lr", [(1, False, 0.00025 / 32), (16, False, 0.000125), (31, False, 0.00025 * 31 / 32),
                                        (32, False, 0.00025), (64, False, 0.00025),
                                        (1, True, 0.001 / 64), (64, True, 0.001), (128, True, 0.002)])
def test_sar_learning_rate_rule(bs, vit, lr):
    assert sar_learning_rate(bs, vit) == pytest.approx(lr, rel=1e-15)


def tiny_vit():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=8, patch_size=4, in_chans=3, num_classes=3, embed_dim=8, depth=1, num_heads=2)


def test_sar_uses_the_rule_at_the_stream_batch_size_and_after_a_recovery():
    sar = SAR(tiny_net(), margin=10.0, reset_constant=100.0)  # recovers after every batch
    x, _ = batch(n=6)
    sar(x)
    assert sar.resets == 1
    sar(x[:2])  # a shorter last batch keeps the stream's rate
    assert sar.optimizer.param_groups[0]["lr"] == pytest.approx(0.00025 * 6 / 32, rel=1e-15)
    assert SAR(tiny_net(), lr=0.01).optimizer.param_groups[0]["lr"] == 0.01
    vit = SAR(tiny_vit())
    vit(torch.randn(4, 3, 8, 8))
    assert vit.optimizer.param_groups[0]["lr"] == pytest.approx(0.001 * 4 / 64, rel=1e-15)


def test_sar_steps_with_momentum_when_no_sample_is_reliable():
    """Batch 1 (all reliable): w1 = w0 - lr g1 (momentum buffer b1 = g1). Batch 2 (none reliable):
    the reference still steps on a zero gradient, b2 = 0.9 b1, so w2 = w1 - 0.9 lr g1 = w1 + 0.9 (w1 - w0)."""
    net = tiny_net()
    sar = SAR(net, lr=0.1, margin=10.0, reset_constant=0.0)
    x, _ = batch()
    w0 = {k: v.clone() for k, v in affine_of(sar.model).items()}
    sar(x)
    w1 = {k: v.clone() for k, v in affine_of(sar.model).items()}
    sar.margin = 0.0
    ema = sar.ema
    sar(x)
    assert sar.ema == ema  # no second loss: the EMA does not move
    for name in AFFINE:
        assert not torch.equal(w1[name], w0[name])
        torch.testing.assert_close(affine_of(sar.model)[name], w1[name] + 0.9 * (w1[name] - w0[name]), rtol=0, atol=1e-12)
