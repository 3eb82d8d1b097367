"""One-pass kernels of the line blurs (motion_blur, and snow's flakes) on the host.

A line blur sums 2 radius + 1 shifted copies of each plane (``torch_ops._motion_blur``): the
tensor program reads and writes the whole plane once per tap (up to 41). Here each plane is
converted to float32 once, its rows padded with their edge values; each output row is summed
over all taps in a row buffer that stays in the L1 cache (four taps a pass), reading the shifted
rows (clamped row indices: the replicated top and bottom edges), and finished at once
(motion_blur: clamped and truncated to uint8).

The sums are the tensor program's, in its order: tap 0 as ``weight * value``, then tap by tap
``acc + weight * value``, which torch's vectorised ``add_(..., alpha=weight)`` computes as one
fused multiply-add (``fmadd``) on CPUs with AVX2 / AVX-512 kernels; ``fastmath={"contract"}``
lets LLVM fuse the same products (where torch's kernels lack FMA, ``TORCH_FUSES``, the tensor
program stays the path).
"""
import numpy as np

from . import jit, to_uint8

__all__ = ["pad_rows", "sum_taps", "blur_lines"]


@jit
def pad_rows(plane: np.ndarray, out: np.ndarray) -> None:
    """``plane`` (H, W) into ``out`` (H, W + 2 pad), converted to its dtype, the first and last
    columns repeated ``pad`` times on their sides."""
    w = plane.shape[1]
    pad = (out.shape[1] - w) // 2
    for y in range(plane.shape[0]):
        source, row = plane[y], out[y]
        first, last = source[0], source[w - 1]
        for i in range(np.uint64(pad)):
            row[i] = first
            row[np.uint64(pad + w) + i] = last
        for i in range(np.uint64(w)):
            row[np.uint64(pad) + i] = source[i]


@jit
def _tap(padded: np.ndarray, pad: int, y: int, dy: np.ndarray, dx: np.ndarray, t: int) -> tuple[np.uint64, np.uint64]:
    """Where tap t of output row y starts reading in ``padded``: its row (clamped) and column."""
    return np.uint64(min(max(y - dy[t], 0), padded.shape[0] - 1)), np.uint64(pad - dx[t])


@jit(fastmath={"contract"})
def sum_taps(acc: np.ndarray, padded: np.ndarray, pad: int, y: int, dy: np.ndarray, dx: np.ndarray,
             weights: np.ndarray, count: int) -> None:
    """``acc[x] = sum_t weights[t] * plane[y - dy[t], x - dx[t]]`` over taps 0..count-1 in order,
    edges replicated, from ``padded`` (``pad_rows(plane)``, ``pad`` >= max |dx| columns each side):
    the first tap multiplies, every later one adds one fused product. Rows clamp here; every
    column is read through the loop's own index (a product of loop-invariant factors would be
    hoisted out of the loop and not fused)."""
    n = np.uint64(acc.size)
    row0, start0 = _tap(padded, pad, y, dy, dx, 0)
    for x in range(n):
        acc[x] = weights[0] * np.float32(padded[row0, start0 + x])
    t = 1
    while t + 4 <= count:  # four taps a pass: the same fused products in the same order, 1/4 of the acc traffic
        row1, start1 = _tap(padded, pad, y, dy, dx, t)
        row2, start2 = _tap(padded, pad, y, dy, dx, t + 1)
        row3, start3 = _tap(padded, pad, y, dy, dx, t + 2)
        row4, start4 = _tap(padded, pad, y, dy, dx, t + 3)
        w1, w2, w3, w4 = weights[t], weights[t + 1], weights[t + 2], weights[t + 3]
        for x in range(n):
            a = acc[x]
            a += w1 * np.float32(padded[row1, start1 + x])
            a += w2 * np.float32(padded[row2, start2 + x])
            a += w3 * np.float32(padded[row3, start3 + x])
            a += w4 * np.float32(padded[row4, start4 + x])
            acc[x] = a
        t += 4
    while t < count:
        row1, start1 = _tap(padded, pad, y, dy, dx, t)
        w1 = weights[t]
        for x in range(n):
            acc[x] += w1 * np.float32(padded[row1, start1 + x])
        t += 1


@jit
def blur_lines(x: np.ndarray, weights: np.ndarray, dy: np.ndarray, dx: np.ndarray, counts: np.ndarray,
               out: np.ndarray) -> None:
    """motion_blur on uint8 ``x`` (B, C, H, W) into uint8 ``out``: image b sums taps 0..counts[b]-1
    of the line (``dy``, ``dx``: (B, taps) shifts, ``weights``: float32 (taps,)), clamped to
    [0, 255] and truncated."""
    batch, channels, h, w = x.shape
    taps = weights.size
    padded = np.empty((h, w + 2 * taps), np.float32)
    acc = np.empty(w, np.float32)
    for b in range(batch):
        for c in range(channels):
            pad_rows(x[b, c], padded)
            for y in range(h):
                sum_taps(acc, padded, taps, y, dy[b], dx[b], weights, counts[b])
                row = out[b, c, y]
                for i in range(np.uint64(w)):
                    row[i] = to_uint8(acc[i])
