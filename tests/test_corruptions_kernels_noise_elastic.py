"""The numba kernels of shot_noise, impulse_noise and elastic_transform equal their tensor programs bit for bit.

Each kernel serves uint8 batches on the host; the tensor program it replaces (torch's searchsorted and masks,
F.grid_sample) stays the path of CUDA and float batches. Here both run on the same uint8 batches with the same
seeds: the noise kernels against the device path (``_on_host`` patched to False), elastic_transform's against
the host's own tensor program (its fields blurred by the same OpenCV filter), with the kernel switched off.
"""
import pytest
import torch

from corruption_batches import both_paths, photo_batch, tensor_program

from timm_xbn.corruptions import kernels
from timm_xbn.corruptions.torch_ops import Draws

NAMES = ("shot_noise", "impulse_noise", "elastic_transform")
SIZES = ((64, 64), (48, 80), (80, 48))


def switch_off(name):
    """The kernel of ``name`` off: the noise runs the device path's tensor ops, elastic_transform the host's."""
    if name == "elastic_transform":
        return lambda patch: patch.setattr(kernels, "TORCH_FUSES", False)
    return tensor_program


@pytest.mark.parametrize("per_image", (False, True), ids=("one_generator", "per_image"))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_kernels_equal_the_tensor_programs(monkeypatch, name, size, per_image):
    for count in (1, 5):
        batch = photo_batch(count, *size)
        for severity in range(1, 6):
            kernel, tensor = both_paths(monkeypatch, batch, name, severity, seed=10 * severity + count,
                                        per_image=per_image, switch_off=switch_off(name))
            assert kernel.dtype == torch.uint8 and kernel.shape == batch.shape
            assert torch.equal(kernel, tensor), (name, size, count, severity)
            assert not torch.equal(kernel, batch)  # corrupted at all


@pytest.mark.parametrize("name", NAMES)
def test_kernels_equal_the_tensor_programs_at_224_px(monkeypatch, name):
    batch = photo_batch(2, 224, 224)
    kernel, tensor = both_paths(monkeypatch, batch, name, 4, seed=3, switch_off=switch_off(name))
    assert torch.equal(kernel, tensor)


class FarDraws(Draws):
    """Displacement fields 300x the usual: most sources several image sizes away (reflected more than once)."""

    def field_uniform(self, batch, height, width, low, high):
        return super().field_uniform(batch, height, width, low * 300, high * 300)


def test_elastic_kernel_reflects_far_sources_like_grid_sample(monkeypatch):
    batch = photo_batch(3, 48, 80)
    for severity in (1, 5):
        draws = lambda: FarDraws(torch.Generator().manual_seed(severity), torch.device("cpu"), torch.float32)
        kernel, tensor = both_paths(monkeypatch, batch, "elastic_transform", severity, draws=draws,
                                    switch_off=switch_off("elastic_transform"))
        assert torch.equal(kernel, tensor)


def test_elastic_kernel_serves_only_float32_draws(monkeypatch):
    """float64 compute (the reference replay's) keeps the tensor program, in float64."""
    kernel, tensor = both_paths(monkeypatch, photo_batch(2, 64, 64), "elastic_transform", 3,
                                switch_off=switch_off("elastic_transform"), compute_dtype=torch.float64)
    assert torch.equal(kernel, tensor)
