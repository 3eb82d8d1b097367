"""One-pass kernels of the per-pixel corruptions (gaussian_noise, brightness, contrast, frost, fog)
on uint8 batches: each reads the uint8 image and writes the uint8 result, the tensor program's
float32 chain in between (its operations in its order, so the same bits), the final clamp and the
truncation toward zero of ``corrupt_batch``'s uint8 cast included. The tensor program reads and
writes the batch once per operation (a float copy, 3-6 passes, the cast).

Arrays are NumPy views of contiguous (B, C, H, W) batches; per-image or per-channel factors come as
float32 arrays, so the arithmetic is float32 throughout, like torch's with Python scalars.
"""
import numpy as np

from . import jit, to_uint8

__all__ = ["add_noise", "scale_value", "blend_channels", "blend_texture", "scale_haze"]

_ZERO, _MAX = np.float32(0.0), np.float32(255.0)


@jit
def add_noise(x: np.ndarray, noise: np.ndarray, out: np.ndarray) -> None:
    """gaussian_noise: ``noise + x``, clamped and truncated (all three arrays flat, same length)."""
    for i in range(np.uint64(x.size)):
        out[i] = to_uint8(noise[i] + np.float32(x[i]))


@jit
def scale_value(x: np.ndarray, shift: np.float32, out: np.ndarray) -> None:
    """brightness on (B, 3, P) pixels: v = the max of the channels / 255, every channel scaled by
    min(max(v + shift, 0), 1) * 255 / v (a black pixel's 0 / 0 reads 1). In two loops per image
    (v and the target, then each channel): one loop over all six rows does not vectorise."""
    value = np.empty(x.shape[2], np.float32)
    target = np.empty(x.shape[2], np.float32)
    for b in range(x.shape[0]):
        red, green, blue = x[b, 0], x[b, 1], x[b, 2]
        for p in range(np.uint64(x.shape[2])):
            v = max(max(np.float32(red[p]) / _MAX, np.float32(green[p]) / _MAX), np.float32(blue[p]) / _MAX)
            value[p] = v
            target[p] = min(max(v + shift, _ZERO), np.float32(1.0)) * _MAX
        for c in range(3):
            channel, result = x[b, c], out[b, c]
            for p in range(np.uint64(x.shape[2])):
                ratio = (np.float32(channel[p]) / _MAX) / value[p]
                result[p] = to_uint8((np.float32(1.0) if ratio != ratio else ratio) * target[p])


@jit
def blend_channels(x: np.ndarray, means: np.ndarray, keep: np.float32, out: np.ndarray) -> None:
    """contrast on (B, C, P) values: ((x / 255 - mean) * keep + mean) in [0, 1], times 255, per
    channel's mean (B, C)."""
    one = np.float32(1.0)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            m = means[b, c]
            for p in range(np.uint64(x.shape[2])):
                v = (np.float32(x[b, c, p]) / _MAX - m) * keep + m
                out[b, c, p] = np.uint8(min(max(v, _ZERO), one) * _MAX)


@jit
def blend_texture(x: np.ndarray, texture: np.ndarray, top: int, left: int, keep: np.float32,
                  amount: np.float32, out: np.ndarray) -> None:
    """frost on one (C, H, W) image: x * keep + texture[:, top:, left:] * amount."""
    start = np.uint64(left)
    for c in range(x.shape[0]):
        for y in range(x.shape[1]):
            row = texture[c, top + y]
            for i in range(np.uint64(x.shape[2])):
                out[c, y, i] = to_uint8(np.float32(x[c, y, i]) * keep + np.float32(row[start + i]) * amount)


@jit
def scale_haze(x: np.ndarray, haze: np.ndarray, factor: np.ndarray, out: np.ndarray) -> None:
    """fog on (B, C, H, W) values: (x + haze) * factor, haze the top-left (H, W) of a (B, S, S)
    map shared by the channels, one factor per image."""
    for b in range(x.shape[0]):
        f = factor[b]
        for c in range(x.shape[1]):
            for y in range(x.shape[2]):
                row = haze[b, y]
                for i in range(np.uint64(x.shape[3])):
                    out[b, c, y, i] = to_uint8((np.float32(x[b, c, y, i]) + row[i]) * f)


@jit
def padded_unit(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, left: int, out: np.ndarray) -> None:
    """defocus_blur's FFT input: out[b, c, i, j] = x[b, c, rows[i], cols[j]] / 255 for i, j below
    len(rows), len(cols) (a border-padded image; columns ``left`` to ``left + W`` read the image's
    own, contiguously), zero up to out's size (the FFT's zero padding)."""
    width = x.shape[3]
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(out.shape[2]):
                target = out[b, c, i]
                target[:] = 0
                if i >= rows.size:
                    continue
                source = x[b, c, rows[i]]
                start = np.uint64(left)
                for j in range(np.uint64(width)):
                    target[start + j] = np.float32(source[j]) / _MAX
                for j in range(left):
                    target[j] = np.float32(source[cols[j]]) / _MAX
                for j in range(left + width, cols.size):
                    target[j] = np.float32(source[cols[j]]) / _MAX


@jit
def unit_to_uint8(y: np.ndarray, top: int, left: int, out: np.ndarray) -> None:
    """defocus_blur's result: the (H, W) window of ``y`` at (top, left), clamped to [0, 1], times
    255, truncated."""
    one = np.float32(1.0)
    start = np.uint64(left)
    for b in range(out.shape[0]):
        for c in range(out.shape[1]):
            for i in range(out.shape[2]):
                source, target = y[b, c, top + i], out[b, c, i]
                for j in range(np.uint64(out.shape[3])):
                    target[j] = np.uint8(min(max(source[start + j], _ZERO), one) * _MAX)


@jit
def clamp_to_uint8(values: np.ndarray, out: np.ndarray) -> None:
    """zoom_blur's result: float32 values clamped to [0, 255] and truncated (both arrays flat)."""
    for i in range(np.uint64(values.size)):
        out[i] = to_uint8(values[i])


@jit
def uniform_from_bits(bits: np.ndarray, step: np.float32, low: np.float32, out: np.ndarray) -> None:
    """``Draws.uniform`` on the CPU: the top 24 of 31 random bits times ``step``, plus ``low``
    (float32, each step rounded: the tensor program's shift, multiply and add; both arrays flat)."""
    for i in range(np.uint64(bits.size)):
        out[i] = np.float32(bits[i] >> 7) * step + low
