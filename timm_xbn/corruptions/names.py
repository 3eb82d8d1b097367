"""Corruption names and severities of ImageNet-C, with parsing that fails loudly on typos."""
from typing import Iterable, Optional, Sequence

from ..utils.errors import UserError

# The 15 benchmark corruptions, in the order of Hendrycks & Dietterich (2019).
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
# Held-out corruptions shipped with ImageNet-C; evaluated when present, never part of mCE.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


def check_corruption(name: str, valid: Sequence[str] = ALL_CORRUPTIONS) -> str:
    """Return ``name`` if it is a known corruption, else raise a ValueError listing the valid ones."""
    if name not in valid:
        raise UserError(f"unknown corruption {name!r}; valid names: {', '.join(valid)}")
    return name


def check_severity(severity: int | str) -> int:
    """Return ``severity`` as an int if it is an integer in 1..5, else raise ValueError."""
    text = str(severity).strip()
    if isinstance(severity, bool) or not text.isdigit() or int(text) not in SEVERITIES:
        raise UserError(f"severity must be an integer in 1..5, got {severity!r}")
    return int(text)


def parse_corruptions(spec: Optional[str | Iterable[str]], valid: Sequence[str] = ALL_CORRUPTIONS) -> Optional[list[str]]:
    """Parse ``"fog,snow"`` (or a list) into validated names; ``None``/empty means "all present"."""
    if spec is None:
        return None
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    return [check_corruption(s, valid) for s in dict.fromkeys(items)] or None


def parse_severities(spec: Optional[str | Iterable[int]]) -> Optional[list[int]]:
    """Parse ``"1,3,5"`` (or a list) into validated severities; ``None``/empty means "all present"."""
    if spec is None:
        return None
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    return sorted({check_severity(s) for s in items}) or None
