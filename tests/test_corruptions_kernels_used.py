"""Which path runs: uint8 CPU batches go through each corruption's compiled kernel (the other kernel
tests compare the two paths, which would also agree if the kernels never ran), float batches do not
(but for the uniform draws and fog's plasma, which have the tensor program's bits)."""
import importlib

import pytest
import torch

from corruption_batches import counting, photo_batch

from timm_xbn.corruptions import CORRUPTIONS, corrupt_batch, kernels

# corruption -> the kernel (module in timm_xbn.corruptions.kernels, function) its CPU uint8 path calls
KERNEL_OF = {
    "gaussian_noise": ("pointwise", "add_noise"), "shot_noise": ("noise", "poisson_levels"),
    "impulse_noise": ("noise", "salt_and_pepper"), "defocus_blur": ("pointwise", "unit_to_uint8"),
    "glass_blur": ("glass", "glass_gather"), "motion_blur": ("lines", "blur_lines"),
    "zoom_blur": ("pointwise", "clamp_to_uint8"), "snow": ("snow", "snow"), "frost": ("pointwise", "blend_texture"),
    "fog": ("pointwise", "scale_haze"), "brightness": ("pointwise", "scale_value"),
    "contrast": ("pointwise", "blend_channels"), "elastic_transform": ("elastic", "displace"),
    "pixelate": ("pixelate", "box_rows_enlarged"),
}
FUSED = ("motion_blur", "snow", "elastic_transform")  # on only where torch fuses multiply-adds


def test_every_corruption_but_jpeg_has_a_kernel():
    assert sorted(KERNEL_OF) == sorted(set(CORRUPTIONS) - {"jpeg_compression"})


@pytest.mark.parametrize("name", sorted(KERNEL_OF))
def test_uint8_cpu_batches_run_the_kernel_and_float_batches_do_not(name, monkeypatch):
    if name in FUSED and not kernels.TORCH_FUSES:
        pytest.skip("torch's CPU kernels do not fuse here")
    module = importlib.import_module(f"timm_xbn.corruptions.kernels.{KERNEL_OF[name][0]}")
    calls = counting(monkeypatch, module, KERNEL_OF[name][1])
    x = photo_batch(2, 48, 48)
    corrupt_batch(x, name, 2, torch.Generator().manual_seed(0))
    assert calls, name
    calls.clear()
    corrupt_batch(x.float() / 255, name, 2, torch.Generator().manual_seed(0))
    assert not calls, name
