"""ImageNet-C metrics: corruption error (CE), mean CE (mCE) and relative mCE, AlexNet-normalised.

Errors are top-1 errors in percent. Following Hendrycks & Dietterich (2019):

* ``CE_c = sum_s E(model, c, s) / sum_s E(AlexNet, c, s)`` over severities 1..5, in percent;
* ``mCE`` = the mean of ``CE_c`` over the 15 benchmark corruptions;
* relative ``CE_c = sum_s (E(model, c, s) - E(model, clean)) / sum_s (E(AlexNet, c, s) - E(AlexNet, clean))``.

A metric is only computed from complete data: ``CE_c`` needs all five severities of ``c`` and mCE
all 15 corruptions. ``summarize`` reports what is missing instead of averaging over fewer.
"""
from __future__ import annotations

from statistics import fmean
from typing import Any, Mapping, Optional

from ..utils.errors import UserError
from .names import CORRUPTIONS, SEVERITIES

__all__ = [
    "ALEXNET_CLEAN_ERROR", "ALEXNET_ERRORS", "corruption_error", "mean_corruption_error",
    "missing_pairs", "relative_corruption_error", "summarize",
]

# AlexNet top-1 error (%) per severity 1..5: the published ImageNet-C normalisation.
ALEXNET_ERRORS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (69.528, 82.542, 93.554, 98.138, 99.452),
    "shot_noise": (71.224, 85.108, 93.574, 98.182, 99.146),
    "impulse_noise": (78.374, 89.808, 94.870, 98.720, 99.548),
    "defocus_blur": (65.624, 73.202, 85.036, 91.364, 94.714),
    "glass_blur": (64.308, 75.054, 88.806, 91.622, 93.344),
    "motion_blur": (58.430, 70.048, 82.108, 89.750, 92.638),
    "zoom_blur": (70.008, 76.992, 80.784, 84.198, 87.198),
    "snow": (71.726, 88.392, 86.468, 91.870, 94.952),
    "frost": (61.390, 79.734, 88.790, 89.942, 93.430),
    "fog": (67.474, 76.050, 84.378, 87.260, 94.500),
    "brightness": (45.140, 48.502, 54.048, 62.166, 72.440),
    "contrast": (64.548, 76.150, 88.874, 97.760, 99.270),
    "elastic_transform": (52.596, 70.116, 55.686, 64.076, 80.554),
    "pixelate": (52.218, 54.620, 73.728, 87.092, 91.262),
    "jpeg_compression": (51.002, 54.718, 57.294, 65.458, 74.778),
}
ALEXNET_CLEAN_ERROR = 43.478  # torchvision AlexNet, top-1 56.522 %


def _per_severity(errors: Mapping[Any, float], corruption: str) -> list[float]:
    """``errors`` keyed by severity (int or str) -> the five errors in severity order; all needed."""
    by_severity = {int(k): float(v) for k, v in errors.items()}
    absent = [s for s in SEVERITIES if s not in by_severity]
    if absent:
        raise UserError(f"CE of {corruption} needs all severities 1-5; missing {absent}")
    return [by_severity[s] for s in SEVERITIES]


def _baseline(corruption: str, baseline: Optional[Mapping[str, tuple[float, ...]]]) -> tuple[float, ...]:
    table = ALEXNET_ERRORS if baseline is None else baseline
    if corruption not in table:
        raise UserError(f"no baseline errors for {corruption!r}; CE is defined for: {', '.join(table)}")
    return table[corruption]


def corruption_error(errors: Mapping[Any, float], corruption: str,
                     baseline: Optional[Mapping[str, tuple[float, ...]]] = None) -> float:
    """CE (%) of one corruption from its top-1 errors (%) at severities 1..5."""
    return 100.0 * sum(_per_severity(errors, corruption)) / sum(_baseline(corruption, baseline))


def relative_corruption_error(errors: Mapping[Any, float], clean_error: float, corruption: str,
                              baseline: Optional[Mapping[str, tuple[float, ...]]] = None,
                              baseline_clean_error: float = ALEXNET_CLEAN_ERROR) -> float:
    """Relative CE (%): the error added by the corruption, relative to AlexNet's added error."""
    gap = sum(e - clean_error for e in _per_severity(errors, corruption))
    return 100.0 * gap / sum(e - baseline_clean_error for e in _baseline(corruption, baseline))


def mean_corruption_error(ce: Mapping[str, float], corruptions: tuple[str, ...] = CORRUPTIONS) -> float:
    """Mean of the CEs of all ``corruptions`` (the 15 benchmark ones); every one is needed."""
    absent = [c for c in corruptions if c not in ce]
    if absent:
        raise UserError(f"mCE needs the CE of all {len(corruptions)} corruptions; missing {', '.join(absent)}")
    return fmean(float(ce[c]) for c in corruptions)


def missing_pairs(errors: Mapping[str, Mapping[Any, float]], corruptions: tuple[str, ...] = CORRUPTIONS) -> list[str]:
    """What the benchmark lacks: ``"fog"`` for an absent corruption, ``"fog/3"`` for an absent severity."""
    missing = []
    for c in corruptions:
        present = {int(s) for s in errors.get(c, {})}
        if not present:
            missing.append(c)
        else:
            missing.extend(f"{c}/{s}" for s in SEVERITIES if s not in present)
    return missing


def summarize(errors: Mapping[str, Mapping[Any, float]], clean_error: Optional[float] = None) -> dict[str, Any]:
    """CE per complete benchmark corruption, mCE, their relative versions (when ``clean_error`` is
    known), mean error, completeness and the missing (corruption/severity) entries.

    Metrics that need absent data are ``None``; corruptions outside the 15 are ignored here.
    """
    missing = missing_pairs(errors)
    complete_set = [c for c in CORRUPTIONS if c in errors and not any(m == c or m.startswith(c + "/") for m in missing)]
    ce = {c: corruption_error(errors[c], c) for c in complete_set}
    rel = {c: relative_corruption_error(errors[c], clean_error, c) for c in complete_set} if clean_error is not None else {}
    complete = not missing
    return {
        "ce": ce,
        "mce": mean_corruption_error(ce) if complete else None,
        "relative_ce": rel,
        "relative_mce": mean_corruption_error(rel) if complete and clean_error is not None else None,
        "mean_error": fmean(float(v) for c in CORRUPTIONS for v in errors[c].values()) if complete else None,
        "complete": complete,
        "missing": missing,
    }
