"""The numba kernels of pixelate and glass_blur (uint8 CPU batches) against the tensor program.

The tensor program is what CUDA batches run (``_on_host`` patched to False here). Glass blur's
kernels replace the passes around its two Gaussian blurs, which stay OpenCV's on the host: the
tensor program it is compared with blurs with OpenCV too (the device path's depthwise convolutions
round a few pixels the other way, ``test_corruptions_ops``). Pixelate is also compared with PIL.
"""
import numpy as np
import pytest
import torch

from corruption_batches import counting, photo_batch, seeded, tensor_program

from timm_xbn.corruptions import corrupt_batch, corrupt_reference, torch_ops
from timm_xbn.corruptions.kernels import glass as glass_kernels
from timm_xbn.corruptions.kernels import pixelate as pixelate_kernels

SIZES = ((64, 64), (48, 80), (80, 48))


def tensor_path(monkeypatch: pytest.MonkeyPatch, host_blur: bool = False) -> None:
    """Make ``corrupt_batch`` run the tensor program on the CPU (with OpenCV's blurs if ``host_blur``)."""
    if host_blur:
        def opencv_blur(t, row_kernel, col_kernel, mode, dtype=None):
            dtype = dtype or row_kernel.dtype
            return torch_ops._separable_cv2(t, row_kernel.to(dtype), col_kernel.to(dtype), mode, dtype)

        monkeypatch.setattr(torch_ops, "_separable_hwn", opencv_blur)
    tensor_program(monkeypatch)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("batch", (1, 5))
@pytest.mark.parametrize("per_image", (False, True))
def test_glass_kernel_equals_the_tensor_program(size, batch, per_image, monkeypatch):
    x = photo_batch(batch, *size)
    with monkeypatch.context() as patch:
        calls = counting(patch, glass_kernels, "glass_gather")
        kernel = [corrupt_batch(x, "glass_blur", s, seeded(batch, s, per_image)) for s in range(1, 6)]
        assert len(calls) == 5 * -(-batch // torch_ops._CPU_CHUNK)
    tensor_path(monkeypatch, host_blur=True)
    for severity, ours in enumerate(kernel, 1):
        expected = corrupt_batch(x, "glass_blur", severity, seeded(batch, severity, per_image))
        assert torch.equal(ours, expected), (severity, (ours != expected).sum().item())


def test_glass_kernel_equals_the_tensor_program_at_224_and_32_px_wide_and_in_float64(monkeypatch):
    """224 px; 32 px wide, where the drawable offsets span more than the width (no pixel skips the
    clamping); float64 compute on a non-contiguous batch."""
    x, small = photo_batch(2, 224, 224), photo_batch(3, 80, 32)
    kernel = [corrupt_batch(x, "glass_blur", s, seeded(2, s, False)) for s in (1, 5)]
    kernel += [corrupt_batch(small, "glass_blur", s, seeded(3, s, False)) for s in (4, 5)]
    wide = corrupt_batch(x[:, :, :64], "glass_blur", 4, seeded(2, 9, True), compute_dtype=torch.float64)
    tensor_path(monkeypatch, host_blur=True)
    for (batch, severity), ours in zip(((x, 1), (x, 5), (small, 4), (small, 5)), kernel):
        assert torch.equal(ours, corrupt_batch(batch, "glass_blur", severity, seeded(len(batch), severity, False)))
    expected = corrupt_batch(x[:, :, :64], "glass_blur", 4, seeded(2, 9, True), compute_dtype=torch.float64)
    assert torch.equal(wide, expected)


class OneOffset(torch_ops.Draws):
    """Draws whose every pixel draws the same 15-bit number."""

    def __init__(self, number: int) -> None:
        super().__init__(None, torch.device("cpu"), torch.float32)
        self.number = number

    def pixel_bits15(self, height: int, width: int, batch: int) -> torch.Tensor:
        return torch.full((height, width, batch), self.number, dtype=torch.int16)


@pytest.mark.parametrize("severity", range(1, 6))
def test_glass_kernel_equals_the_tensor_program_at_the_extreme_offsets(severity, monkeypatch):
    """Every pixel moved by the largest drawable offset up, down, left or right: the pixels nearest
    the region the kernel gathers without clamping read from its edge (random draws reach these
    offsets at a few pixels at most)."""
    x = photo_batch(2, 48, 80)
    bins = torch_ops._glass_bins(severity)
    offsets = torch_ops._glass_offsets(severity)[0][bins]
    extremes = {int(f(offsets[:, axis])) for f in (np.argmin, np.argmax) for axis in (0, 1)}
    kernel = {k: corrupt_batch(x, "glass_blur", severity, draws=OneOffset(k)) for k in extremes}
    tensor_path(monkeypatch, host_blur=True)
    for k, ours in kernel.items():
        assert torch.equal(ours, corrupt_batch(x, "glass_blur", severity, draws=OneOffset(k))), offsets[k]


@pytest.mark.parametrize("name", ("glass_blur", "pixelate"))
def test_float_batches_do_not_take_the_kernels(name, monkeypatch):
    """Float input keeps the tensor program's bits (the committed study corrupts float batches)."""
    def refuse(*args):
        raise AssertionError("a kernel ran on a float batch")

    for module in (glass_kernels, pixelate_kernels):
        for kernel in module.__all__:
            monkeypatch.setattr(module, kernel, refuse)
    x = photo_batch(2, 48, 80).float() / 255
    assert corrupt_batch(x, name, 3, torch.Generator().manual_seed(0)).dtype == torch.float32


@pytest.mark.parametrize("size", SIZES + ((224, 224),))
@pytest.mark.parametrize("batch", (1, 5))
def test_pixelate_kernel_equals_the_tensor_program_and_pil(size, batch, monkeypatch):
    x = photo_batch(batch, *size)
    with monkeypatch.context() as patch:
        calls = counting(patch, pixelate_kernels, "box_rows_enlarged")
        kernel = [corrupt_batch(x, "pixelate", s) for s in range(1, 6)]
        assert calls
    for severity, ours in enumerate(kernel, 1):
        for image, out in zip(x[:2].permute(0, 2, 3, 1).numpy(), ours[:2].permute(0, 2, 3, 1).numpy()):
            np.testing.assert_array_equal(out, corrupt_reference(image, "pixelate", severity))
    tensor_path(monkeypatch)
    for severity, ours in enumerate(kernel, 1):
        assert torch.equal(ours, corrupt_batch(x, "pixelate", severity)), severity


@pytest.mark.parametrize("size", ((37, 50), (50, 37), (96, 250)))
def test_pixelate_kernel_equals_pil_on_noise(size):
    """Noise hits every rounding case; these sizes give windows of 1 to 5 taps (k or k + 1 per size)."""
    x = torch.from_numpy(np.random.default_rng(sum(size)).integers(0, 256, (2, 3, *size), dtype=np.uint8))
    for severity in range(1, 6):
        ours = corrupt_batch(x, "pixelate", severity).permute(0, 2, 3, 1).numpy()
        for image, out in zip(x.permute(0, 2, 3, 1).numpy(), ours):
            np.testing.assert_array_equal(out, corrupt_reference(np.ascontiguousarray(image), "pixelate", severity))
