"""fog's diamond-square height maps in one compiled loop per image (``torch_ops.plasma_fractal``'s
tensor program runs ~40 small tensor operations per level, most of them on a few hundred values).

The same float32 operations in the same order: each point the sum of its two pairs of
neighbours, over 4, plus wibble^2 times its uniform (one fused multiply-add, like torch's
``add_(..., alpha=)``); then the map shifted to 0 and scaled by ``scale * (1 / max)``
(torch's ``scale / tensor`` is ``tensor.reciprocal() * scale``).
"""
import numpy as np

from . import jit

__all__ = ["plasma_maps"]


@jit(fastmath={"contract"})
def _wibbled(total: np.float32, alpha: np.float32, uniform: np.float32) -> np.float32:
    return total / np.float32(4.0) + alpha * uniform


@jit(fastmath={"contract"})
def _level(corners: np.ndarray, noise: np.ndarray, alpha: np.float32) -> np.ndarray:
    """One diamond-square level: (m, m) corners -> (2m, 2m), taking 3 m^2 uniforms from ``noise``.
    Neighbours wrap around (the tensor program's rolls); the previous/next index is computed,
    not taken modulo m (an integer division per point)."""
    m = corners.shape[0]
    centres = np.empty((m, m), np.float32)
    grid = np.empty((2 * m, 2 * m), np.float32)
    for i in range(m):
        i1 = i + 1 if i + 1 < m else 0
        for j in range(m):
            j1 = j + 1 if j + 1 < m else 0
            total = (corners[i, j] + corners[i1, j]) + (corners[i, j1] + corners[i1, j1])
            centres[i, j] = _wibbled(total, alpha, noise[i * m + j])
    right, below = noise[m * m:], noise[2 * m * m:]
    for i in range(m):
        i0 = i - 1 if i > 0 else m - 1
        i1 = i + 1 if i + 1 < m else 0
        for j in range(m):
            j0 = j - 1 if j > 0 else m - 1
            j1 = j + 1 if j + 1 < m else 0
            total = (centres[i, j] + centres[i0, j]) + (corners[i, j] + corners[i, j1])
            grid[2 * i, 2 * j + 1] = _wibbled(total, alpha, right[i * m + j])
            total = (centres[i, j] + centres[i, j0]) + (corners[i, j] + corners[i1, j])
            grid[2 * i + 1, 2 * j] = _wibbled(total, alpha, below[i * m + j])
            grid[2 * i, 2 * j] = corners[i, j]
            grid[2 * i + 1, 2 * j + 1] = centres[i, j]
    return grid


@jit
def plasma_maps(noise: np.ndarray, size: int, decay: float, scale: float) -> np.ndarray:
    """(B, size, size) maps from ``noise`` (B, N) uniforms in [-1, 1), taken in the tensor
    program's order: per level its square centres, then the diamonds right of the corners, then
    those below them, each row-major."""
    out = np.empty((noise.shape[0], size, size), np.float32)
    for b in range(noise.shape[0]):
        corners = np.zeros((1, 1), np.float32)
        used, wibble, m = 0, 100.0, 1
        while m < size:
            corners = _level(corners, noise[b, used:used + 3 * m * m], np.float32(wibble * wibble))
            used += 3 * m * m
            wibble /= decay
            m *= 2
        corners -= corners.min()
        out[b] = corners * ((np.float32(1.0) / corners.max()) * np.float32(scale))
    return out
