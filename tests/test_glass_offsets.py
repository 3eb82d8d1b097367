"""The glass-blur offset table shipped with the package is what the reference's pixel scan produces."""
from importlib import resources

import numpy as np
import pytest

from timm_xbn.corruptions.reference import glass_offset_table


@pytest.mark.slow  # numba compiles the reference's scan once (seconds to half a minute)
def test_shipped_glass_offsets_are_the_reference_scan_of_glass_offset_table():
    with resources.as_file(resources.files("timm_xbn.corruptions") / "glass_offsets.npz") as path:
        shipped = dict(np.load(path))
    assert sorted(shipped) == sorted(f"{kind}_{s}" for kind in ("offsets", "probs") for s in range(1, 6))
    for severity in (1, 5):  # the smallest and the largest displacement
        offsets, probs = glass_offset_table(severity)
        assert np.array_equal(shipped[f"offsets_{severity}"], offsets)
        assert np.array_equal(shipped[f"probs_{severity}"], probs)
        assert probs.sum() == pytest.approx(1.0) and np.abs(offsets).max() >= severity  # displaced, not identity
