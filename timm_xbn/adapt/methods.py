"""Method names -> adapters: ``create_adapter(model, "tent:lr=0.001,optimizer=adam")``.

A method spec is ``NAME`` or ``NAME:KEY=VALUE,...`` with the keyword arguments of the adapter
class; ``prior:N`` is short for ``prior:prior=N`` (likewise ``mix:N``) and ``rbn:M`` for ``rbn:momentum=M``.
"""
import inspect
from typing import Any, Dict, Tuple, Type

import torch.nn as nn

from ..utils.errors import UserError
from .base import Adapter
from .eata import EATA
from .rotta import RoTTA
from .sar import SAR
from .statistics import Batch, Mix, Norm, Prior, RobustBN, Source
from .tent import Tent

__all__ = ["METHODS", "STATEFUL_METHODS", "create_adapter", "parse_method"]

METHODS: Dict[str, Type[Adapter]] = {cls.name: cls for cls in (Source, Norm, Mix, Prior, Batch, Tent, EATA, SAR, RobustBN,
                                                                RoTTA)}
SHORTHANDS = {"prior": "prior", "mix": "prior", "rbn": "momentum"}  # NAME:VALUE -> NAME:KEY=VALUE
STATEFUL_METHODS = tuple(name for name, cls in METHODS.items() if cls.stateful)


def _convert(cls: Type[Adapter], key: str, value: str, spec: str) -> Any:
    params = inspect.signature(cls.__init__).parameters
    if key not in params or key in ("self", "model"):
        options = ", ".join(p for p in params if p not in ("self", "model")) or "none"
        raise UserError(f"{spec!r}: {cls.__name__.lower()} has no option {key!r} (options: {options})")
    kind = type(params[key].default)
    try:
        return kind(value)
    except ValueError:
        raise UserError(f"{spec!r}: {key} must be a {kind.__name__}, got {value!r}") from None


def parse_method(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"tent:lr=0.001"`` -> ``("tent", {"lr": 0.001})``; ``ValueError`` for unknown names or options."""
    name, _, rest = spec.strip().partition(":")
    if name not in METHODS:
        raise UserError(f"unknown adaptation method {name!r}; choose from {', '.join(METHODS)}")
    cls, kwargs = METHODS[name], {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq and name in SHORTHANDS and not kwargs:
            key, value = SHORTHANDS[name], key
        elif not eq:
            raise UserError(f"{spec!r}: options are KEY=VALUE, got {item!r}")
        kwargs[key.strip()] = _convert(cls, key.strip(), value.strip(), spec)
    if name in ("prior", "mix") and not kwargs.get("prior", 0.0) >= 0:
        raise UserError(f"{spec!r}: prior (the source strength N) must be >= 0")
    return name, kwargs


def create_adapter(model: nn.Module, spec: str) -> Adapter:
    """The adapter of method ``spec`` around a deep copy of ``model`` (``model`` is never changed)."""
    name, kwargs = parse_method(spec)
    return METHODS[name](model, **kwargs)
