"""Reference corruptions: a seeded wrapper over the ``imagecorruptions`` package (CPU, per image).

``imagecorruptions.corrupt`` draws from NumPy's global random state, and two corruptions
(``impulse_noise``, ``glass_blur``) from their own generators unless a seed is passed. The wrapper
seeds all three from one integer and restores NumPy's global state afterwards, so results are
reproducible per image and callers' random streams are left alone.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np

from ..utils.errors import UserError
from .names import ALL_CORRUPTIONS, check_corruption, check_severity

__all__ = ["corrupt_reference", "glass_offset_table", "image_seed", "numpy_seed"]

# corruptions of the reference that take their own ``seed`` argument
_SEEDED_KWARG = ("impulse_noise", "glass_blur")


@contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    """Seed NumPy's global random state for the block, then restore the previous state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def image_seed(seed: int, name: str, severity: int, index: int) -> int:
    """A 32-bit seed for image ``index`` of corruption ``name`` at ``severity`` (stable across runs)."""
    key = [seed, ALL_CORRUPTIONS.index(name), severity, index]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def corrupt_reference(image: np.ndarray, name: str, severity: int, seed: Optional[int] = None) -> np.ndarray:
    """Corrupt one RGB uint8 image (H, W, 3), H, W >= 32, with ``imagecorruptions``; seeded if ``seed``."""
    from imagecorruptions import corrupt

    check_corruption(name)
    severity = check_severity(severity)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"expected an RGB uint8 array (H, W, 3), got {getattr(image, 'dtype', type(image))} "
                        f"{getattr(image, 'shape', '')}")
    if min(image.shape[:2]) < 32:
        raise UserError(f"images must be at least 32x32 pixels, got {image.shape[:2]}")
    if seed is None:
        return corrupt(image, severity=severity, corruption_name=name)
    kwargs = {"seed": seed} if name in _SEEDED_KWARG else {}
    with numpy_seed(seed):
        return corrupt(image, severity=severity, corruption_name=name, **kwargs)


def glass_offset_table(severity: int, size: int = 224, runs: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Where the reference's glass-blur pixel scan sends pixels: the distribution of
    (source row - row, source col - col) over interior pixels, measured by running the scan on a
    coordinate image. Returns (offsets (K, 2) int16, probabilities (K,) float64).

    The package's ``glass_offsets.npz`` holds ``offsets_S, probs_S = glass_offset_table(S)`` for S = 1..5
    with the defaults (``np.savez_compressed``), which the torch glass blur draws from."""
    from imagecorruptions.corruptions import _shuffle_pixels_njit_glass_blur as scan

    params = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][check_severity(severity) - 1]
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    margin = 8 * params[1] * params[2]  # far from the borders, where the scan is translation invariant
    found = []
    for run in range(runs):
        coords = scan(size, size, np.stack([rows, cols], -1).astype(np.int64), params, seed + run)
        d = coords - np.stack([rows, cols], -1)
        found.append(d[margin:size - margin, margin:size - margin].reshape(-1, 2))
    offsets, counts = np.unique(np.concatenate(found), axis=0, return_counts=True)
    return offsets.astype(np.int16), counts / counts.sum()
