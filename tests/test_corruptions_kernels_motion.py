"""The kernels of motion_blur (``kernels.lines``) and snow (``kernels.snow``) against the tensor
program they replace on uint8 CPU batches: the same bits, for every severity, square and
non-square images, one generator or one per image. The tensor program is what CUDA batches run;
here it runs on the CPU with ``_on_host`` patched to False."""
import numpy as np
import pytest
import torch

from corruption_batches import both_paths, counting, photo_batch

from timm_xbn.corruptions import corrupt_batch, kernels
from timm_xbn.corruptions.kernels import lines, snow

NAMES = ("motion_blur", "snow")
# the kernels run only where torch's CPU kernels fuse multiply-adds (its AVX2 / AVX-512 builds)
needs_fused_sums = pytest.mark.skipif(not kernels.TORCH_FUSES, reason="torch's CPU kernels do not fuse here")


@pytest.fixture
def kernel_calls(monkeypatch) -> dict:
    """The calls of the kernels that finish each corruption (so a test knows the kernel ran)."""
    return {"motion_blur": counting(monkeypatch, lines, "blur_lines"), "snow": counting(monkeypatch, snow, "snow")}


@needs_fused_sums
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (80, 48), (37, 50)])
def test_the_kernel_equals_the_tensor_program(monkeypatch, kernel_calls, name, shape):
    x = photo_batch(5, *shape)
    for severity in range(1, 6):
        kernel, tensor = both_paths(monkeypatch, x, name, severity, seed=severity)
        assert kernel.dtype == torch.uint8
        torch.testing.assert_close(kernel, tensor, atol=0, rtol=0, msg=f"{name} {shape} severity {severity}")
        assert not torch.equal(kernel, x)  # it did corrupt
    assert len(kernel_calls[name]) == 5 * 2  # 5 severities, chunks of 4 + 1 images


@needs_fused_sums
@pytest.mark.parametrize("name", NAMES)
def test_per_image_generators_and_single_images(monkeypatch, kernel_calls, name):
    x = photo_batch(5, 48, 80)
    for severity in (2, 5):
        kernel, tensor = both_paths(monkeypatch, x, name, severity, seed=10 * severity, per_image=True)
        torch.testing.assert_close(kernel, tensor, atol=0, rtol=0, msg=f"{name} severity {severity}")
        # each image depends on its own generator only: alone, it gets the same result
        alone, _ = both_paths(monkeypatch, x[3:4], name, severity, seed=10 * severity + 3, per_image=True)
        torch.testing.assert_close(alone[0], kernel[3], atol=0, rtol=0)
    kernel, tensor = both_paths(monkeypatch, x[1], name, 4, seed=7)  # one (3, H, W) image
    assert kernel.shape == x[1].shape
    torch.testing.assert_close(kernel, tensor, atol=0, rtol=0)
    assert len(kernel_calls[name]) > 0


@pytest.mark.parametrize("name", NAMES)
def test_full_size_images(monkeypatch, name):
    """224 px, at the longest line (severity 5: 41 taps for motion_blur) and the shortest."""
    x = photo_batch(2, 224, 224)
    for severity in (1, 5):
        kernel, tensor = both_paths(monkeypatch, x, name, severity, seed=severity)
        torch.testing.assert_close(kernel, tensor, atol=0, rtol=0, msg=f"{name} severity {severity}")


def test_lines_longer_than_the_image(monkeypatch):
    """32 px images and 41 taps: the shifts that reach the image size end the line (the tensor program
    pads by index there, F.pad's replicate refuses pads that large)."""
    x = photo_batch(3, 32, 40)
    for name in NAMES:
        kernel, tensor = both_paths(monkeypatch, x, name, 5, seed=3)
        torch.testing.assert_close(kernel, tensor, atol=0, rtol=0, msg=name)


def test_channels_last_batches(monkeypatch):
    """A permuted (channels-last) batch: the kernels read and write through its strides."""
    x = photo_batch(5, 48, 80).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    for name in NAMES:
        kernel, tensor = both_paths(monkeypatch, x, name, 3, seed=0)
        torch.testing.assert_close(kernel, tensor, atol=0, rtol=0, msg=name)


def test_the_tensor_program_without_fused_sums(monkeypatch, kernel_calls):
    """Where torch's kernels multiply and add apart (no AVX2 / AVX-512 kernels), the tensor program
    runs: the kernel's fused sums would round differently."""
    monkeypatch.setattr(kernels, "TORCH_FUSES", False)
    x = photo_batch(2, 48, 48)
    for name in NAMES:
        corrupt_batch(x, name, 3, torch.Generator().manual_seed(0))
    assert kernel_calls == {"motion_blur": [], "snow": []}


def test_fused_sums_are_what_torch_computes():
    """The premise of the kernels: torch's ``add_(b, alpha=w)`` on float32 rounds once (a fused
    multiply-add), here on a CPU where ``kernels.TORCH_FUSES``; checked against float64 arithmetic,
    where a + w * b is exact before the one rounding to float32."""
    if not kernels.TORCH_FUSES:
        pytest.skip("torch's CPU kernels do not fuse here")
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1000, generator=g), torch.rand(1000, generator=g) * 255
    w = float(np.float32(0.1234567))
    fused = (a.double() + w * b.double()).float()
    assert torch.equal(a.clone().add_(b, alpha=w), fused)
    assert not torch.equal(a + (b * w), fused)  # two roundings differ somewhere in 1000 values


def test_the_flakes_layer_at_its_ties():
    """snow's per-value steps where photos rarely land: values exactly at the threshold (kept), and
    grey levels exactly halfway (rounded half to even, like torch.round). A one-tap line (weight 1)
    leaves the values as they are; the tensor program's ops give the expected layer."""
    threshold = np.float32(0.85)
    halves = [np.float32((k + 0.5) / 255) for k in range(255)]
    ties = [v for v in halves if v * np.float32(255) == np.float32(int(v * np.float32(255)) + 0.5)]
    assert len(ties) > 20
    values = np.array(ties + [threshold, np.nextafter(threshold, np.float32(0)), 1.5, -0.2, 0.0], np.float32)
    plane = np.resize(values, (16, len(values))).copy()
    flakes = torch.from_numpy(plane.copy())
    expected = flakes.masked_fill_(flakes < float(threshold), 0).clamp_(0, 1).mul(255).round_().numpy()
    padded = np.empty((16, len(values) + 2), np.float32)
    layer = np.empty_like(plane)
    one_tap = np.zeros((1, 1), np.int64)
    snow._flakes_layer(plane, threshold, np.ones(1, np.float32), one_tap[0], one_tap[0], 1, padded, layer)
    np.testing.assert_array_equal(layer, expected)
    assert expected[0, len(ties)] == 217 and expected[0, len(ties) + 1] == 0  # 0.85 kept, the float below it not


@needs_fused_sums
def test_enlarge_is_torchs_bilinear_zoom():
    """snow's zoom of its normals against F.interpolate itself, at snow's zooms of 224 px and at sizes
    around the 128 (height + width) where torch changes kernels."""
    g = torch.Generator().manual_seed(0)
    cases = [((75, 75), (225, 225)), ((112, 112), (224, 224)), ((50, 50), (225, 225)), ((90, 90), (225, 225)),
             ((16, 27), (48, 81)), ((13, 22), (58, 99)), ((16, 27), (48, 80)), ((12, 20), (48, 80))]
    checked = 0
    for crop, size in cases:
        crops = torch.randn(2, 1, *crop, generator=g) * 0.3 + 0.55
        expected = torch.nn.functional.interpolate(crops, size=size, mode="bilinear", align_corners=True)[:, 0]
        if snow.enlarges_like_torch(*size):
            np.testing.assert_array_equal(snow.enlarge(crops[:, 0].numpy(), *size), expected.numpy())
            checked += 1
    assert checked == 6  # 48 + 80 = 128 is left to torch
