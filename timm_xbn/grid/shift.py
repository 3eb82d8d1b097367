"""Distribution-shift sets (ImageNet-R, -A, -ReaL, -V2, -Sketch) as a view of the grid: every model x method
(``source``, ``norm``, ``prior:N``, test-time adapters, ...) on one unit per set, each scored by its own rule
(``timm_xbn.evaluation.shift``): top-1 / top-5 error, and ECE, NLL and Brier score where the set has single labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import torch.nn as nn

from ..evaluation.data import EvalData, order_record
from ..evaluation.models import weights_sha1
from ..evaluation.results import jsonable_config
from ..evaluation.store import ResultsStore
from ..utils.errors import UserError
from .methods import canonical_method
from .runner import GridRunner, Scorer, Unit

__all__ = ["RESULTS_FILE", "evaluate_shift"]

RESULTS_FILE = "shift.json"
FIELDS = ("top1", "top5", "ece", "nll", "brier", "count")


def evaluate_shift(
    models: Mapping[str, nn.Module],
    methods: Sequence[str],
    sets: Mapping[str, Tuple[EvalData, Scorer]],
    output_dir: Optional[Union[str, Path]] = None,
    progress: bool = False,
    order: str = "shuffle",
    order_seed: int = 0,
    model_specs: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> dict[str, Any]:
    """Every model x method on every shift set; returns the ``shift`` results document, whose ``results`` hold
    per ``"<model> | <method>"`` and set the top-1 / top-5 accuracy (%), ECE (%), NLL, Brier score and images.

    Args:
        models: label -> model (on its device); never changed.
        methods: grid methods, e.g. ``["source", "norm", "tent"]``.
        sets: set name -> (data, scorer), as ``timm_xbn.evaluation.create_shift_data`` gives them.
        output_dir: write ``shift.json`` / ``.csv`` there after every set (a rerun resumes).
        order, order_seed: the order in which each set is read (``EvalData.ordered``), recorded.
    """
    methods = [canonical_method(m) for m in methods]
    if not sets:
        raise UserError("give at least one shift set")
    first = next(iter(sets.values()))[0]
    run = {"sets": {name: {"dataset": data.source, "files": len(data)} for name, (data, _) in sets.items()},
           "data_config": jsonable_config(first.data_config), "batch_size": first.batch_size,
           **order_record(order, order_seed)}
    provenance = {label: {"weights_sha1": weights_sha1(m), "spec": dict((model_specs or {}).get(label, {})) or None}
                  for label, m in models.items()}
    store = ResultsStore("shift", run, provenance, output_dir, RESULTS_FILE)

    def document() -> dict[str, Any]:
        results = {f"{label} | {method}": {name: {k: cell[k] for k in FIELDS} for name in sets
                                           if (cell := store.get(label, method, name)) is not None}
                   for label in models for method in methods}
        return store.document({"methods": methods, "pairs": list(sets)}, results)

    def write(_: str = "") -> dict[str, Any]:
        results = document()
        store.write(results, csv_rows=[{"model": label, "method": method, "set": name, **{k: cell[k] for k in FIELDS}}
                                       for label in models for method in methods for name in sets
                                       if (cell := store.get(label, method, name)) is not None])
        return results

    GridRunner(models, methods, store, progress=progress, on_unit=write).run(
        [Unit(name, data.ordered(order, order_seed), scorer=scorer) for name, (data, scorer) in sets.items()])
    return write()
