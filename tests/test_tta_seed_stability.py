"""benchmarks/tta_demo.py's seed-stability rule (docs/tta.md): a verdict is stable when every leave-one-seed-out
subset gives it too; intervals checked by hand with the Student t quantiles."""
import pytest

from benchmarks.tta_demo import seed_stable

ZEROS = [0.0] * 5


def test_a_verdict_every_subset_keeps_is_stable():
    # all five below 0 by about 1 point, sd about 0.08: every 4-seed interval (t 3.18) stays below 0
    assert seed_stable([-1.0, -1.1, -0.9, -1.05, -0.95], ZEROS)


def test_one_seed_that_decides_the_verdict_makes_it_seed_sensitive():
    # all five: mean -0.21, sd 1.79, interval [-2.43, +2.01] -> inconclusive; without the +3.0 seed:
    # mean -1.0125, sd 0.085, half-width 3.182 * 0.085 / 2 = 0.135 -> lower: the verdict hangs on one seed
    assert not seed_stable([-1.0, -1.1, -0.9, -1.05, 3.0], ZEROS)


@pytest.mark.parametrize("values", [[-1.0, -1.1], [-1.0, -1.2]])
def test_two_seeds_are_never_stable(values):
    assert not seed_stable(values, [0.0, 0.0])
