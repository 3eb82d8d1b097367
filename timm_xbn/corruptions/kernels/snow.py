"""snow on uint8 batches: the zoom of the flakes' normals (``enlarge``), then one kernel, image by
image: the flakes layer (threshold, line blur, rounding) and the blend of the image with its lifted
grey and the flakes, while the image's buffers stay in the cache (the tensor program: ~12 passes
over the batch or the layer, and up to 25 taps each reading and writing the layer). The float32
operations are the tensor program's, in its order, unfused where torch's are (the line's sums and
the zoom's fuse like torch's, see ``lines``); the final clamp and truncation to uint8 are
``corrupt_batch``'s cast.
"""
import numpy as np

from . import jit, to_uint8
from .lines import pad_rows, sum_taps

__all__ = ["enlarges_like_torch", "enlarge", "snow"]

_ZERO, _ONE, _MAX = np.float32(0.0), np.float32(1.0), np.float32(255.0)


# torch's CPU bilinear resize takes its separable kernel for outputs with height + width above this
# (below: a per-pixel kernel that sums the four products in another order)
_TORCH_PER_PIXEL_MAX = 128


def enlarges_like_torch(height: int, width: int) -> bool:
    """Whether ``enlarge`` to (height, width) gives torch's bits."""
    return height + width > _TORCH_PER_PIXEL_MAX


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear taps along one axis (align_corners=True), in its float32 arithmetic: each
    output's two source indices and their weights."""
    scale = np.float32(n_in - 1) / np.float32(n_out - 1)
    position = scale * np.arange(n_out, dtype=np.float32)
    low = np.minimum(np.floor(position).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    w_high = np.minimum(np.maximum(position - low.astype(np.float32), np.float32(0)), np.float32(1))
    return low, high, np.float32(1) - w_high, w_high


@jit(fastmath={"contract"})
def _enlarge(crops: np.ndarray, rows: tuple, cols: tuple, out: np.ndarray) -> None:
    """torch's separable bilinear sums: each crop row resized along the columns once
    (``fma(x0, w0, x1 * w1)``), then every output row from its two resized rows, the same way. The
    second products are rounded into a row of their own first: LLVM then has one way to fuse."""
    top, bottom, w_top, w_bottom = rows
    left, right, w_left, w_right = cols
    wide = np.empty((crops.shape[1], out.shape[2]), np.float32)
    second = np.empty(out.shape[2], np.float32)
    for b in range(crops.shape[0]):
        for y in range(crops.shape[1]):
            source, row = crops[b, y], wide[y]
            for x in range(row.size):
                second[x] = source[right[x]] * w_right[x]
            for x in range(row.size):
                row[x] = source[left[x]] * w_left[x] + second[x]
        for y in range(out.shape[1]):
            upper, lower, row = wide[top[y]], wide[bottom[y]], out[b, y]
            for x in range(np.uint64(row.size)):
                second[x] = lower[x] * w_bottom[y]
            for x in range(np.uint64(row.size)):
                row[x] = upper[x] * w_top[y] + second[x]


def enlarge(crops: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 ``crops`` (B, h, w) resized to (B, height, width) as torch's bilinear ``interpolate``
    (align_corners=True) does on the CPU, where ``enlarges_like_torch(height, width)``."""
    out = np.empty((crops.shape[0], height, width), np.float32)
    _enlarge(crops, _bilinear_taps(crops.shape[1], height), _bilinear_taps(crops.shape[2], width), out)
    return out


@jit
def _flakes_layer(flakes: np.ndarray, threshold: np.float32, weights: np.ndarray, dy: np.ndarray, dx: np.ndarray,
                  count: int, padded: np.ndarray, out: np.ndarray) -> None:
    """One image's flakes in grey levels, float32 ``out`` (h, w): the zoomed normals ``flakes``
    (H, W), H >= h, W >= w, set to 0 below ``threshold`` and clipped to [0, 1], blurred along the
    line (taps 0..count-1, through the scratch rows ``padded``), the first h rows and w columns
    times 255, rounded half to even."""
    pad_rows(flakes, padded)
    for y in range(padded.shape[0]):
        row = padded[y]
        for i in range(np.uint64(row.size)):
            v = row[i]
            row[i] = min(max(_ZERO if v < threshold else v, _ZERO), _ONE)
    taps = weights.size
    for y in range(out.shape[0]):
        row = out[y]
        sum_taps(row, padded, taps, y, dy, dx, weights, count)
        for i in range(np.uint64(row.size)):
            row[i] = np.rint(row[i] * _MAX)


@jit
def _blend(x: np.ndarray, flakes: np.ndarray, blend: np.float32, keep: np.float32, out: np.ndarray) -> None:
    """snow's blend of uint8 images ``x`` (B, 3, h, w) into ``out``: ``x * blend + max(x, grey *
    1.5 + 127.5) * keep + (flakes + flakes turned by half a turn)``, ``flakes`` (B, h, w), clamped
    to [0, 255] and truncated. (LLVM vectorises the pixel loop inside a loop over the images, not
    inside the rows' loop alone: 6x faster, so one image comes as a batch of one.)"""
    batch, _, h, w = x.shape
    red, green, blue = np.float32(0.299), np.float32(0.587), np.float32(0.114)
    scale, lift = np.float32(1.5), np.float32(127.5)
    for b in range(batch):
        for y in range(h):
            reds, greens, blues = x[b, 0, y], x[b, 1, y], x[b, 2, y]
            layer, turned = flakes[b, y], flakes[b, h - 1 - y]
            for i in range(np.uint64(w)):
                r, g, u = np.float32(reds[i]), np.float32(greens[i]), np.float32(blues[i])
                grey = (red * r + green * g + blue * u) * scale + lift
                snowfall = layer[i] + turned[np.uint64(w - 1) - i]
                for c, value in ((0, r), (1, g), (2, u)):
                    out[b, c, y, i] = to_uint8(value * blend + max(value, grey) * keep + snowfall)


@jit
def snow(x: np.ndarray, flakes: np.ndarray, threshold: np.float32, weights: np.ndarray, dy: np.ndarray,
         dx: np.ndarray, counts: np.ndarray, blend: np.float32, keep: np.float32, out: np.ndarray) -> None:
    """snow on uint8 ``x`` (B, 3, h, w) into uint8 ``out``, from the zoomed normals ``flakes``
    (B, H, W), H >= h, W >= w, and image b's line (taps 0..counts[b]-1 of ``weights``, shifts
    ``dy``, ``dx``, (B, taps)): ``x * blend + max(x, grey) * keep`` plus the flakes layer and its
    half-turn."""
    batch, _, h, w = x.shape
    padded = np.empty((flakes.shape[1], flakes.shape[2] + 2 * weights.size), np.float32)
    layer = np.empty((1, h, w), np.float32)
    for b in range(batch):
        _flakes_layer(flakes[b], threshold, weights, dy[b], dx[b], counts[b], padded, layer[0])
        _blend(x[b:b + 1], layer, blend, keep, out[b:b + 1])
