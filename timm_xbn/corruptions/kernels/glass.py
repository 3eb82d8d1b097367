"""Glass blur's kernels: the pixel gather between its two Gaussian blurs, and the cast after them.

The blurs stay OpenCV's (``_gaussian_blur_hwn``); these replace the tensor program's passes around
them on the (H, W, N) layout, N = B images x C channels: the floor of the first blur, each pixel's
source (table lookups of the drawn offsets, clamping, index arithmetic over int64 tensors) and the
row gather become one pass; the clamp to [0, 255], the truncation to uint8 and the transposition
back to planes another.

Where no drawn offset can leave the image (all but a margin as wide as the largest offset), a
pixel's source is its own position plus one precomputed step per offset, with no clamping.
"""
import numpy as np

from . import jit, to_uint8

__all__ = ["glass_gather", "planes_uint8"]


@jit
def _floor_run(src, dst, start, length):
    """``dst[start:start + length] = floor(src[start:start + length])``."""
    for j in range(length):
        dst[start + j] = np.floor(src[start + j])


_RGB = np.uint64(3)  # values per pixel and image


@jit
def _gather_clamped(src, dst, picks, drawn, target, y, x, images, bins, dy, dx, shift, height, width):
    """The RGB values of each image's pixel (y, x) from its drawn source clamped to the image; the
    next draw and target positions."""
    for i in range(images):
        k = bins[np.uint64(picks[drawn] >> shift)]
        drawn += np.uint64(1)
        row = np.uint64(min(max(y + dy[k], 0), height - 1))
        col = np.uint64(min(max(x + dx[k], 0), width - 1))
        source = ((row * np.uint64(width) + col) * np.uint64(images) + np.uint64(i)) * _RGB
        for c in range(_RGB):
            dst[target + c] = np.floor(src[source + c])
        target += _RGB
    return drawn, target


@jit
def glass_gather(blurred, pick, shift, bins, dy, dx, delta, out):
    """``out[y, x] = floor(blurred[y', x'])`` per image of the (H, W, B x 3) float ``blurred``.

    At interior pixels (``delta`` from every border) the source of image i is (y', x') = (y + dy[k],
    x + dx[k]) clamped to the image, k = ``bins[pick[y - delta, x - delta, i] >> shift]`` (``pick``
    (H - 2 delta, W - 2 delta, B) the drawn numbers); elsewhere (y', x') = (y, x)."""
    height, width, n = blurred.shape
    images = pick.shape[2]
    src, dst, picks = blurred.ravel(), out.ravel(), pick.ravel()
    row_len, edge = np.uint64(width * n), np.uint64(delta * n)
    step = (dy * width + dx) * n  # the source's distance in the flat array, where no clamping is needed
    # the pixels whose every drawn source lies in the image: rows [top, bottom), columns [left, right)
    top, bottom = max(delta, -dy.min()), min(height - delta, height - dy.max())
    left = min(max(delta, -dx.min()), width - delta)
    right = max(min(width - delta, width - dx.max()), left)
    drawn = np.uint64(0)
    for y in range(height):
        line = np.uint64(y) * row_len
        if y < delta or y >= height - delta:
            _floor_run(src, dst, line, row_len)
            continue
        _floor_run(src, dst, line, edge)
        _floor_run(src, dst, line + row_len - edge, edge)
        target = line + edge
        left_free, right_free = (left, right) if top <= y < bottom else (width - delta, width - delta)
        for x in range(delta, left_free):
            drawn, target = _gather_clamped(src, dst, picks, drawn, target, y, x, images, bins, dy, dx, shift,
                                            height, width)
        for j in range((right_free - left_free) * images):
            source = np.uint64(np.int64(target) + step[bins[np.uint64(picks[drawn] >> shift)]])
            drawn += np.uint64(1)
            for c in range(_RGB):
                dst[target + c] = np.floor(src[source + c])
            target += _RGB
        for x in range(right_free, width - delta):
            drawn, target = _gather_clamped(src, dst, picks, drawn, target, y, x, images, bins, dy, dx, shift,
                                            height, width)


@jit
def planes_uint8(values, out):
    """``out[n, y, x] = uint8(clamp(values[y, x, n], 0, 255))``, truncating (torch's float -> uint8
    cast): a (H, W, N) float array to N uint8 planes, 64 pixels at a time (cast in one contiguous
    pass, then one strided read per plane)."""
    n = values.shape[2]
    src, dst = values.ravel(), out.ravel()
    pixels, planes, block = np.uint64(len(src) // n), np.uint64(n), np.uint64(64)
    cast = np.empty(64 * n, np.uint8)
    for start in range(np.uint64(0), pixels, block):
        count = min(block, pixels - start)
        first = start * planes
        for j in range(count * planes):
            cast[j] = to_uint8(src[first + j])
        for plane in range(planes):
            target = plane * pixels + start
            for j in range(count):
                dst[target + j] = cast[j * planes + plane]
