"""Fast batched torch implementation of the 15 ImageNet-C corruptions (CPU or GPU, seeded).

``corrupt_batch(x, name, severity, generator)`` corrupts a whole batch ``(B, 3, H, W)`` (or one
``(3, H, W)`` image) of any size >= 32 px in one go on ``x``'s device. The parameters per severity
are those of the reference implementation (``imagecorruptions``, Hendrycks & Dietterich 2019);
every operation is re-derived from its definition (Gaussian / disk / line kernels, bilinear zoom,
diamond-square plasma, HSV value shift, PIL box resampling) and vectorised; JPEG uses the
reference's own codec (libjpeg, through torchvision).

Each corruption is split into *draws* (the random numbers it needs, taken from a :class:`Draws`)
and a deterministic tensor program. Feeding the reference's own NumPy draws into the tensor
program reproduces the reference output, which is how the implementation is validated
(``python -m timm_xbn.corruptions.agreement`` prints the table; ``tests/test_corruptions_ops.py``).

Agreement with the reference (``agreement.py``: replay = the reference's own random draws fed
to the tensor program, float64; statistics = torch's random numbers, float32, PSNR to the clean
image compared in mean):

=================  ==========================  ===================================================
corruption         agreement                   why not bit-exact
=================  ==========================  ===================================================
gaussian_noise     exact given the draws       -
shot_noise         exact given the draws       (torch draws: inverse-CDF tables of 31-bit
                                               uniforms, same distribution)
impulse_noise      exact given the draws       (torch draws: one 15-bit uniform per value for
                                               salt and pepper, the same distribution to 2^-15)
defocus_blur       near-exact                  FFT instead of cv2.filter2D's direct sum
glass_blur         statistical only            the reference swaps pixels in a sequential scan,
                                               each swap depending on all earlier ones; here
                                               every pixel reads its source at an offset drawn
                                               from the offsets that scan produces, tabulated in
                                               ``glass_offsets.npz`` (``reference.glass_offset_table``),
                                               all pixels at once (pixels may repeat: a gather,
                                               not a permutation)
motion_blur        near-exact given the angle  -
zoom_blur          near-exact                  the zooms summed as one sparse operator (the
                                               same bilinear weights, another summation order)
snow               near-exact given the draws  flakes zoomed with float32 coordinates
frost              near-exact given the draws  frost photos enlarged by torch bicubic, not cv2
fog                near-exact given the draws  -
brightness         near-exact                  HSV value shift as a per-pixel scaling v'/v (the
                                               algebra of skimage's rgb2hsv/hsv2rgb round trip)
contrast           exact                       -
elastic_transform  near-exact given the draws  grid_sample (float32 coordinates)
pixelate           exact                       PIL's fixed-point box filter reproduced
jpeg_compression   exact                       the same libjpeg round trip (torchvision's
                                               encode_jpeg / decode_jpeg, on the CPU)
=================  ==========================  ===================================================

"near-exact": at most one grey level apart, > 99 % of the pixels equal. Most of the +-1 cases are
values that are integers in exact arithmetic, which the reference's truncation to uint8 puts on
either side depending on float64 rounding; float32 compute (the default) adds a few more.

Speed (``benchmarks/corruptions.py``, which shows each corruption's floor: its random numbers,
or libjpeg). uint8 batches on the CPU, the common case (decoded photos), go through compiled
kernels (``kernels/``, numba) wherever the tensor program is a chain of passes or a loop of taps:
each does the chain in one pass over the pixels, uint8 in and out, with the tensor program's
float32 steps in its order, so the same bits (``tests/test_corruptions_kernels_*.py``): the
per-pixel corruptions and fog's plasma (``kernels.pointwise``, ``kernels.plasma``), shot and
impulse noise after their draws (``kernels.noise``), elastic_transform's grid and reflected
bilinear sampling (``kernels.elastic``), motion_blur's and snow's line taps, summed per output
row while it stays in the cache (``kernels.lines``, ``kernels.snow``), glass_blur's gather
(``kernels.glass``), pixelate's integer box sums (``kernels.pixelate``). Where torch fuses a
multiply-add (its AVX2 / AVX-512 kernels), the kernels fuse the same products, and only there
(``kernels.TORCH_FUSES``). The rest is shared by both paths: the linear, image-independent parts
run as one operator each (zoom_blur's summed zooms as a sparse matrix on an (H W, B C) matrix,
in 2 MiB pages on the CPU; defocus_blur's disk through cached FFT spectra at 2-3-5 sizes);
Gaussian blurs run over all images and channels at once in an (H, W, N) channels-last layout
(OpenCV's separable filter on the CPU, depthwise convolutions elsewhere), reached and left by one
OpenCV transpose; the noise draws use two 31-bit (or four 15-bit) numbers per 64-bit draw of
torch's generator, float32 uniforms the top 24 bits of a 31-bit one; fog draws its whole plasma
at once, snow only the centre its zoom keeps; the float corruptions work in grey levels where
that saves passes (the reference's x / 255 ... * 255 up to rounding); JPEG converts planes to
and from libjpeg's interleaved pixels with OpenCV. The NumPy / OpenCV / numba steps run on CPU
batches only (``_on_host``); CUDA batches take the torch ops, and so do float batches but for
two compiled steps with the tensor program's bits: the uniform draws and fog's plasma.

Below 2x the reference per core (224 px, one thread): jpeg_compression, bound by libjpeg (the
reference's own codec; the benchmark's floor column, the codec alone, reaches ~1.8-2.5x).
"""
from __future__ import annotations

import math
import mmap
import warnings
from functools import lru_cache
from importlib import resources
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import UserError
from . import kernels
from .kernels import plasma, pointwise
from .names import CORRUPTIONS, check_corruption, check_severity

__all__ = ["Draws", "ImageDraws", "corrupt_batch", "RANDOM_CORRUPTIONS", "TORCH_CORRUPTIONS"]


class Draws:
    """The random numbers a corruption consumes, drawn with a torch ``Generator``.

    Shapes follow the reference's NumPy calls with a leading batch dimension, so a NumPy-backed
    subclass can replay the reference's exact stream (see ``agreement.NumpyDraws``). The
    ``image_*`` draws give one number per value of a (B, C, H, W) batch: the reference draws them
    in (H, W, C) order, torch in the batch's own order (independent draws: the same distribution,
    without a transposition).
    """

    def __init__(self, generator: Optional[torch.Generator], device: torch.device, dtype: torch.dtype) -> None:
        self.generator = generator
        self.device = device
        self.dtype = dtype

    def random(self, shape: tuple[int, ...]) -> Tensor:
        """Uniform on [0, 1)."""
        return self.uniform(shape, 0.0, 1.0)

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> Tensor:
        """Uniform on [low, high). float32 on the CPU: the top 24 bits of ``bits31`` (torch.rand's
        own 24-bit grid, from half the generator's output), scaled in one pass."""
        if self.dtype == torch.float32 and self.device.type == "cpu":
            bits = self.bits31(shape)
            if _on_host(bits):  # the three steps below in one compiled pass
                out = torch.empty(shape, dtype=torch.float32)
                pointwise.uniform_from_bits(bits.numpy().reshape(-1), np.float32((high - low) * 2.0 ** -24),
                                            np.float32(low), out.numpy().reshape(-1))
                return out
            # int32 times a float: float32 in the same pass as the conversion (the default dtype:
            # ``to`` is a no-op unless another default is set)
            u = torch.mul(bits.bitwise_right_shift_(7), (high - low) * 2.0 ** -24)
            return u.to(self.dtype).add_(low)
        return torch.empty(shape, device=self.device, dtype=self.dtype).uniform_(low, high, generator=self.generator)

    def normal(self, shape: tuple[int, ...], loc: float = 0.0, scale: float = 1.0) -> Tensor:
        return torch.empty(shape, device=self.device, dtype=self.dtype).normal_(loc, scale, generator=self.generator)

    def normal_window(self, shape: tuple[int, ...], window: tuple[slice, slice], loc: float = 0.0,
                      scale: float = 1.0) -> Tensor:
        """``normal(shape, loc, scale)[..., rows, cols]`` for ``window = (rows, cols)``: only the
        window's numbers are drawn (a replay of the reference draws them all and crops)."""
        rows, cols = window
        return self.normal((*shape[:-2], rows.stop - rows.start, cols.stop - cols.start), loc, scale)

    def poisson(self, rate: Tensor) -> Tensor:
        return torch.poisson(rate, generator=self.generator)

    def bits31(self, shape: tuple[int, ...]) -> Tensor:
        """Uniform 31-bit integers (int32 in [0, 2^31)): two per 64-bit draw of the generator, about
        half the cost of ``torch.rand`` per number on the CPU."""
        n = math.prod(shape)
        words = torch.empty((n + 1) // 2, dtype=torch.int64, device=self.device).random_(generator=self.generator)
        return words.view(torch.int32)[:n].view(shape).bitwise_and_(0x7FFFFFFF)

    def bits15(self, shape: tuple[int, ...]) -> Tensor:
        """Uniform 15-bit integers (int16 in [0, 2^15)): four per 64-bit draw of the generator, for
        choices whose probabilities need no finer grid than 2^-15."""
        n = math.prod(shape)
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=self.device).random_(generator=self.generator)
        return words.view(torch.int16)[:n].view(shape).bitwise_and_(0x7FFF)

    def pixel_bits15(self, height: int, width: int, batch: int) -> Tensor:
        """``bits15`` per pixel of each image, as (H, W, B)."""
        return self.bits15((height, width, batch))

    def integers(self, high: Tensor) -> Tensor:
        """One integer in ``[0, high[i])`` per element of the integer tensor ``high``."""
        u = torch.rand(high.shape, generator=self.generator, device=self.device, dtype=torch.float64)
        return (u * high.to(torch.float64)).long().clamp_max(high.long() - 1)

    def field_uniform(self, batch: int, height: int, width: int, low: float, high: float) -> Tensor:
        """Uniform(low, high) per pixel of each image, as (H, W, B) (the reference draws (H, W) per image)."""
        return self.uniform((height, width, batch), low, high)

    def image_normal(self, shape: tuple[int, int, int, int], scale: float) -> Tensor:
        """Normal(0, scale) per value of a (B, C, H, W) batch."""
        return self.normal(shape, scale=scale)

    def image_poisson_levels(self, levels: Tensor, rates: Tensor, lut: Tensor) -> Tensor:
        """``lut[count]`` (uint8; counts past its end read its last entry) of a Poisson count with
        rate ``rates[levels]``, ``levels`` a (B, C, H, W) uint8 batch, ``rates`` 256 rates.

        Inverse-CDF sampling of a 31-bit uniform: its top 12 bits pick a bin of a per-level table
        that holds the result directly (one byte: the 1 MiB table stays in cache), except in the few
        bins where the CDF jumps, marked by a byte, where the count is resolved against the CDF
        itself: one binary search per value among its level's keys (``_poisson_tables``).
        """
        keys, table, mark, bins = _poisson_tables(tuple(rates.tolist()), bytes(lut.cpu().numpy()), self.device)
        shift = 31 - int(math.log2(bins))
        bits = self.bits31(tuple(levels.shape)).view(-1)
        if _on_host(levels):  # the lookups and searches below in one compiled pass
            from .kernels.noise import poisson_levels

            out = torch.empty(levels.shape, dtype=torch.uint8)
            poisson_levels(levels.reshape(-1).numpy(), bits.numpy(), table.numpy(), mark, shift, keys.numpy(),
                           lut.numpy(), out.view(-1).numpy())
            return out
        index = levels.reshape(-1).to(torch.int32).bitwise_left_shift_(31 - shift).bitwise_or_(bits >> shift)
        out = table.index_select(0, index)
        todo = torch.nonzero(out == mark).squeeze(1)
        if len(todo):
            # the level's keys run from level * 2^32: the keys <= level * 2^32 + bits, past the
            # level's first, are the counts whose CDF is <= u: their number is the count
            first = levels.reshape(-1).index_select(0, todo).long().bitwise_left_shift_(32)
            query = bits.index_select(0, todo).long().add_(first)
            count = torch.searchsorted(keys, query, right=True).sub_(torch.searchsorted(keys, first))
            out.index_copy_(0, todo, lut.to(self.device).index_select(0, count.clamp_max_(len(lut) - 1)))
        return out.view(levels.shape)

    def image_salt_and_pepper(self, shape: tuple[int, int, int, int], amount: float) -> tuple[Tensor, Tensor]:
        """Masks of values set to 1 (salt) and to 0 (pepper), each with probability amount / 2 (to
        2^-15: 15-bit numbers, a quarter of a 64-bit draw each)."""
        bits = self.bits15(shape)
        salt_below, flip_below = _salt_and_pepper_below(amount)
        salt = bits < salt_below
        return salt, (bits < flip_below).logical_xor_(salt)


def _salt_and_pepper_below(amount: float) -> tuple[int, int]:
    """The 15-bit numbers below the first bound salt their value, those between the bounds pepper it."""
    return round(amount / 2 * 2 ** 15), round(amount * 2 ** 15)


class ImageDraws(Draws):
    """Draws from one generator per image: image i's numbers come from ``generators[i]`` alone, so an
    image gets the same numbers whichever images share its batch (``seeding.corrupt_images``).

    Every draw is made image by image with the batch's axis where the corruption expects it
    (leading, or last for the (H, W, B) layouts), through the single-generator ``Draws``.
    """

    def __init__(self, generators: Sequence[torch.Generator], device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(None, device, dtype)
        self.each = [Draws(g, device, dtype) for g in generators]

    def _per_image(self, draw: Callable[[Draws, int], Tensor], dim: int = 0) -> Tensor:
        return torch.cat([draw(d, i) for i, d in enumerate(self.each)], dim)

    def _image_shape(self, shape: tuple[int, ...], dim: int = 0) -> tuple[int, ...]:
        if shape[dim] != len(self.each):
            raise ValueError(f"a draw for {shape[dim]} images from {len(self.each)} generators")
        return shape[:dim] + (1,) + shape[dim + 1:] if dim >= 0 else shape[:dim] + (1,)

    def random(self, shape: tuple[int, ...]) -> Tensor:
        one = self._image_shape(shape)
        return self._per_image(lambda d, i: d.random(one))

    def normal(self, shape: tuple[int, ...], loc: float = 0.0, scale: float = 1.0) -> Tensor:
        one = self._image_shape(shape)
        return self._per_image(lambda d, i: d.normal(one, loc, scale))

    def poisson(self, rate: Tensor) -> Tensor:
        self._image_shape(tuple(rate.shape))
        return self._per_image(lambda d, i: d.poisson(rate[i:i + 1]))

    def bits31(self, shape: tuple[int, ...]) -> Tensor:
        one = self._image_shape(shape)
        return self._per_image(lambda d, i: d.bits31(one))

    def bits15(self, shape: tuple[int, ...]) -> Tensor:
        one = self._image_shape(shape)
        return self._per_image(lambda d, i: d.bits15(one))

    def pixel_bits15(self, height: int, width: int, batch: int) -> Tensor:
        one = self._image_shape((height, width, batch), -1)
        return self._per_image(lambda d, i: d.bits15(one), -1)

    def integers(self, high: Tensor) -> Tensor:
        self._image_shape(tuple(high.shape))
        return self._per_image(lambda d, i: d.integers(high[i:i + 1]))

    def field_uniform(self, batch: int, height: int, width: int, low: float, high: float) -> Tensor:
        # ``batch`` counts k fields per image, stored field by field: (H, W, k B), index f * B + image
        fields, images = batch // len(self.each), len(self.each)
        if fields * images != batch:
            raise ValueError(f"{batch} fields for {images} images")
        each = torch.stack([d.field_uniform(fields, height, width, low, high) for d in self.each], -1)
        return each.reshape(height, width, batch)


@lru_cache(maxsize=16)
def _poisson_tables(rates: tuple[float, ...], lut: bytes, device: torch.device,
                    bins: int = 4096) -> tuple[Tensor, Tensor, int, int]:
    """(keys, table, mark, bins): the per-rate CDFs as sorted int64 keys, level * 2^32 +
    ceil(CDF * 2^31) (a 31-bit uniform ``bits`` has u = bits / 2^31 >= CDF exactly when bits >=
    that ceiling); a uint8 guide table (L * bins) holding for each bin of u ``lut`` of the count
    (the smallest whose CDF exceeds u) where that count is the same across the bin, else the byte
    ``mark``."""
    lam = torch.tensor(rates, dtype=torch.float64)
    n_max = int(lam.max() + 12 * math.sqrt(lam.max()) + 12)
    j = torch.arange(n_max + 1, dtype=torch.float64)
    cdf = torch.exp(j * torch.log(lam.clamp_min(1e-300))[:, None] - lam[:, None] - torch.lgamma(j + 1)).cumsum(1)
    cdf[:, -1] = 1.0
    edges = (torch.arange(bins + 1, dtype=torch.float64) / bins).expand(len(rates), bins + 1).contiguous()
    first = torch.searchsorted(cdf, edges, right=True).clamp_max(n_max)
    start, jumps = first[:, :-1], first[:, 1:] != first[:, :-1]
    mapped = torch.frombuffer(bytearray(lut), dtype=torch.uint8).long()[start.clamp_max(len(lut) - 1)]
    # the byte the table holds least often (one ``lut`` never returns, where there is one): the
    # bins that hold it go the slow way too, which returns their count all the same
    mark = int(torch.bincount(mapped[~jumps], minlength=256).argmin())
    table = torch.where(jumps, mark, mapped).flatten().to(torch.uint8)
    levels = torch.arange(len(rates), dtype=torch.int64)[:, None] << 32
    keys = torch.ceil(cdf * 2.0 ** 31).long().add_(levels).flatten()
    return keys.to(device), table.to(device), mark, bins


# ---------------------------------------------------------------------------------------------
# Helpers: borders, separable Gaussian, FFT filtering, resampling
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=256)
def _border_index(n: int, pad_before: int, pad_after: int, mode: str, device: torch.device) -> Tensor:
    """Source indices of a padded axis. Modes follow scipy.ndimage:
    ``nearest`` (aaa|abcd|ddd), ``reflect`` (cba|abcd|dcb), ``mirror`` (dcb|abcd|cba, cv2's default)."""
    i = torch.arange(-pad_before, n + pad_after, device=device)
    if mode == "nearest" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect":
        i = i.remainder(2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)
    if mode == "mirror":
        i = i.remainder(2 * n - 2)
        return torch.where(i >= n, 2 * n - 2 - i, i)
    raise ValueError(f"unknown border mode {mode!r}")


def _pad_dim(x: Tensor, dim: int, before: int, after: int, mode: str) -> Tensor:
    if not before and not after:
        return x
    n = x.shape[dim]
    index = _border_index(n, before, after, mode, x.device)
    parts = [x.index_select(dim, index[:before])] if before else []
    parts.append(x)
    if after:
        parts.append(x.index_select(dim, index[before + n:]))
    return torch.cat(parts, dim)


# scipy's border names -> F.pad's, where torch has the same border (its kernels are faster)
_TORCH_PAD_MODES = {"nearest": "replicate", "mirror": "reflect"}


def _pad(x: Tensor, ph: int, pw: int, mode: str) -> Tensor:
    """Pad the last two dims of a 4-D ``x`` by ``ph`` rows and ``pw`` columns on each side,
    scipy-style border."""
    if mode in _TORCH_PAD_MODES and x.dim() == 4 and max(ph, pw) < min(x.shape[-2:]):
        return F.pad(x, (pw, pw, ph, ph), mode=_TORCH_PAD_MODES[mode])
    return _pad_dim(_pad_dim(x, -2, ph, ph, mode), -1, pw, pw, mode)


@lru_cache(maxsize=64)
def _gaussian_kernel1d(sigma: float, truncate: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * t * t / (sigma * sigma))
    return (k / k.sum()).to(dtype)


def _on_host(t: Tensor) -> bool:
    """Whether ``t``'s work may go through NumPy / OpenCV (CPU tensors), where their SIMD casts,
    transposes and row takes beat torch's; otherwise the device-agnostic torch ops run (the path
    of CUDA batches, which the tests also run on the CPU by patching this)."""
    return t.device.type == "cpu"


def _kernel_path(x: Tensor, draws: Draws, fused: bool = False) -> bool:
    """Whether the uint8 batch ``x`` goes through the compiled CPU kernels (``kernels/``: float32
    compute on the host) instead of the tensor program; for a kernel with torch's ``fused``
    multiply-adds, only where torch fuses them (``kernels.TORCH_FUSES``)."""
    return (x.dtype == torch.uint8 and draws.dtype == torch.float32 and _on_host(x)
            and (kernels.TORCH_FUSES or not fused))


def _kernel_output(x: Tensor) -> tuple[np.ndarray, Tensor]:
    """``x`` as a contiguous NumPy array and a new uint8 tensor of its shape for a kernel's result."""
    return x.contiguous().numpy(), torch.empty(x.shape, dtype=torch.uint8)


def _as_compute(x: Tensor, draws: Draws) -> Tensor:
    """A float copy of a uint8 batch for the tensor program (a float batch is already the caller's copy)."""
    return x.to(draws.dtype) if x.dtype == torch.uint8 else x


def _transposed(x: Tensor, zero_row: bool = False) -> Tensor:
    """(..., H, W) -> contiguous (..., W, H), plus a zero row W if ``zero_row`` (for ``_box_rows``).
    On the CPU with OpenCV's SIMD transpose, plane by plane (torch's strided copy: 1.2x slower for
    float32, ~5-7x for uint8)."""
    *lead, h, w = x.shape
    out = x.new_empty((*lead, w + zero_row, h))
    if zero_row:
        out[..., w, :] = 0
    if not _on_host(x):
        out[..., :w, :] = x.transpose(-1, -2)
        return out
    import cv2

    for plane, target in zip(x.reshape(-1, h, w).contiguous().numpy(), out.view(-1, w + zero_row, h).numpy()):
        cv2.transpose(plane, target[:w])
    return out


def _to_hwn(x: Tensor) -> Tensor:
    """(..., H, W) -> contiguous (H, W, N), N the product of the leading dims. In this layout a
    depthwise convolution vectorises over the N images x channels (oneDNN's channels-last kernels)."""
    h, w = x.shape[-2:]
    return _transposed(x.reshape(-1, h * w)).view(h, w, -1)


def _from_hwn(t: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of ``_to_hwn``: contiguous ``shape``."""
    return _transposed(t.reshape(-1, t.shape[-1])).view(shape)


def _pad_hwn(t: Tensor, ry: int, rx: int, mode: str) -> Tensor:
    """Pad a (H, W, N) tensor by ``ry`` rows and ``rx`` columns on each side, scipy-style border:
    the interior in one copy, the borders as copies of whole rows, then of whole (padded) columns."""
    h, w, n = t.shape
    out = t.new_empty((h + 2 * ry, w + 2 * rx, n))
    out[ry:ry + h, rx:rx + w] = t
    rows = _border_index(h, ry, ry, mode, t.device) + ry
    cols = _border_index(w, rx, rx, mode, t.device) + rx
    for side in (slice(0, ry), slice(ry + h, None)):
        out[side, rx:rx + w] = out[:, rx:rx + w].index_select(0, rows[side])
    for side in (slice(0, rx), slice(rx + w, None)):
        out[:, side] = out.index_select(1, cols[side])
    return out


def _separable_hwn(t: Tensor, row_kernel: Tensor, col_kernel: Tensor, mode: str,
                   dtype: Optional[torch.dtype] = None) -> Tensor:
    """Correlate a (H, W, N) tensor with odd 1-D kernels down the rows and along the columns, the
    borders following ``mode``, into ``dtype`` (default: the kernels'; ``t`` may be uint8). On the
    CPU one OpenCV separable filter over the N interleaved channels (SIMD, symmetric kernels
    folded, borders read in place: ~2.5x faster than ``_separable_conv``), otherwise that."""
    dtype = dtype or row_kernel.dtype
    if _on_host(t):
        return _separable_cv2(t, row_kernel.to(dtype), col_kernel.to(dtype), mode, dtype)
    return _separable_conv(t, row_kernel, col_kernel, mode, dtype)


def _separable_conv(t: Tensor, row_kernel: Tensor, col_kernel: Tensor, mode: str, dtype: torch.dtype) -> Tensor:
    """``_separable_hwn`` as two depthwise convolutions over N channels-last planes (any device),
    both borders padded first (padding the columns commutes with filtering the rows)."""
    n, ry, rx = t.shape[-1], row_kernel.numel() // 2, col_kernel.numel() // 2
    # (1, N, H', W') planes with channels-last strides (F.pad's channels-last kernels are ~5x slower)
    planes = _pad_hwn(t.to(dtype), ry, rx, mode).unsqueeze(0).permute(0, 3, 1, 2)
    for weight in _depthwise_weights(row_kernel.to(dtype), col_kernel.to(dtype), n):
        planes = F.conv2d(planes, weight, groups=n)
    return planes.permute(0, 2, 3, 1)[0]


# scipy's border names -> OpenCV's (the same source index for every padded position)
_CV2_BORDERS = {"nearest": "BORDER_REPLICATE", "reflect": "BORDER_REFLECT", "mirror": "BORDER_REFLECT_101"}
_CV2_MAX_CHANNELS = 512  # CV_CN_MAX: more planes go through in slices of channels


def _separable_cv2(t: Tensor, row_kernel: Tensor, col_kernel: Tensor, mode: str, dtype: torch.dtype) -> Tensor:
    """``_separable_hwn`` on the CPU: cv2.sepFilter2D (its kernelX runs along the columns, kernelY
    down the rows), ``t``'s channels as the image's."""
    import cv2

    depth = {torch.float32: cv2.CV_32F, torch.float64: cv2.CV_64F}[dtype]
    border = getattr(cv2, _CV2_BORDERS[mode])
    src = t.contiguous().numpy()
    kx, ky = col_kernel.numpy(), row_kernel.numpy()
    if src.shape[-1] <= _CV2_MAX_CHANNELS:
        return torch.from_numpy(cv2.sepFilter2D(src, depth, kx, ky, borderType=border).reshape(t.shape))
    out = np.empty(t.shape, dtype=kx.dtype)
    for start in range(0, src.shape[-1], _CV2_MAX_CHANNELS):
        part = np.ascontiguousarray(src[..., start:start + _CV2_MAX_CHANNELS])
        filtered = cv2.sepFilter2D(part, depth, kx, ky, borderType=border)
        out[..., start:start + _CV2_MAX_CHANNELS] = filtered.reshape(part.shape)
    return torch.from_numpy(out)


@lru_cache(maxsize=64)
def _depthwise_weights(row_kernel: Tensor, col_kernel: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The depthwise convolution weights of ``_separable_conv`` for ``n`` planes, per kernel pair
    (the kernels are cached tensors, so the pair is a cache key)."""
    return (row_kernel.reshape(1, 1, -1, 1).expand(n, -1, -1, -1).contiguous(),
            col_kernel.reshape(1, 1, 1, -1).expand(n, -1, -1, -1).contiguous())


def _gaussian_blur_hwn(t: Tensor, sigma: tuple[float, float], mode: str, truncate: float = 4.0,
                       dtype: Optional[torch.dtype] = None) -> Tensor:
    """scipy.ndimage.gaussian_filter over the rows and the columns of a (H, W, N) tensor, into
    ``dtype`` (default: ``t``'s)."""
    dtype = dtype or t.dtype
    rows, cols = (_gaussian_kernel1d(s, truncate, dtype, t.device) for s in sigma)
    return _separable_hwn(t, rows, cols, mode)


def _fft_size(n: int) -> int:
    """The smallest length >= n whose only prime factors are 2, 3 and 5 (fast FFT sizes)."""
    def smooth(m: int) -> bool:
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        return m == 1

    while not smooth(n):
        n += 1
    return n


def _filter2d(x: Tensor, kernel: np.ndarray, mode: str) -> Tensor:
    """Correlate each channel of ``x`` (B, C, H, W) with ``kernel`` (kh, kw), odd sizes, keeping
    the size; the border follows ``mode``. Done with real FFTs: cost independent of kernel size."""
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    xp = _pad(x, kh // 2, kw // 2, mode)
    y = _fft_correlate(xp, kernel, (_fft_size(xp.shape[-2]), _fft_size(xp.shape[-1])))
    return y[..., kh - 1:kh - 1 + h, kw - 1:kw - 1 + w]


def _fft_correlate(padded: Tensor, kernel: np.ndarray, size: tuple[int, int]) -> Tensor:
    """The circular correlation of each (padded) plane with ``kernel`` at the FFT ``size`` (zeros
    past the planes): ``_filter2d``'s valid part starts at (kh - 1, kw - 1)."""
    spectrum = _kernel_spectrum(kernel.tobytes(), kernel.shape, size, padded.dtype, padded.device)
    return torch.fft.irfft2(torch.fft.rfft2(padded, s=size).mul_(spectrum), s=size)


@lru_cache(maxsize=32)
def _kernel_spectrum(kernel: bytes, shape: tuple[int, int], size: tuple[int, int], dtype: torch.dtype,
                     device: torch.device) -> Tensor:
    """rfft2 of a float32 kernel (given as bytes, so it can be a cache key), flipped for correlation."""
    k = torch.frombuffer(bytearray(kernel), dtype=torch.float32).view(shape).to(device, dtype)
    return torch.fft.rfft2(k.flip(-2, -1), s=size)


def _zoom_window(n: int, zoom: float) -> slice:
    """The centre ``ceil(n / zoom)`` indices of an axis of length ``n``: what ``_clipped_zoom`` keeps."""
    crop = int(math.ceil(n / zoom))
    start = (n - crop) // 2
    return slice(start, start + crop)


def _enlarge(crop: Tensor, zoom: float) -> Tensor:
    """Enlarge by ``zoom`` with bilinear interpolation that maps the first/last pixel centres onto
    each other (scipy's ``zoom``)."""
    ch, cw = crop.shape[-2:]
    return F.interpolate(crop, size=(int(round(ch * zoom)), int(round(cw * zoom))), mode="bilinear", align_corners=True)


def _clipped_zoom(x: Tensor, zoom: float) -> Tensor:
    """Crop the centre ``ceil(n / zoom)`` pixels and enlarge them by ``zoom``."""
    h, w = x.shape[-2:]
    return _enlarge(x[..., _zoom_window(h, zoom), _zoom_window(w, zoom)], zoom)


def _motion_line(h: int, w: int, radius: int, sigma: float, angles: Tensor
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The taps of ``_motion_blur`` on (h, w) images: the half-Gaussian's ``2 radius + 1`` weights
    (float64), each image's shifts (dy, dx), (B, taps) int64, and its number of taps (B,): taps
    whose shift reaches the image size end the line, as in the reference."""
    width = 2 * radius + 1
    i = np.arange(width, dtype=np.float64)
    weights = np.exp(-(i ** 2) / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    weights /= weights.sum()
    a = np.deg2rad(angles.detach().cpu().double().numpy())
    py, px = width * np.sin(a), width * np.cos(a)
    hyp = np.hypot(py, px)
    dy = -np.ceil(i[None] * py[:, None] / hyp[:, None] - 0.5).astype(np.int64)
    dx = -np.ceil(i[None] * px[:, None] / hyp[:, None] - 0.5).astype(np.int64)
    taps = np.cumprod((np.abs(dy) < h) & (np.abs(dx) < w), axis=1).sum(1)
    return weights, dy, dx, taps


def _motion_blur(x: Tensor, radius: int, sigma: float, angles: Tensor) -> Tensor:
    """Blur each image along a line at its angle (degrees): a half-Gaussian of ``2 radius + 1``
    taps, tap i reading the image shifted by round(i * direction) (edges replicated), see
    ``_motion_line``. ``x`` is overwritten."""
    h, w = x.shape[-2:]
    width = 2 * radius + 1
    weights, dy, dx, taps = _motion_line(h, w, radius, sigma, angles)
    xp = _pad(x, width, width, "nearest")
    out = x.mul_(float(weights[0]))  # tap 0: no shift (the taps read the padded copy: x is free)
    for image, padded, shifts_y, shifts_x, count in zip(out, xp, dy, dx, taps):
        for t in range(1, count):  # output[y, x] += k_t * input[y - dy_t, x - dx_t]
            top, left = width - shifts_y[t], width - shifts_x[t]
            image.add_(padded[:, top:top + h, left:left + w], alpha=float(weights[t]))
    return out


# ---------------------------------------------------------------------------------------------
# The corruptions. Each maps x in 0..255 (B x 3 x H x W, float or uint8) to 0..255 (float,
# clipped, or uint8). A float x is a copy the corruption may change in place; a uint8 x is the
# caller's batch, read only: the uint8 kernels read it on the CPU, the tensor programs convert it
# (``_as_compute``) or work in integers.
# ---------------------------------------------------------------------------------------------

def gaussian_noise(x: Tensor, severity: int, draws: Draws) -> Tensor:
    c = [.08, .12, 0.18, 0.26, 0.38][severity - 1]
    # clip(x / 255 + noise, 0, 1) * 255 in grey levels: two passes fewer, the same values up to rounding
    noise = draws.image_normal(tuple(x.shape), scale=255 * c)
    if _kernel_path(x, draws):
        pixels, out = _kernel_output(x)
        pointwise.add_noise(pixels.reshape(-1), noise.numpy().reshape(-1), out.numpy().reshape(-1))
        return out
    return noise.add_(x).clamp_(0, 255)


@lru_cache(maxsize=None)
def _shot_noise_lut(c: int, device: torch.device) -> Tensor:
    """uint8 result of each Poisson count 0..c, computed like the reference: clip(count / c, 0, 1)
    * 255 in float64, truncated."""
    return (torch.arange(c + 1, dtype=torch.float64) / float(c)).clamp(0, 1).mul(255).to(torch.uint8).to(device)


def shot_noise(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """uint8 in: Poisson counts per grey level, uint8 out; float in: Poisson of the float rates."""
    c = [60, 25, 12, 5, 3][severity - 1]
    if x.dtype != torch.uint8:
        counts = draws.poisson(x.permute(0, 2, 3, 1) / 255.0 * c).permute(0, 3, 1, 2)
        return (counts / float(c)).clamp(0, 1) * 255
    rates = torch.arange(256, dtype=torch.float64) / 255.0 * c
    return draws.image_poisson_levels(x, rates, _shot_noise_lut(c, x.device))  # counts >= c give 255


def impulse_noise(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """Any dtype in, same dtype out (0..255): salt and pepper set values to 255 and 0, the rest stay
    as they are (the reference's x / 255 * 255 truncates back to x for every grey level)."""
    amount = [.03, .06, .09, 0.17, 0.27][severity - 1]
    if x.dtype == torch.uint8 and _on_host(x) and type(draws).image_salt_and_pepper is Draws.image_salt_and_pepper:
        # the 15-bit numbers of ``Draws.image_salt_and_pepper``, compared and applied in one compiled pass
        from .kernels.noise import salt_and_pepper

        bits, (pixels, out) = draws.bits15(tuple(x.shape)), _kernel_output(x)
        salt_and_pepper(pixels.reshape(-1), bits.view(-1).numpy(), *_salt_and_pepper_below(amount), out.view(-1).numpy())
        return out
    salt, pepper = draws.image_salt_and_pepper(tuple(x.shape), amount)
    if x.dtype != torch.uint8:
        return x.masked_fill(salt, 255).masked_fill_(pepper, 0)
    # uint8: bool masks as 0/255 bytes (negated 0/1), then x & keep | salt: byte-wide bit operations
    keep = salt.logical_or(pepper).logical_not_().view(torch.uint8).neg_()
    return x.bitwise_and(keep).bitwise_or_(salt.view(torch.uint8).neg())


@lru_cache(maxsize=None)
def _disk_kernel(radius: int, alias_blur: float) -> np.ndarray:
    """Normalised aliased disk, anti-aliased by a 3x3 (5x5 for radius > 8) Gaussian (float32)."""
    half = max(8, radius)
    t = np.arange(-half, half + 1)
    yy, xx = np.meshgrid(t, t)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    g = np.exp(-((np.arange(ksize) - ksize // 2) ** 2) / (2 * alias_blur ** 2))
    g = torch.from_numpy((g / g.sum()).astype(np.float32))
    # the convolutions on every device: the kernel's float32 bits stay those the tests validated
    k = _separable_conv(torch.from_numpy(disk)[..., None], g, g, "mirror", torch.float32)[..., 0].numpy()
    r = half - int(np.abs(np.argwhere(k != 0) - half).max())  # zero border rows/columns: dropped
    return np.ascontiguousarray(k[r:k.shape[0] - r, r:k.shape[1] - r])


def defocus_blur(x: Tensor, severity: int, draws: Draws) -> Tensor:
    radius, alias = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    kernel = _disk_kernel(radius, alias)
    if _kernel_path(x, draws):  # _filter2d's steps, its padding and the result's scaling as kernels
        b, ch, h, w = x.shape
        kh, kw = kernel.shape
        rows, cols = (_border_index(n, k // 2, k // 2, "mirror", x.device).numpy() for n, k in ((h, kh), (w, kw)))
        size = (_fft_size(len(rows)), _fft_size(len(cols)))
        padded = torch.empty((b, ch, *size))
        pixels, out = _kernel_output(x)
        pointwise.padded_unit(pixels, rows, cols, kw // 2, padded.numpy())
        pointwise.unit_to_uint8(_fft_correlate(padded, kernel, size).numpy(), kh - 1, kw - 1, out.numpy())
        return out
    # on [0, 1] values at 2-3-5 FFT sizes: the committed study's AdaBN and claim 12 tables were written with these bits
    return _filter2d(_as_compute(x, draws).div_(255.0), kernel, "mirror").clamp_(0, 1).mul_(255)


@lru_cache(maxsize=None)
def _glass_offsets(severity: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (K, 2) as (dy, dx), probabilities (K,)) of the reference's pixel-swap scan."""
    with resources.as_file(resources.files(__package__) / "glass_offsets.npz") as path:
        table = np.load(path)
        return table[f"offsets_{severity}"], table[f"probs_{severity}"]


@lru_cache(maxsize=None)
def _glass_bins(severity: int, bins: int = 1 << 15) -> np.ndarray:
    """Inverse CDF of the offsets: a uniform u draws offset ``_glass_bins(severity)[int(u * bins)]``
    (uint16 indices into ``_glass_offsets``; at most 782 offsets)."""
    _, probs = _glass_offsets(severity)
    pick = np.searchsorted(np.cumsum(probs), (np.arange(bins) + 0.5) / bins).clip(max=len(probs) - 1)
    return pick.astype(np.uint16)


@lru_cache(maxsize=None)
def _glass_steps(severity: int, bins: int = 1 << 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_glass_bins`` for the glass kernel: each bin's index among the offsets that some bin draws
    (uint16), and those offsets' dy and dx (int64)."""
    drawn, index = np.unique(_glass_bins(severity, bins), return_inverse=True)
    offsets = _glass_offsets(severity)[0][drawn].astype(np.int64)
    return index.astype(np.uint16), np.ascontiguousarray(offsets[:, 0]), np.ascontiguousarray(offsets[:, 1])


@lru_cache(maxsize=None)
def _glass_lookup(severity: int, device: torch.device, bins: int = 1 << 15) -> tuple[Tensor, Tensor]:
    """Inverse-CDF tables of the offsets: a uniform u gives (dy, dx) = tables[int(u * bins)]."""
    offsets, pick = _glass_offsets(severity)[0], _glass_bins(severity, bins)
    dy, dx = (torch.from_numpy(offsets[pick, i].astype(np.int32)).to(device) for i in (0, 1))
    return dy, dx


def glass_blur(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """uint8 (or float 0..255) in, the same dtype out."""
    sigma, delta, _ = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    b, ch, h, w = x.shape
    # everything in (H, W, B, C) layout: blurs are depthwise convolutions, the pixel gather moves
    # the C values of a pixel together; in grey levels (the reference's uint8(blur(x / 255) * 255)
    # up to rounding: this corruption is matched statistically). uint8 batches are transposed to
    # and from that layout as uint8 (a quarter of the bytes).
    blurred = _gaussian_blur_hwn(_to_hwn(x), (sigma, sigma), "nearest", dtype=draws.dtype)
    dy_table, dx_table = _glass_lookup(severity, x.device)
    pick_shape = (h - 2 * delta, w - 2 * delta, b)
    shift = 15 - int(math.log2(len(dy_table)))
    if x.dtype == torch.uint8 and ch == 3 and _on_host(x):  # floor, sources, gather: one compiled pass
        from .kernels.glass import glass_gather, planes_uint8

        pick = draws.pixel_bits15(*pick_shape).contiguous().numpy()
        shuffled = torch.empty_like(blurred)
        glass_gather(blurred.numpy(), pick, shift, *_glass_steps(severity, len(dy_table)), delta, shuffled.numpy())
        out = torch.empty(x.shape, dtype=torch.uint8)
        planes_uint8(_gaussian_blur_hwn(shuffled, (sigma, sigma), "nearest").numpy(), out.view(-1, h, w).numpy())
        return out
    blurred.floor_()
    pick = draws.pixel_bits15(*pick_shape).int() >> shift
    # only the interior is visited by the reference's scan; each pixel there reads its source
    rows = torch.arange(delta, h - delta, device=x.device, dtype=torch.int32).view(-1, 1, 1)
    cols = torch.arange(delta, w - delta, device=x.device, dtype=torch.int32).view(1, -1, 1)
    pick = pick.view(-1)
    rows = (rows + dy_table.index_select(0, pick).view(pick_shape)).clamp_(0, h - 1)
    cols = (cols + dx_table.index_select(0, pick).view(pick_shape)).clamp_(0, w - 1)
    source = torch.arange(h * w * b, device=x.device).view(h, w, b)  # row (pixel, image) of (H W B, C)
    images = torch.arange(b, device=x.device, dtype=torch.int32)
    source[delta:h - delta, delta:w - delta] = rows.mul_(w).add_(cols).mul_(b).add_(images)
    shuffled = blurred.view(h * w * b, ch).index_select(0, source.view(-1)).view(h, w, b * ch)
    out = _gaussian_blur_hwn(shuffled, (sigma, sigma), "nearest").clamp_(0, 255)
    return _from_hwn(out.to(x.dtype), x.shape)  # uint8: truncated, like the reference's cast


def motion_blur(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """uint8 (or float 0..255) in; uint8 out for uint8 CPU batches (``kernels.lines``), else float."""
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    angles = draws.uniform((x.shape[0],), -45, 45)
    if _kernel_path(x, draws, fused=True):  # ``a + w * b`` fused, like torch's add_(alpha=)
        from .kernels.lines import blur_lines
        weights, dy, dx, taps = _motion_line(*x.shape[-2:], radius, sigma, angles)
        out = torch.empty_like(x)
        blur_lines(x.numpy(), weights.astype(np.float32), dy, dx, taps, out.numpy())
        return out
    return _motion_blur(_as_compute(x, draws), radius, sigma, angles).clamp_(0, 255)


_ZOOMS = [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
          np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03)]


def _zoom_taps(n: int, zoom: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The first ``n`` outputs of ``_clipped_zoom`` along one axis of length ``n``: for each, its
    two source indices and their bilinear weights (float64)."""
    crop = int(math.ceil(n / zoom))
    size = int(round(crop * zoom))
    pos = torch.arange(n, dtype=torch.float64) * ((crop - 1) / (size - 1))
    low = pos.floor()
    frac = pos - low
    start = (n - crop) // 2
    low = low.long()
    return start + low, start + (low + 1).clamp_max(crop - 1), 1 - frac, frac


@lru_cache(maxsize=8)
def _zoom_blur_operator(h: int, w: int, severity: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """zoom_blur as one sparse (H W, H W) matrix (CSR): the mean of the image and its clipped
    zooms, each zoom a bilinear map with 4 taps per pixel. The zooms' taps overlap, and summed they
    leave 22-35 non-zeros a row (224 px) instead of 44-64: one sparse-dense product replaces
    10-15 resamplings and their sums."""
    zooms = [float(z) for z in _ZOOMS[severity - 1]]
    rows, cols, vals = [torch.arange(h * w)] * 2, [torch.arange(h * w)] * 2, [torch.ones(h * w, dtype=torch.float64)] * 2
    pixel = torch.arange(h * w).view(h, w)
    for z in zooms[1:]:  # zooms[0] = 1: the identity, counted twice above (x plus its zoom by 1)
        y0, y1, wy0, wy1 = _zoom_taps(h, z)
        x0, x1, wx0, wx1 = _zoom_taps(w, z)
        for ys, wy in ((y0, wy0), (y1, wy1)):
            for xs, wx in ((x0, wx0), (x1, wx1)):
                rows.append(pixel.flatten())
                cols.append((ys[:, None] * w + xs[None, :]).flatten())
                vals.append((wy[:, None] * wx[None, :]).flatten())
    indices = torch.stack((torch.cat(rows), torch.cat(cols)))
    matrix = torch.sparse_coo_tensor(indices, torch.cat(vals) / (len(zooms) + 1), (h * w, h * w),
                                     check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        csr = matrix.to_sparse_csr()
        # int32 indices: the CPU product takes MKL's fast path with them
        parts = (csr.crow_indices().int(), csr.col_indices().int(), csr.values().to(dtype))
        if device.type == "cpu":
            parts = tuple(map(_in_huge_pages, parts))
        return torch.sparse_csr_tensor(*parts, csr.shape, check_invariants=False).to(device)


_HUGE_PAGE = 2 << 20


def _in_huge_pages(t: Tensor) -> Tensor:
    """A copy of the CPU tensor ``t`` in memory Linux may back with 2 MiB pages (transparent huge
    pages on request; elsewhere ``t`` itself). zoom_blur's operators (~12 MB each at 224 px) are read
    whole on every call: in 4 KiB pages, when other work has emptied the TLB, the page walks cost
    ~0.3 ms per image (MKL's product after a run of the reference: 0.81-1.08 ms per image, 0.54-0.72
    with 2 MiB pages)."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or t.device.type != "cpu":
        return t
    region = mmap.mmap(-1, t.nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(advice)
    raw = np.frombuffer(region, dtype=np.uint8)
    start = -raw.ctypes.data % _HUGE_PAGE
    return torch.from_numpy(raw[start:start + t.nbytes]).view(t.dtype).view(t.shape).copy_(t)


def zoom_blur(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """uint8 (or float 0..255) in, the same dtype out."""
    b, ch, h, w = x.shape
    # every image and channel a column of one row-major (H W, B C) matrix, the layout the sparse
    # product reads and writes: OpenCV transposes to and from it (torch's copies cost more than
    # the product), as uint8 for uint8 batches; in grey levels (a linear map: the reference's
    # x / 255 ... * 255 up to rounding)
    columns = _transposed(x.reshape(b * ch, h * w)).to(draws.dtype)
    out = torch.sparse.mm(_zoom_blur_operator(h, w, severity, draws.dtype, x.device), columns)
    if _kernel_path(x, draws):  # the clamp and the cast in one pass
        pixels = torch.empty(out.shape, dtype=torch.uint8)
        pointwise.clamp_to_uint8(out.numpy().reshape(-1), pixels.numpy().reshape(-1))
        return _transposed(pixels).view(x.shape)
    return _transposed(out.clamp_(0, 255).to(x.dtype)).view(x.shape)  # uint8: truncated, like the reference


def snow(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """uint8 (or float 0..255) in; uint8 out for uint8 CPU batches (``kernels.snow``), else float."""
    loc, scale, zoom, threshold, radius, sigma, blend = [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)][severity - 1]
    b, ch, h, w = x.shape
    # the reference zooms the centre of a field of normals: only that centre is drawn
    window = (_zoom_window(h, zoom), _zoom_window(w, zoom))
    crop = draws.normal_window((b, h, w), window, loc=loc, scale=scale)
    angles = draws.uniform((b,), -135, -45)
    if _kernel_path(x, draws, fused=True):
        from .kernels import snow as snow_kernels
        size = [int(round(n * zoom)) for n in crop.shape[-2:]]  # _enlarge's
        flakes = snow_kernels.enlarge(crop.numpy(), *size) if snow_kernels.enlarges_like_torch(*size) else \
            _enlarge(crop.unsqueeze(1), zoom)[:, 0].numpy()
        weights, dy, dx, taps = _motion_line(*size, radius, sigma, angles)
        out = torch.empty_like(x)
        snow_kernels.snow(x.numpy(), flakes, np.float32(threshold), weights.astype(np.float32), dy, dx, taps,
                     np.float32(blend), np.float32(1 - blend), out.numpy())
        return out
    flakes = _enlarge(crop.unsqueeze(1), zoom)
    x = _as_compute(x, draws)
    flakes = flakes.masked_fill_(flakes < threshold, 0).clamp_(0, 1)
    flakes = _motion_blur(flakes, radius, sigma, angles)
    # in grey levels (the reference's x / 255 ... * 255 up to rounding), the flakes as the
    # reference's uint8 layer, added to their half-turn on the (1-channel) layer: one pass less
    flakes = flakes[..., :h, :w].mul(255).round_()
    flakes += flakes.flip(-2, -1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    lifted = torch.maximum(x, gray.mul_(1.5).add_(127.5)).mul_(1 - blend)
    return x.mul_(blend).add_(lifted).add_(flakes).clamp_(0, 255)


FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


@lru_cache(maxsize=None)
def _frost_source(index: int) -> np.ndarray:
    """Frost photo ``index`` shipped with the ``imagecorruptions`` package, RGB uint8 (H, W, 3)."""
    from PIL import Image

    with resources.as_file(resources.files("imagecorruptions") / "frost" / FROST_FILES[index]) as path:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))


def frost_texture(index: int, height: int, width: int) -> np.ndarray:
    """Frost photo ``index`` enlarged (bicubic) to 1.1x the scale that covers ``height x width``."""
    src = _frost_source(index)
    fh, fw = src.shape[:2]
    scale = max(1.0, height / fh, width / fw) * 1.1
    size = (int(math.ceil(fh * scale)), int(math.ceil(fw * scale)))
    t = torch.from_numpy(src).permute(2, 0, 1)[None].double()
    t = F.interpolate(t, size=size, mode="bicubic", align_corners=False)
    return t[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@lru_cache(maxsize=64)
def _frost_textures(height: int, width: int, device: torch.device) -> tuple[Tensor, ...]:
    return tuple(torch.from_numpy(frost_texture(i, height, width)).permute(2, 0, 1).to(device) for i in range(6))


def frost(x: Tensor, severity: int, draws: Draws) -> Tensor:
    keep, amount = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    b, _, h, w = x.shape
    textures = _frost_textures(h, w, x.device)
    sizes = torch.tensor([t.shape[1:] for t in textures], device=x.device)
    index = draws.integers(torch.full((b,), 6, device=x.device))
    top = draws.integers(sizes[index, 0] - h)
    left = draws.integers(sizes[index, 1] - w)
    offsets = list(zip(index.tolist(), top.tolist(), left.tolist()))
    if _kernel_path(x, draws):
        pixels, out = _kernel_output(x)
        for image, target, (i, t, l) in zip(pixels, out.numpy(), offsets):
            pointwise.blend_texture(image, textures[i].numpy(), t, l, np.float32(keep), np.float32(amount), target)
        return out
    crops = torch.stack([textures[i][:, t:t + h, l:l + w] for i, t, l in offsets])
    return _as_compute(x, draws).mul_(keep).add_(crops.to(draws.dtype).mul_(amount)).clamp_(0, 255)


def plasma_fractal(batch: int, size: int, decay: float, draws: Draws, scale: float = 1.0) -> Tensor:
    """Diamond-square height maps (batch, size, size) in [0, scale], in the draws' dtype (float64
    like the reference when replaying it); ``size`` a power of two.

    All the uniforms are drawn at once, one row of the whole map's count per image, and each
    level takes the next of them in the reference's order (its squares, then its two diamond
    sets): the reference's stream, and one draw call instead of three per level. The reference
    fills one map through strided views; here each level's four point sets (corners, square
    centres, the two diamond sets) are separate contiguous (m, m) grids, interleaved into the
    next level's corners (2m, 2m): contiguous sums instead of stride-2 ones (~4x faster)."""
    levels = size.bit_length() - 1
    noise = draws.uniform((batch, 3 * sum(4 ** k for k in range(levels))), -1.0, 1.0)
    if draws.dtype == torch.float32 and _on_host(noise) and kernels.TORCH_FUSES:  # one compiled loop, the same bits
        return torch.from_numpy(plasma.plasma_maps(noise.numpy(), size, float(decay), float(scale)))
    corners = torch.zeros((batch, 1, 1), device=draws.device, dtype=draws.dtype)
    used, wibble = 0, 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        nonlocal used
        n = total.shape[1] * total.shape[2]
        # the reference's wibble * uniform(-wibble, wibble)
        part = noise[:, used:used + n].view(total.shape)
        used += n
        return total.div_(4).add_(part, alpha=wibble * wibble)

    def plus_rolled(a: Tensor, shift: int, dim: int) -> Tensor:  # the reference's a + np.roll(a, shift, axis)
        return a + a.roll(shift, dim)

    for m in (1 << k for k in range(levels)):  # m x m corners, step size / m apart
        square = plus_rolled(corners, -1, 1)
        centres = wibbled_mean(plus_rolled(square, -1, 2))
        # the diamonds right of the corners, then those below
        left = wibbled_mean(plus_rolled(centres, 1, 1).add_(plus_rolled(corners, -1, 2)))
        below = wibbled_mean(plus_rolled(centres, 1, 2).add_(plus_rolled(corners, -1, 1)))
        grid = corners.new_empty((batch, m, 2, m, 2))  # point (2i + row parity, 2j + column parity)
        for (row, col), points in zip(((0, 0), (0, 1), (1, 0), (1, 1)), (corners, left, below, centres)):
            grid[:, :, row, :, col] = points
        corners = grid.view(batch, 2 * m, 2 * m)
        wibble /= decay
    corners -= corners.amin(dim=(1, 2), keepdim=True)
    return corners.mul_(scale / corners.amax(dim=(1, 2), keepdim=True))


def fog(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """uint8 (or float 0..255) in; float out (uint8 from the CPU kernel)."""
    strength, decay = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)][severity - 1]
    b, ch, h, w = x.shape
    size = 1 << (max(h, w, ch) - 1).bit_length()
    # (x / 255 + strength * plasma) * peak / (peak + strength), clipped to [0, 1], in grey levels:
    # the haze scaled on the (smaller) map, one factor per image, three passes over the batch;
    # the peak read from the uint8 batch (~20x faster than from a float copy)
    peak = x.amax(dim=(1, 2, 3), keepdim=True).to(draws.dtype).div_(255.0)
    haze = plasma_fractal(b, size, decay, draws, scale=255 * strength)
    factor = peak / (peak + strength)
    if _kernel_path(x, draws):
        pixels, out = _kernel_output(x)
        pointwise.scale_haze(pixels, haze.numpy(), factor.view(-1).numpy(), out.numpy())
        return out
    return x.to(draws.dtype).add_(haze[:, None, :h, :w]).mul_(factor).clamp_(0, 255)


def brightness(x: Tensor, severity: int, draws: Draws) -> Tensor:
    # Raising HSV value v -> v' at fixed hue and saturation scales every channel by v'/v.
    c = [.1, .2, .3, .4, .5][severity - 1]
    if _kernel_path(x, draws):
        pixels, out = _kernel_output(x)
        pointwise.scale_value(pixels.reshape(len(x), 3, -1), np.float32(c), out.numpy().reshape(len(x), 3, -1))
        return out
    x = _as_compute(x, draws).div_(255.0)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp_(0, 1).mul_(255)
    # x / v is exactly 1 in the value channel, which so takes v' exactly; 0 / 0 (black) reads 1 too
    return x.div_(v).nan_to_num_(1.0).mul_(v_new).clamp_(0, 255)


def contrast(x: Tensor, severity: int, draws: Draws) -> Tensor:
    c = [0.4, .3, .2, .1, .05][severity - 1]
    if _kernel_path(x, draws):  # the means from torch (its summation order), the rest in one pass
        means = _as_compute(x, draws).div_(255.0).mean(dim=(2, 3))
        pixels, out = _kernel_output(x)
        b, ch = x.shape[:2]
        pointwise.blend_channels(pixels.reshape(b, ch, -1), means.numpy(), np.float32(c), out.numpy().reshape(b, ch, -1))
        return out
    x = _as_compute(x, draws).div_(255.0)
    means = x.mean(dim=(2, 3), keepdim=True)
    return x.sub_(means).mul_(c).add_(means).clamp_(0, 1).mul_(255)


def _grid_centres(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The pixel centres of an axis of ``n`` in grid_sample's [-1, 1] coordinates (align_corners=False:
    edges at -1 and 1): (2 i + 1) / n - 1."""
    return torch.arange(n, device=device, dtype=dtype).mul_(2).add_(1).div_(n).sub_(1)


def elastic_transform(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """uint8 in: uint8 out on the host (float32 draws), else float; float in: float out."""
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    b, ch, h, w = x.shape
    sigma = (h * 0.01, w * 0.01)
    max_d = h * 0.005
    # displacement fields (H, W, 2 B), the B x-fields then the B y-fields (the reference's order
    # for one image): blurred together as depthwise convolutions
    fields = _gaussian_blur_hwn(draws.field_uniform(2 * b, h, w, -max_d, max_d), sigma, "reflect", truncate=3)
    if _kernel_path(x, draws, fused=True):
        from .kernels.elastic import displace

        # the grid, the sampling and the cast below in one compiled pass, in torch's float32 steps
        pixels, out = _kernel_output(x)
        displace(pixels, fields.numpy(), np.float32(alpha), _grid_centres(h, torch.float32, x.device).numpy(),
                 _grid_centres(w, torch.float32, x.device).numpy(), out.numpy())
        return out
    x = _as_compute(x, draws)
    # the reference rounds the displacements to float32
    dx, dy = fields.mul_(alpha).float().to(x.dtype).permute(2, 0, 1).split(b)
    # pixel coordinates -> grid_sample's [-1, 1] (align_corners=False: edges at -0.5 and n - 0.5),
    # (2 (i + d) + 1) / n - 1 = (2 i + 1) / n - 1 + d * 2 / n, written straight into the grid;
    # its "reflection" padding then mirrors about the edges, like scipy's mode="reflect"
    grid = torch.empty((b, h, w, 2), dtype=x.dtype, device=x.device)
    for axis, (d, n, shape) in enumerate(((dx, w, (1, 1, w)), (dy, h, (1, h, 1)))):
        torch.add(_grid_centres(n, x.dtype, x.device).view(shape), d, alpha=2 / n, out=grid[..., axis])
    # in grey levels (bilinear: the reference's x / 255 ... * 255 up to rounding)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.clamp_(0, 255)


_PIL_BITS = 22  # fixed-point precision of PIL's 8-bit resampling


@lru_cache(maxsize=64)
def _box_taps(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """PIL's BOX downscaling n_in -> n_out as (index (T, n_out), weight (n_out, 1)): output o is
    the sum of the inputs ``index[t, o]``, t < T, times ``weight[o]``, plus 1/2, rounded down.
    Taps past a window's end read input n_in, a zero row. The weight is PIL's fixed-point weight
    over 2^22, exact in float32 (under 2^23 over a power of two).

    The windows tile the input, k or k + 1 taps each (k = floor(n_in / n_out)). float32 rounds
    like PIL's (sum x weight + 2^21) >> 22 for the at most 5 taps of pixelate's scales (n_in /
    n_out < 4.6 from 32 px): with 1, 2 or 4 taps the weight is a power of two, with 3 or 5 the
    exact sum / taps is 1/10 or more away from a rounding edge."""
    scale = n_in / n_out
    support = 0.5 * max(scale, 1.0)
    taps = []
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        t = (np.arange(lo, hi) - centre + 0.5) / max(scale, 1.0)
        taps.append(np.arange(lo, hi)[(t > -0.5) & (t <= 0.5)])  # a contiguous run
    index = np.full((max(map(len, taps)), n_out), n_in, dtype=np.int64)
    for o, run in enumerate(taps):
        index[:len(run), o] = run
    count = np.array([len(run) for run in taps], dtype=np.float64)
    weight = np.floor(0.5 + (1 << _PIL_BITS) / count) / (1 << _PIL_BITS)
    return torch.from_numpy(index).to(device), torch.from_numpy(weight.astype(np.float32)[:, None]).to(device)


def _box_rows(x: Tensor, n_out: int) -> Tensor:
    """One PIL 8-bit box-resampling pass down the rows of ``x`` (..., n + 1, m), uint8 with a zero
    last row, to n_out rows (uint8): per tap one row gather and one add (the rows are contiguous:
    whole-row copies), then the rounding of ``_box_taps``. On the CPU in NumPy, ~2x faster than
    the same torch ops (its casts and row takes; less overhead per op)."""
    index, weight = _box_taps(x.shape[-2] - 1, n_out, x.device)
    if _on_host(x):
        a, taps = x.numpy(), index.numpy()
        sums = np.take(a, taps[0], axis=-2).astype(np.int16)
        for tap in taps[1:]:
            sums += np.take(a, tap, axis=-2)
        out = sums.astype(np.float32)
        out *= np.broadcast_to(weight.numpy(), out.shape[-2:]).copy()  # whole rows: a SIMD multiply
        out += 0.5
        return torch.from_numpy(out.astype(np.uint8))  # truncates: rounds down, the values are >= 0
    x = x.to(torch.int16)  # one conversion: the sums below then add like dtypes (mixed: ~3x slower)
    sums = x.index_select(-2, index[0])
    for taps in index[1:]:
        sums += x.index_select(-2, taps)
    return sums.float().mul_(weight).add_(0.5).to(torch.uint8)  # truncates, like above


def _take_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x.index_select(-2, index)``; on the CPU NumPy's take (~2x faster)."""
    if _on_host(x):
        return torch.from_numpy(np.take(x.numpy(), index.numpy(), axis=-2))
    return x.index_select(-2, index)


@lru_cache(maxsize=64)
def _nearest_index(n_in: int, n_out: int, device: torch.device) -> Tensor:
    """PIL's nearest-neighbour source index (centres accumulated in float64 steps of n_in / n_out)."""
    step = n_in / n_out
    centres = np.cumsum(np.r_[step * 0.5, np.full(n_out - 1, step)])
    return torch.from_numpy(np.minimum(centres.astype(np.int64), n_in - 1)).to(device)


def _as_uint8(x: Tensor) -> Tensor:
    return x if x.dtype == torch.uint8 else torch.round(x).clamp_(0, 255).to(torch.uint8)


@lru_cache(maxsize=64)
def _box_plan(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_box_taps`` for the pixelate kernels: each window's first tap and tap count (int32) and
    PIL's integer weight (uint32, the float weight times 2^22: exact)."""
    index, weight = (t.numpy() for t in _box_taps(n_in, n_out, torch.device("cpu")))
    count = (index < n_in).sum(0).astype(np.int32)
    return index[0].astype(np.int32), count, (weight[:, 0] * (1 << _PIL_BITS)).astype(np.uint32)


def _pixelate_host(x: Tensor, height: int, width: int) -> Tensor:
    """``pixelate`` of a uint8 CPU batch through (height, width): the column pass as compiled row
    sums of OpenCV-transposed planes, then the row pass and the enlargement in one compiled pass."""
    from .kernels.pixelate import box_rows, box_rows_enlarged

    h, w = x.shape[-2:]
    columns = _transposed(x).view(-1, w, h)
    across = torch.empty((len(columns), width, h), dtype=torch.uint8)
    box_rows(columns.numpy(), *_box_plan(w, width), across.numpy())
    out = torch.empty(x.shape, dtype=torch.uint8)
    box_rows_enlarged(_transposed(across).numpy(), *_box_plan(h, height), _nearest_index(height, h, x.device).numpy(),
                      _nearest_index(width, w, x.device).numpy(), out.view(-1, h, w).numpy())
    return out


def pixelate(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """Integer op: uint8 (or float 0..255) in, uint8 out."""
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    h, w = x.shape[-2:]
    if x.dtype == torch.uint8 and _on_host(x):
        return _pixelate_host(x, int(h * c), int(w * c))
    # Every pass runs down the rows of a transposed copy (row gathers and adds of whole rows; along
    # the last dim each would be a slow element gather): the box pass over the columns first, like
    # PIL (each pass rounds to 8 bits), then over the rows, then the nearest enlargement, columns
    # then rows (the columns' on the small image: fewer rows to gather).
    columns = _box_rows(_transposed(_as_uint8(x), zero_row=True), int(w * c))  # (.., w c, h)
    small = _box_rows(_transposed(columns, zero_row=True), int(h * c))  # (.., h c, w c)
    wide = _take_rows(_transposed(small), _nearest_index(small.shape[-1], w, x.device))  # (.., w, h c)
    return _take_rows(_transposed(wide), _nearest_index(small.shape[-2], h, x.device))


def jpeg_compression(x: Tensor, severity: int, draws: Draws) -> Tensor:
    """Integer op: uint8 (or float 0..255) in, uint8 out."""
    # the reference's PIL round trip is libjpeg (4:2:0, integer DCT, fancy upsampling) and so is
    # torchvision's: bit-identical, and faster than any re-derivation. Run on the CPU for every
    # device (nvjpeg on CUDA is a different codec).
    import cv2
    from torchvision.io import decode_jpeg, encode_jpeg

    quality = [25, 18, 15, 10, 7][severity - 1]
    # libjpeg reads and writes interleaved (H, W, 3) pixels. OpenCV's SIMD merge / split convert
    # from and to the batch's planes ~6-10x faster than a uint8 permute-copy in torch, which cost
    # about as much as the codec (torchvision's own CHW -> HWC copy is then a no-op view).
    planes = np.ascontiguousarray(_as_uint8(x).cpu().numpy())  # OpenCV writes whole planes
    pixels = [torch.from_numpy(cv2.merge(list(image))).permute(2, 0, 1) for image in planes]
    out = np.empty_like(planes)
    for image, target in zip(decode_jpeg(encode_jpeg(pixels, quality=quality)), out):
        cv2.split(image.permute(1, 2, 0).numpy(), list(target))  # into the planes of ``out``
    return torch.from_numpy(out).to(x.device)


TORCH_CORRUPTIONS: dict[str, Callable[[Tensor, int, Draws], Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness,
    "contrast": contrast, "elastic_transform": elastic_transform, "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}

# the corruptions that draw random numbers (the others are deterministic tensor programs)
RANDOM_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost",
                      "fog", "elastic_transform")


# on the CPU, chunks of a few images keep the many elementwise passes in cache; zoom_blur folds
# the batch into the channels, where more images make longer vectors; JPEG goes image by image;
# pixelate's kernels go plane by plane (larger chunks: fewer calls)
_CPU_CHUNK = 4
_CPU_CHUNKS = {"zoom_blur": 16, "jpeg_compression": 64, "defocus_blur": 2, "fog": 16, "pixelate": 16}


def corrupt_batch(
    x: Tensor,
    name: str,
    severity: int,
    generator: Union[torch.Generator, Sequence[torch.Generator], None] = None,
    compute_dtype: Optional[torch.dtype] = None,
    draws: Optional[Draws] = None,
) -> Tensor:
    """Corrupt a batch ``x`` (B, 3, H, W) or one image (3, H, W), H, W >= 32.

    ``x`` is uint8 in 0..255 or float in [0, 1]; the result has the same dtype, shape and device.
    uint8 results are truncated like the reference's ``np.uint8`` cast. Computation is float32
    (float64 for float64 input) unless ``compute_dtype`` says otherwise. ``generator`` (on ``x``'s
    device) makes the result reproducible: one for the batch, or a sequence of B, one per image
    (``ImageDraws``: each image's result then depends on its own generator only); ``draws``
    replaces the random source altogether.
    """
    check_corruption(name, CORRUPTIONS)
    severity = check_severity(severity)
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise UserError(f"expected images shaped (B, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
    if min(x.shape[-2:]) < 32:
        raise UserError(f"images must be at least 32x32 pixels, got {tuple(x.shape[-2:])}")
    is_uint8 = x.dtype == torch.uint8
    if not is_uint8 and not x.is_floating_point():
        raise UserError(f"expected uint8 or floating point images, got {x.dtype}")
    dtype = compute_dtype or (torch.float64 if x.dtype == torch.float64 else torch.float32)
    per_image = generator is not None and not isinstance(generator, torch.Generator)
    if per_image and len(generator) != len(x):
        raise ValueError(f"{len(generator)} generators for {len(x)} images")
    fn = TORCH_CORRUPTIONS[name]
    chunk = _CPU_CHUNKS.get(name, _CPU_CHUNK) if x.device.type == "cpu" else len(x)
    draws = draws or (None if per_image else Draws(generator, x.device, dtype))
    result = torch.empty_like(x, memory_format=torch.contiguous_format)
    for start, part in zip(range(0, len(x), chunk), x.split(chunk)):
        part_draws = draws or ImageDraws(generator[start:start + len(part)], x.device, dtype)
        if not is_uint8:  # a uint8 batch is read as it is (integer ops, compiled kernels, or a float copy)
            part = part.to(dtype) * 255
        out = fn(part, severity, part_draws)  # in [0, 255]
        out = out if is_uint8 else out / 255
        if len(part) == len(x) and out.dtype == x.dtype and out.is_contiguous() and \
                out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            result = out  # one chunk, already the result (the uint8 ops' own output): no copy
            break
        # one pass: into the result's rows, and to uint8 by truncation (the reference's np.uint8 cast)
        target = result[start:start + len(part)]
        if is_uint8 and _on_host(out) and out.dtype in (torch.float32, torch.float64):
            np.copyto(target.numpy(), out.numpy(), casting="unsafe")  # NumPy's cast: ~2x faster than torch's
        else:
            target.copy_(out)
    return result[0] if single else result
