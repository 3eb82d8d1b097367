"""Pixelate's kernels: PIL's 8-bit BOX downscaling and nearest-neighbour enlargement.

PIL resamples the columns first, then the rows, each pass rounding to 8 bits with fixed-point
weights: output = (sum of the window's inputs x weight + 2^21) >> 22, weight = floor(0.5 + 2^22 /
taps). Here the sums are uint16 (a window of n taps sums to at most 255 n) and the rounding runs in
uint32: n x weight <= 2^22 + n / 2, so the rounded product stays under 256 x 2^22 < 2^32.

Both kernels sum whole rows (one vector add per tap and row): the column pass runs down the rows
of transposed planes, where a window of columns is a run of rows. Summing along a row instead
would gather per tap and output, which LLVM leaves scalar (~2x slower, with the transposes).
"""
import numpy as np

from . import jit

__all__ = ["box_rows", "box_rows_enlarged"]

_HALF = np.uint32(1 << 21)  # PIL's rounding term, 2^(22 - 1)
_BITS = np.uint32(22)


@jit
def _window_sum(src, base, count, stride, sums):
    """``sums[x] = sum(src[base + t * stride + x] for t < count)`` (uint16)."""
    for x in range(np.uint64(len(sums))):
        sums[x] = src[base + x]
    for t in range(1, count):
        row = base + np.uint64(t) * stride
        for x in range(np.uint64(len(sums))):
            sums[x] += src[row + x]


@jit
def box_rows(planes, start, count, weight, out):
    """One PIL box pass down the rows of uint8 planes (P, n, m) into ``out`` (P, n_out, m): output
    row o sums ``count[o]`` rows from ``start[o]``, times ``weight[o]``, rounded like PIL."""
    n_planes, n_in, width = planes.shape
    n_out = out.shape[1]
    src, dst = planes.ravel(), out.ravel()
    stride = np.uint64(width)
    sums = np.empty(width, np.uint16)
    for p in range(n_planes):
        for o in range(n_out):
            _window_sum(src, np.uint64((p * n_in + start[o]) * width), count[o], stride, sums)
            target, w = np.uint64((p * n_out + o) * width), weight[o]
            for x in range(stride):
                dst[target + x] = np.uint32(np.uint32(sums[x]) * w + _HALF) >> _BITS


@jit
def box_rows_enlarged(planes, start, count, weight, nearest_rows, nearest_cols, out):
    """``box_rows`` of uint8 planes (P, n, m) to n_out rows, enlarged into ``out`` (P, H, W) by
    nearest neighbours: ``out[p, y, x] = small[p, nearest_rows[y], nearest_cols[x]]``.

    ``nearest_rows`` is non-decreasing: each small row is summed and enlarged once, into the first
    output row that shows it, and copied into the next ones."""
    n_planes, n_in, small_width = planes.shape
    height, width = out.shape[1:]
    src, dst = planes.ravel(), out.ravel()
    stride, out_width = np.uint64(small_width), np.uint64(width)
    sums = np.empty(small_width, np.uint16)
    small = np.empty(small_width, np.uint8)
    for p in range(n_planes):
        last = -1
        for y in range(height):
            row, target = nearest_rows[y], np.uint64((p * height + y) * width)
            if row == last:
                for x in range(out_width):
                    dst[target + x] = dst[target - out_width + x]
                continue
            _window_sum(src, np.uint64((p * n_in + start[row]) * small_width), count[row], stride, sums)
            w = weight[row]
            for x in range(stride):
                small[x] = np.uint32(np.uint32(sums[x]) * w + _HALF) >> _BITS
            for x in range(out_width):
                dst[target + x] = small[np.uint64(nearest_cols[x])]
            last = row
