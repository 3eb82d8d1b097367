"""Every statistics method of the grid by one name: ``source``, ``norm`` (AdaBN), ``mix:N``, ``prior:N``,
``batch``, ``perturb:DELTA,SEED`` (the paper's Eq. 5) and the test-time adapters (``rbn``, ``tent``,
``eata``, ``sar``, ...; ``timm_xbn.adapt.METHODS``), each with its options as ``NAME:KEY=VALUE,...``.

``method_predictor(model, spec)`` gives the module that predicts a batch under the method: the model
itself for ``source``, a ``Perturbed`` view of it for ``perturb`` (the weights are shared, the BN
statistics disturbed for each forward only), an ``Adapter`` around a copy for the others. The caller's
model is never changed.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional, Sequence

import torch.nn as nn

from ..adapt.methods import METHODS, create_adapter, parse_method
from ..evaluation.sweep import Perturbed
from ..utils.errors import UserError

__all__ = ["ALIASES", "PERTURB", "Perturbation", "canonical_method", "method_predictor", "method_names",
           "parse_perturbation", "perturbation_spec", "is_stateful"]

PERTURB = "perturb"
#: 0.1's spellings of a method -> its one name (``adabn --mode full`` and ``corruption --adapt full`` were AdaBN).
ALIASES = {"full": "norm"}


class Perturbation(NamedTuple):
    """Eq. 5's noise magnitude and seed."""

    delta: float
    seed: int


def method_names() -> list[str]:
    """The method names the grid knows (options aside)."""
    return [*METHODS, PERTURB]


def canonical_method(spec: str) -> str:
    """``spec`` with a 0.1 alias replaced by the method's one name (with a ``DeprecationWarning``); checked."""
    name, sep, rest = spec.strip().partition(":")
    if name in ALIASES:
        warnings.warn(f"method {name!r} is now called {ALIASES[name]!r}", DeprecationWarning, stacklevel=2)
        name = ALIASES[name]
    spec = f"{name}{sep}{rest}"
    if name == PERTURB:
        parse_perturbation(spec)
    else:
        parse_method(spec)
    return spec


def parse_perturbation(spec: str) -> Perturbation:
    """``"perturb:0.5,3"`` or ``"perturb:delta=0.5,seed=3"`` -> ``Perturbation(0.5, 3)``."""
    name, _, rest = spec.partition(":")
    items = [item.partition("=") for item in filter(None, rest.split(","))]
    values = {key.strip() if eq else ("delta", "seed")[i]: (value if eq else key).strip()
              for i, (key, eq, value) in enumerate(items[:2])}
    if name != PERTURB or len(items) != 2 or set(values) != {"delta", "seed"}:
        raise UserError(f"{spec!r}: a perturbation is perturb:DELTA,SEED (e.g. perturb:0.5,0)")
    try:
        delta, seed = float(values["delta"]), int(values["seed"])
    except ValueError:
        raise UserError(f"{spec!r}: DELTA is a number in [0, 1) and SEED an integer") from None
    if not 0 <= delta < 1:
        raise UserError(f"noise magnitude delta must be in [0, 1), got {delta} ({spec!r})")
    return Perturbation(delta, seed)


def perturbation_spec(delta: float, seed: int) -> str:
    """The method name of one (delta, seed) setting, e.g. ``perturb:0.5,3``."""
    return f"{PERTURB}:{float(delta)!r},{int(seed)}"


def is_stateful(spec: str) -> bool:
    """Whether the method's updates carry over from batch to batch (results depend on the stream order)."""
    name = spec.partition(":")[0]
    return name != PERTURB and METHODS[name].stateful


def method_predictor(model: nn.Module, spec: str, targets: Optional[Sequence[str]] = None) -> nn.Module:
    """The module predicting under method ``spec`` (see the module docstring); ``targets`` are the BNs
    that ``perturb`` disturbs."""
    if spec == "source":
        return model
    if spec.partition(":")[0] == PERTURB:
        delta, seed = parse_perturbation(spec)
        return Perturbed(model, list(targets or ()), delta, seed)
    return create_adapter(model, spec)

