"""Kernels of shot and impulse noise: every step after the random draw in one pass over the values.

Both read the batch's grey levels (uint8) and one random integer per value, as drawn by
``Draws.bits31`` / ``Draws.bits15``, and write the uint8 result, with the same rules as the tensor
programs in ``torch_ops`` (``Draws.image_poisson_levels``, ``impulse_noise``).
"""
import numpy as np

from . import jit

__all__ = ["poisson_levels", "salt_and_pepper"]


@jit
def _count(keys, start, stop, query):
    """The number of ``keys[start:stop]`` (sorted) that are <= ``query``."""
    lo, hi = start, stop
    while lo < hi:  # the first key > query
        mid = (lo + hi) // 2
        if keys[mid] <= query:
            lo = mid + 1
        else:
            hi = mid
    return lo - start


@jit
def poisson_levels(levels, bits, table, mark, shift, keys, lut, out):
    """``out[i] = table[levels[i] << (31 - shift) | bits[i] >> shift]``, or where that is the byte
    ``mark`` (a bin where the CDF jumps), ``lut`` of the count (clamped to ``lut``'s end): the number
    of the level's ``keys`` (those of ``_poisson_tables``: level l's run from index l * n, values
    l * 2^32 + ceil(CDF * 2^31)) that are <= l * 2^32 + bits. Flat arrays."""
    level_shift = np.uint32(31 - shift)
    per_level = keys.shape[0] // (table.shape[0] >> (31 - shift))  # keys / levels
    last = lut.shape[0] - 1
    for i in range(np.uint64(levels.shape[0])):
        level = np.uint32(levels[i])
        b = np.uint32(bits[i])
        value = table[(level << level_shift) | (b >> np.uint32(shift))]
        if value == mark:
            start = np.int64(level) * per_level
            query = (np.int64(level) << np.int64(32)) + np.int64(b)
            value = lut[min(_count(keys, start, start + per_level, query), last)]
        out[i] = value


@jit
def salt_and_pepper(x, bits, salt_below, flip_below, out):
    """``out[i]`` = 255 where ``bits[i] < salt_below`` (salt), 0 where ``salt_below <= bits[i] <
    flip_below`` (pepper), else ``x[i]``. Flat arrays."""
    salt, flip = np.int16(salt_below), np.int16(flip_below)
    for i in range(np.uint64(x.shape[0])):
        b = bits[i]
        out[i] = np.uint8(255) if b < salt else (np.uint8(0) if b < flip else x[i])
