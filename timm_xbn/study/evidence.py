"""Effects with confidence intervals over independently trained networks, and the three verdicts.

A Section 5 comparison is measured once per training seed (a network trained from its own
initialisation and data order; perturbation seeds, where there are any, are averaged inside that
seed first). The effect is the mean over training seeds of the paired difference "variant minus
baseline" for the same seed, with a two-sided 95 % Student-t interval over the seeds:

    mean ± t(0.975, n - 1) · sd / sqrt(n)

The verdict compares the interval with zero in the direction the paper predicts: HOLDS when it
excludes zero on the paper's side, CONTRADICTED when it excludes zero on the other side, and
INCONCLUSIVE when it contains zero (or fewer than two seeds were run).

A correlation (one per training seed) is bounded by ±1, so its interval is computed on Fisher's
z = atanh(r) instead (``correlation_effect``): the same t interval over the seeds' z values, mean and
bounds transformed back with tanh, so the interval stays inside [-1, 1].
"""
import math
from dataclasses import asdict, dataclass
from typing import List, Sequence

import numpy as np
from scipy import stats

from ..utils.errors import UserError

__all__ = ["HOLDS", "CONTRADICTED", "INCONCLUSIVE", "Effect", "paired_effect", "correlation_effect", "combine_verdicts",
           "effect_from_per_seed"]

HOLDS, CONTRADICTED, INCONCLUSIVE = "HOLDS", "CONTRADICTED", "INCONCLUSIVE"
CONFIDENCE = 0.95


@dataclass
class Effect:
    """One effect: per-seed values, their mean, sd over seeds, the 95 % CI and the verdict."""

    name: str
    unit: str
    direction: int  # +1: the paper predicts a positive effect, -1: a negative one
    per_seed: List[float]
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    verdict: str
    pairs: int = 0  # a correlation's points per seed (``correlation_effect``); 0 for a paired difference

    @property
    def n(self) -> int:
        return len(self.per_seed)

    def to_dict(self) -> dict:
        return {**asdict(self), "n": self.n}


def _verdict(low: float, high: float, direction: int) -> str:
    if low > 0:
        return HOLDS if direction > 0 else CONTRADICTED
    if high < 0:
        return HOLDS if direction < 0 else CONTRADICTED
    return INCONCLUSIVE


def paired_effect(name: str, variant: Sequence[float], baseline: Sequence[float], direction: int,
                  unit: str = "points") -> Effect:
    """Effect of ``variant - baseline``, paired by training seed (``variant[i]`` and ``baseline[i]``
    come from networks of the same seed), with the paper's predicted sign ``direction`` (+1 / -1)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    if len(variant) != len(baseline) or not len(variant):
        raise ValueError(f"{name}: need one value per training seed on both sides, got {len(variant)} and {len(baseline)}")
    diff = np.asarray(variant, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    mean = float(diff.mean())
    if len(diff) < 2:
        return Effect(name, unit, direction, diff.tolist(), mean, math.nan, -math.inf, math.inf, INCONCLUSIVE)
    sd = float(diff.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(diff) - 1)) * sd / math.sqrt(len(diff))
    low, high = mean - half, mean + half
    return Effect(name, unit, direction, diff.tolist(), mean, sd, low, high, _verdict(low, high, direction))


def correlation_effect(name: str, rho: Sequence[float], direction: int, pairs: int, unit: str = "rho") -> Effect:
    """Effect of per-seed correlations ``rho`` (each over ``pairs`` points) against 0: the t interval of
    ``paired_effect`` over the seeds' Fisher z = atanh(rho), its mean and bounds back-transformed with
    tanh (so they stay inside [-1, 1]); ``sd`` is the seeds' sd of rho. A perfect rank correlation (z
    infinite) counts as half an adjacent swap short of it, the nearest value a Spearman rho of ``pairs``
    points can take below 1 being 1 - 12 / (pairs (pairs^2 - 1))."""
    if pairs < 3:
        raise UserError(f"{name}: a correlation interval needs at least 3 points per seed, got {pairs}")
    limit = 1.0 - 6.0 / (pairs * (pairs ** 2 - 1))
    r = np.clip(np.asarray(rho, dtype=np.float64), -limit, limit)
    z = paired_effect(name, np.arctanh(r).tolist(), [0.0] * len(r), direction, unit)
    sd = float(np.std(rho, ddof=1)) if len(rho) > 1 else math.nan
    low, high = math.tanh(z.ci_low), math.tanh(z.ci_high)
    return Effect(name, unit, direction, [float(v) for v in rho], math.tanh(z.mean), sd, low, high,
                  _verdict(low, high, direction), pairs)


def effect_from_per_seed(name: str, unit: str, direction: int, per_seed: Sequence[float], pairs: int = 0) -> Effect:
    """An effect recomputed from its recorded per-seed values (``Effect.per_seed``, ``Effect.pairs``), as
    ``paired_effect`` (a difference against 0) or ``correlation_effect`` (``pairs`` > 0) computed it."""
    if pairs:
        return correlation_effect(name, per_seed, direction, pairs, unit)
    return paired_effect(name, per_seed, [0.0] * len(per_seed), direction, unit)


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """A claim made of several effects: HOLDS only if every effect holds, CONTRADICTED if any effect
    is contradicted, else INCONCLUSIVE."""
    if not verdicts:
        return INCONCLUSIVE
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE
