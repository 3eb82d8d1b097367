"""The torch corruptions against the reference package (imagecorruptions) on real photos.

Replay: the torch program fed with the reference's own random draws must reproduce its output
(exactly, or within the per-corruption tolerance of ``REPLAY_TOLERANCE``). Statistics: with
torch's own random numbers the PSNR to the clean image must match the reference's in mean.
"""
import numpy as np
import pytest
import torch
from scipy import stats

from timm_xbn.corruptions import CORRUPTIONS, corrupt_batch, corrupt_reference
from timm_xbn.corruptions.agreement import (
    REPLAY_TOLERANCE, real_images, replay_agreement, statistical_agreement, statistics_pass,
)
from timm_xbn.corruptions.torch_ops import Draws

RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform")
DETERMINISTIC = tuple(c for c in CORRUPTIONS if c not in RANDOM)
IDENTITY = torch.arange(256).to(torch.uint8)  # a lookup table that returns the Poisson counts themselves


@pytest.fixture(scope="module")
def photos():
    """Three real photos at 64 px and a non-square 48 x 80 crop."""
    square = real_images(3, 64)
    wide = real_images(1, 80)[0][16:64]
    return square + [np.ascontiguousarray(wide)]


def as_batch(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("name", sorted(REPLAY_TOLERANCE))
def test_replay_reproduces_the_reference(photos, name):
    min_identical, max_abs, max_mean = REPLAY_TOLERANCE[name]
    for images in (photos[:3], photos[3:]):
        result = replay_agreement(images, name, severities=(1, 3, 5))
        assert result["identical"] >= min_identical, result
        assert result["max_abs"] <= max_abs, result
        assert result["mean_abs"] <= max_mean, result


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_match_the_reference_statistically(name):
    result = statistical_agreement(real_images(6, 64), name, seed=3)
    assert statistics_pass(result), result
    assert result["change_ours"] == pytest.approx(result["change_ref"], rel=0.15, abs=1.0)


@pytest.mark.parametrize("name", ("contrast", "pixelate", "jpeg_compression"))
def test_deterministic_corruptions_equal_the_reference_on_uint8(photos, name):
    for images in (photos[:3], photos[3:]):
        for severity in range(1, 6):
            ours = corrupt_batch(as_batch(images), name, severity).permute(0, 2, 3, 1).numpy()
            for image, out in zip(images, ours):
                np.testing.assert_array_equal(out, corrupt_reference(image, name, severity))


@pytest.mark.parametrize("size", ((224, 224), (37, 50), (96, 250)))
def test_pixelate_equals_pil_for_every_window_split(size):
    """Sizes where the box windows hold k or k + 1 taps for k = 1..4 (224 px: 1-2 at severity 1,
    exactly 2 and 4 at severities 2 and 5), on noise so every rounding case occurs."""
    images = list(np.random.default_rng(sum(size)).integers(0, 256, (2, *size, 3), dtype=np.uint8))
    for severity in range(1, 6):
        ours = corrupt_batch(as_batch(images), "pixelate", severity).permute(0, 2, 3, 1).numpy()
        for image, out in zip(images, ours):
            np.testing.assert_array_equal(out, corrupt_reference(image, "pixelate", severity))


@pytest.mark.parametrize("name", sorted(set(DETERMINISTIC) - {"contrast", "pixelate", "jpeg_compression"}))
def test_deterministic_corruptions_match_the_reference_at_every_severity(photos, name):
    """Every severity's constants, not only the 1, 3 and 5 of the replay test: the torch program in float64
    against the reference, within the replay tolerance (rounding moves a few pixels by one grey level)."""
    min_identical, max_abs, max_mean = REPLAY_TOLERANCE[name]
    for severity in range(1, 6):
        ours = corrupt_batch(as_batch(photos[:3]), name, severity, compute_dtype=torch.float64)
        ours = ours.permute(0, 2, 3, 1).numpy().astype(np.int64)
        ref = np.stack([corrupt_reference(image, name, severity) for image in photos[:3]]).astype(np.int64)
        diff = np.abs(ours - ref)
        assert (diff == 0).mean() >= min_identical and diff.max() <= max_abs and diff.mean() <= max_mean, \
            (severity, (diff == 0).mean(), diff.max(), diff.mean())


def test_poisson_levels_sample_the_poisson_distribution():
    draws = Draws(torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)
    rates = torch.arange(256, dtype=torch.float64) / 255 * 60
    for level in (0, 1, 3, 128, 255):  # rates 0, 0.24 (long right tail), 0.7, 30, 60
        levels = torch.full((4, 3, 100, 100), level, dtype=torch.uint8)
        counts = draws.image_poisson_levels(levels, rates, IDENTITY).numpy().astype(int).ravel()
        lam = float(rates[level])
        if lam == 0:
            assert not counts.any()
            continue
        observed = np.bincount(counts)
        expected = stats.poisson.pmf(np.arange(len(observed)), lam) * len(counts)
        keep = expected > 5
        chi2 = (((observed[keep] - expected[keep]) ** 2) / expected[keep]).sum()
        assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3, (level, chi2)
        # the far tail (the table's jump bins, resolved against the CDF) has the right mass too
        tail = int(lam + 4 * lam ** 0.5 + 2)
        mass = stats.poisson.sf(tail - 1, lam) * len(counts)
        assert abs((counts >= tail).sum() - mass) < 5 * mass ** 0.5 + 3, (level, (counts >= tail).sum(), mass)


class FixedBits(Draws):
    """Draws whose 31-bit numbers are given (the rest as usual)."""

    def __init__(self, bits: torch.Tensor) -> None:
        super().__init__(None, torch.device("cpu"), torch.float32)
        self.fixed = bits

    def bits31(self, shape):
        return self.fixed.reshape(shape).clone()


def test_poisson_levels_switch_count_exactly_at_each_cdf_step():
    """u = bits / 2^31 at a CDF value gives the next count, one step below it the count itself (the jump bins'
    binary search), against scipy's Poisson CDF, at a small, a middle and the largest rate."""
    rates = torch.arange(256, dtype=torch.float64) / 255 * 60
    levels, bits, expected = [], [], []
    for level in (1, 100, 255):
        lam = float(rates[level])
        for k in range(int(lam + 3 * lam ** 0.5) + 1):
            step = int(np.ceil(stats.poisson.cdf(k, lam) * 2 ** 31))
            if stats.poisson.pmf(k + 1, lam) < 1e-6 or not 0 < step < 2 ** 31:
                continue  # the next count's step too thin to tell apart from scipy's rounding
            levels += [level, level]
            bits += [step, step - 1]
            expected += [k + 1, k]
    levels = torch.tensor(levels, dtype=torch.uint8).view(1, 1, 1, -1)
    counts = FixedBits(torch.tensor(bits, dtype=torch.int32)).image_poisson_levels(levels, rates, IDENTITY)
    np.testing.assert_array_equal(counts.view(-1).numpy(), expected)


def test_poisson_levels_follow_each_value_level():
    draws = Draws(torch.Generator().manual_seed(1), torch.device("cpu"), torch.float32)
    rates = torch.arange(256, dtype=torch.float64) / 255 * 25
    levels = torch.randint(0, 256, (8, 3, 64, 64), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    counts = draws.image_poisson_levels(levels, rates, IDENTITY)
    assert counts.shape == levels.shape and counts.dtype == torch.uint8
    # E[count | level] = rate: the counts' mean per level, pooled over 16 level bands, tracks the rates
    band = levels.long() // 16
    for b in range(16):
        mine = band == b
        mean, expected = counts[mine].double().mean(), rates[levels[mine].long()].mean()
        assert abs(float(mean - expected)) < 5 * (float(expected) / int(mine.sum())) ** 0.5, b


def test_salt_and_pepper_rates():
    draws = Draws(torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)
    salt, pepper = draws.image_salt_and_pepper((4, 1, 400, 250), 0.2)
    assert not bool((salt & pepper).any())
    sigma = (0.1 * 0.9 / 400_000) ** 0.5
    for mask in (salt, pepper):
        assert abs(float(mask.float().mean()) - 0.1) < 5 * sigma


def test_bits31_are_uniform_31_bit_integers():
    bits = Draws(torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32).bits31((1001, 999))
    assert bits.dtype == torch.int32 and bits.shape == (1001, 999)
    assert int(bits.min()) >= 0 and int(bits.max()) < 2 ** 31
    # every bit is a fair coin, and the two halves of each 64-bit draw are independent
    values = bits.flatten().long()
    for k in range(31):
        ones = float(((values >> k) & 1).double().mean())
        assert abs(ones - 0.5) < 5 * (0.25 / len(values)) ** 0.5, k
    even, odd = values[0:-1:2].double(), values[1::2].double()
    assert abs(float(torch.corrcoef(torch.stack((even, odd)))[0, 1])) < 5 / len(even) ** 0.5


def test_zoom_blur_operator_equals_the_sum_of_resampled_zooms():
    # independent computation: each clipped zoom with F.interpolate (scipy's order-1 zoom), summed
    from timm_xbn.corruptions.torch_ops import _ZOOMS, _clipped_zoom, _zoom_blur_operator
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for severity in (1, 5):
        zooms = _ZOOMS[severity - 1]
        expected = x.clone()
        for z in zooms:
            expected += _clipped_zoom(x, float(z))[..., :40, :56] if z != 1 else x
        expected /= len(zooms) + 1
        operator = _zoom_blur_operator(40, 56, severity, torch.float64, torch.device("cpu"))
        got = (operator @ x.reshape(6, -1).t()).t().reshape(x.shape)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_fft_sizes_have_only_small_prime_factors():
    from timm_xbn.corruptions.torch_ops import _fft_size

    def smooth(m):
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        return m == 1

    for n in range(1, 400):
        size = _fft_size(n)
        assert size >= n and smooth(size) and not any(smooth(m) for m in range(n, size))


def test_batches_equal_single_images_and_any_size(photos):
    # more than one CPU chunk (4 images) and a non-square size
    images = [photos[i % 3] for i in range(6)]
    batch = as_batch(images)
    for name in DETERMINISTIC:
        together = corrupt_batch(batch, name, 3)
        alone = torch.stack([corrupt_batch(batch[i], name, 3) for i in range(len(images))])
        torch.testing.assert_close(together, alone, atol=1, rtol=0)
    wide = as_batch([photos[3]])
    for name in CORRUPTIONS:
        out = corrupt_batch(wide, name, 5, torch.Generator().manual_seed(0))
        assert out.shape == wide.shape and out.dtype == torch.uint8


def test_seeded_and_float_inputs(photos):
    batch = as_batch(photos[:2])
    for name in RANDOM:
        a = corrupt_batch(batch, name, 2, torch.Generator().manual_seed(7))
        b = corrupt_batch(batch, name, 2, torch.Generator().manual_seed(7))
        c = corrupt_batch(batch, name, 2, torch.Generator().manual_seed(8))
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert not torch.equal(a, c)
    for name in ("contrast", "zoom_blur", "defocus_blur", "pixelate", "jpeg_compression"):
        as_uint8 = corrupt_batch(batch, name, 4).float() / 255
        as_float = corrupt_batch(batch.float() / 255, name, 4)
        assert as_float.dtype == torch.float32
        torch.testing.assert_close(as_float, as_uint8, atol=1.01 / 255, rtol=0)


def test_clear_errors():
    x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(ValueError, match="valid names: gaussian_noise"):
        corrupt_batch(x, "smog", 1)
    with pytest.raises(ValueError, match="valid names"):
        corrupt_batch(x, "spatter", 1)  # a reference-only (held-out) corruption
    for severity in (0, 6):
        with pytest.raises(ValueError, match="severity must be an integer in 1..5"):
            corrupt_batch(x, "fog", severity)
    with pytest.raises(ValueError, match="at least 32x32"):
        corrupt_batch(torch.zeros(1, 3, 16, 64, dtype=torch.uint8), "fog", 1)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        corrupt_batch(torch.zeros(1, 1, 64, 64, dtype=torch.uint8), "fog", 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(photos):
    batch = as_batch(photos[:3])
    for name in DETERMINISTIC:
        torch.testing.assert_close(corrupt_batch(batch.cuda(), name, 3).cpu(), corrupt_batch(batch, name, 3), atol=1, rtol=0)
    for name in RANDOM:
        out = corrupt_batch(batch.cuda(), name, 3, torch.Generator(device="cuda").manual_seed(0))
        assert out.is_cuda and out.shape == batch.shape


def test_bits15_are_uniform_15_bit_integers():
    bits = Draws(torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32).bits15((1003, 997))
    assert bits.dtype == torch.int16 and bits.shape == (1003, 997)
    assert int(bits.min()) == 0 and int(bits.max()) == 2 ** 15 - 1
    values = bits.flatten().long()
    for k in range(15):  # every bit a fair coin, all four quarters of each 64-bit draw alike
        for quarter in range(4):
            ones = float(((values[quarter::4] >> k) & 1).double().mean())
            assert abs(ones - 0.5) < 5 * (0.25 / len(values[quarter::4])) ** 0.5, (k, quarter)


def test_uniform_draws_cover_the_interval_on_torch_rand_s_grid():
    draws = Draws(torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)
    u = draws.uniform((1000, 1000), -2.0, 3.0).double()
    assert float(u.min()) >= -2.0 and float(u.max()) < 3.0
    assert abs(float(u.mean()) - 0.5) < 5 * (25 / 12 / u.numel()) ** 0.5
    assert abs(float(u.var()) - 25 / 12) < 0.01
    grid = draws.random((1000, 1000)).double() * 2 ** 24  # 24-bit steps, like torch.rand's float32
    assert torch.equal(grid, grid.round()) and float(grid.min()) >= 0 and float(grid.max()) < 2 ** 24
    counts = torch.histc(u, bins=10, min=-2.0, max=3.0)
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("mode, numpy_mode", [("nearest", "edge"), ("reflect", "symmetric"), ("mirror", "reflect")])
def test_hwn_padding_equals_numpy_pad(mode, numpy_mode):
    from timm_xbn.corruptions.torch_ops import _pad_hwn
    t = torch.rand(9, 13, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for ry, rx in ((0, 0), (3, 1), (1, 6), (8, 8)):
        expected = np.pad(t.numpy(), ((ry, ry), (rx, rx), (0, 0)), mode=numpy_mode)
        np.testing.assert_array_equal(_pad_hwn(t, ry, rx, mode).numpy(), expected)


def test_normal_window_replays_the_full_draw_and_draws_only_the_window():
    from timm_xbn.corruptions.agreement import NumpyDraws
    window = (slice(3, 7), slice(2, 10))
    np.random.seed(5)
    full = np.random.normal(0.2, 0.3, (2, 12, 14))
    np.random.seed(5)
    replayed = NumpyDraws(np.random).normal_window((2, 12, 14), window, loc=0.2, scale=0.3)
    np.testing.assert_array_equal(replayed.numpy(), full[:, 3:7, 2:10])
    # torch: the window's values only, the next draw continues the stream where a draw of that size ends
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ours = Draws(g1, torch.device("cpu"), torch.float32).normal_window((2, 12, 14), window, loc=0.2, scale=0.3)
    assert ours.shape == (2, 4, 8)
    same = Draws(g2, torch.device("cpu"), torch.float32).normal((2, 4, 8), loc=0.2, scale=0.3)
    assert torch.equal(ours, same)


@pytest.mark.parametrize("size", ((224, 224), (37, 50)))
def test_fft_filter_equals_a_direct_mirrored_correlation(size):
    """The FFT correlation (mirror-padded, zero-padded to a 2-3-5 transform size) against scipy's direct sum with
    the same border, for the smallest and largest defocus disks."""
    from scipy import ndimage

    from timm_xbn.corruptions.torch_ops import _disk_kernel, _filter2d

    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 255
    for radius, alias in ((3, 0.1), (10, 0.5)):
        kernel = _disk_kernel(radius, alias)
        ours = _filter2d(x, kernel, "mirror").numpy()
        for image, out in zip(x.numpy(), ours):
            for plane, got in zip(image, out):
                expected = ndimage.correlate(plane, kernel.astype(np.float64), mode="mirror")
                np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ("fog", "glass_blur"))
def test_uint8_and_float_batches_take_the_same_draws(photos, name):
    """fog and glass_blur read the uint8 batch themselves: with the same generator a float batch in [0, 1] gives the
    same images, up to the last grey level's rounding."""
    batch = as_batch(photos[:3])
    for severity in (1, 5):
        as_uint8 = corrupt_batch(batch, name, severity, torch.Generator().manual_seed(2))
        as_float = corrupt_batch(batch.float() / 255, name, severity, torch.Generator().manual_seed(2))
        assert as_uint8.dtype == torch.uint8 and as_float.dtype == torch.float32
        torch.testing.assert_close(as_float, as_uint8.float() / 255, atol=1.01 / 255, rtol=0)


def test_results_never_share_the_callers_batch(photos):
    """One chunk of a uint8 corruption is returned as it comes out: never the input itself, which stays as it was."""
    batch = as_batch(photos[:3])
    before = batch.clone()
    for name in CORRUPTIONS:
        out = corrupt_batch(batch, name, 1, torch.Generator().manual_seed(0))
        assert out.untyped_storage().data_ptr() != batch.untyped_storage().data_ptr(), name
        out.fill_(7)
        assert torch.equal(batch, before), name


# the host path blurs with OpenCV's separable filter, the device path with depthwise convolutions: the same sums
# in another order, so a few truncations to uint8 land one grey level apart
HOST_BLURRED = ("glass_blur", "elastic_transform")


def test_the_device_path_equals_the_host_path(photos, monkeypatch):
    """What CUDA batches run: the torch ops in place of the NumPy / OpenCV ones (transposes, row takes, pixelate's
    box passes, the uint8 cast, the Gaussian blurs), here on the CPU. Pixelate still equals PIL; the others equal
    the host path (the blurred ones up to the last grey level in a few pixels)."""
    from timm_xbn.corruptions import torch_ops

    batch = as_batch(photos[:3])
    host = {name: corrupt_batch(batch, name, 3, torch.Generator().manual_seed(1)) for name in CORRUPTIONS}
    monkeypatch.setattr(torch_ops, "_on_host", lambda t: False)
    for images in (photos[:3], photos[3:]):
        for severity in range(1, 6):
            ours = corrupt_batch(as_batch(images), "pixelate", severity).permute(0, 2, 3, 1).numpy()
            for image, out in zip(images, ours):
                np.testing.assert_array_equal(out, corrupt_reference(image, "pixelate", severity))
    for name in CORRUPTIONS:
        device = corrupt_batch(batch, name, 3, torch.Generator().manual_seed(1))
        if name in HOST_BLURRED:
            diff = (device.int() - host[name].int()).abs()
            assert diff.max() <= 1 and (diff == 0).float().mean() >= 0.999, name
        else:
            torch.testing.assert_close(device, host[name], atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("mode", ("nearest", "reflect", "mirror"))
@pytest.mark.parametrize("on_host", (True, False))
def test_hwn_gaussian_blur_equals_scipy(mode, on_host, monkeypatch):
    """The (H, W, N) Gaussian blur, both paths (OpenCV on the host, depthwise convolutions on a device), against
    scipy.ndimage.gaussian_filter with the same border: float64 and uint8 input, a kernel longer than the image,
    more channels than one OpenCV call takes."""
    from scipy import ndimage

    from timm_xbn.corruptions import torch_ops

    monkeypatch.setattr(torch_ops, "_on_host", lambda t: on_host)
    monkeypatch.setattr(torch_ops, "_CV2_MAX_CHANNELS", 4)  # OpenCV's 512 channels at most: 6 go in two slices
    generator = torch.Generator().manual_seed(0)
    for source in (torch.rand(37, 50, 6, generator=generator, dtype=torch.float64) * 255,
                   torch.randint(0, 256, (40, 33, 3), generator=generator, dtype=torch.uint8)):
        for sigma, truncate in (((0.7, 1.5), 4.0), ((8.0, 3.0), 3.0)):
            ours = torch_ops._gaussian_blur_hwn(source, sigma, mode, truncate, dtype=torch.float64)
            expected = ndimage.gaussian_filter(source.double().numpy(), (*sigma, 0), mode=mode, truncate=truncate)
            assert ours.dtype == torch.float64 and ours.shape == source.shape
            np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-9)


def test_zoom_operator_lives_in_huge_page_aligned_copies():
    """zoom_blur's CPU operator: its three arrays are exact copies placed at 2 MiB boundaries (where Linux
    may map them with huge pages; ``_in_huge_pages``), and the product with them is the plain tensors' product."""
    import mmap

    from timm_xbn.corruptions import torch_ops

    operator = torch_ops._zoom_blur_operator(48, 40, 2, torch.float32, torch.device("cpu"))
    source = torch.arange(24, dtype=torch.float64).reshape(4, 6) * 1.5
    copy = torch_ops._in_huge_pages(source)
    assert torch.equal(copy, source) and copy.data_ptr() != source.data_ptr()
    if hasattr(mmap, "MADV_HUGEPAGE"):
        assert copy.data_ptr() % (2 << 20) == 0
        assert all(t.data_ptr() % (2 << 20) == 0 for t in (operator.crow_indices(), operator.col_indices(),
                                                             operator.values()))
    plain = torch.sparse_csr_tensor(operator.crow_indices().clone(), operator.col_indices().clone(),
                                    operator.values().clone(), operator.shape, check_invariants=True)
    columns = torch.rand(48 * 40, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.sparse.mm(operator, columns), torch.sparse.mm(plain, columns))


def test_views_corrupt_like_their_contiguous_copies():
    """A cropped view (rows and columns strided inside a larger image), a batch-strided view and a channels-last
    batch give every corruption the result of the contiguous copy (the kernels, OpenCV and libjpeg read planes)."""
    photos = torch.from_numpy(np.stack(real_images(3, 80))).permute(0, 3, 1, 2)
    for view in (photos[..., 8:72, 4:60], torch.stack([photos, photos], 1)[:, 0],
                 photos.contiguous(memory_format=torch.channels_last)):
        assert not view.is_contiguous()
        for name in CORRUPTIONS:
            ours = corrupt_batch(view, name, 3, torch.Generator().manual_seed(0))
            expected = corrupt_batch(view.contiguous(), name, 3, torch.Generator().manual_seed(0))
            assert torch.equal(ours, expected), name
