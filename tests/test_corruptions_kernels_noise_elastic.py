"""The numba kernels of shot_noise, impulse_noise and elastic_transform equal their tensor programs bit for bit.

Each kernel serves uint8 batches on the host; the tensor program it replaces (torch's searchsorted and masks,
F.grid_sample) stays the path of CUDA and float batches. Here both run on the same uint8 batches with the same
seeds: the noise kernels against the device path (``_on_host`` patched to False), elastic_transform's against
the host's own tensor program (its fields blurred by the same OpenCV filter), with the kernel switched off.
"""
import numpy as np
import pytest
import torch

from timm_xbn.corruptions import corrupt_batch, torch_ops
from timm_xbn.corruptions.agreement import real_images
from timm_xbn.corruptions import kernels
from timm_xbn.corruptions.torch_ops import Draws

NAMES = ("shot_noise", "impulse_noise", "elastic_transform")
SIZES = ((64, 64), (48, 80), (80, 48))


@pytest.fixture(scope="module")
def photos():
    """Five real photos at 96 px, cropped to each size."""
    return torch.from_numpy(np.stack(real_images(5, 96))).permute(0, 3, 1, 2).contiguous()


def crop(photos, size, count):
    return photos[:count, :, :size[0], :size[1]].contiguous()


def seeded(per_image, count, seed):
    """One generator for the batch, or one per image (``ImageDraws``)."""
    if per_image:
        return [torch.Generator().manual_seed(seed + i) for i in range(count)]
    return torch.Generator().manual_seed(seed)


def without_kernel(monkeypatch, name):
    """Switch ``name``'s kernel off: the noise runs the device path's tensor ops, elastic_transform the host's."""
    if name == "elastic_transform":
        monkeypatch.setattr(kernels, "TORCH_FUSES", False)
    else:
        monkeypatch.setattr(torch_ops, "_on_host", lambda t: False)


def both_paths(monkeypatch, batch, name, severity, per_image=False, seed=0, draws=None, **kwargs):
    """(kernel, tensor program) results of one corruption of ``batch``, from the same random numbers."""
    def run():
        return corrupt_batch(batch, name, severity, seeded(per_image, len(batch), seed), draws=draws and draws(),
                             **kwargs)

    kernel = run()
    with monkeypatch.context() as patch:
        without_kernel(patch, name)
        return kernel, run()


@pytest.mark.parametrize("per_image", (False, True), ids=("one_generator", "per_image"))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_kernels_equal_the_tensor_programs(photos, monkeypatch, name, size, per_image):
    for count in (1, 5):
        batch = crop(photos, size, count)
        for severity in range(1, 6):
            kernel, tensor = both_paths(monkeypatch, batch, name, severity, per_image, seed=10 * severity + count)
            assert kernel.dtype == torch.uint8 and kernel.shape == batch.shape
            assert torch.equal(kernel, tensor), (name, size, count, severity)
            assert not torch.equal(kernel, batch)  # corrupted at all


@pytest.mark.parametrize("name", NAMES)
def test_kernels_equal_the_tensor_programs_at_224_px(monkeypatch, name):
    batch = torch.from_numpy(np.stack(real_images(2, 224))).permute(0, 3, 1, 2).contiguous()
    kernel, tensor = both_paths(monkeypatch, batch, name, 4, seed=3)
    assert torch.equal(kernel, tensor)


class FarDraws(Draws):
    """Displacement fields 300x the usual: most sources several image sizes away (reflected more than once)."""

    def field_uniform(self, batch, height, width, low, high):
        return super().field_uniform(batch, height, width, low * 300, high * 300)


def test_elastic_kernel_reflects_far_sources_like_grid_sample(photos, monkeypatch):
    batch = crop(photos, (48, 80), 3)
    for severity in (1, 5):
        draws = lambda: FarDraws(torch.Generator().manual_seed(severity), torch.device("cpu"), torch.float32)
        kernel, tensor = both_paths(monkeypatch, batch, "elastic_transform", severity, draws=draws)
        assert torch.equal(kernel, tensor)


def test_elastic_kernel_serves_only_float32_draws(photos, monkeypatch):
    """float64 compute (the reference replay's) keeps the tensor program, in float64."""
    kernel, tensor = both_paths(monkeypatch, crop(photos, (64, 64), 2), "elastic_transform", 3,
                                compute_dtype=torch.float64)
    assert torch.equal(kernel, tensor)
