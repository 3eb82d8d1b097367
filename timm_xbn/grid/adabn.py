"""Accuracy before and after adapting BN statistics to target data (AdaBN and its variants), as a view
of the grid: models x (``source``, the method) on one unit, the target data.

The methods: ``norm`` (AdaBN: the statistics of the calibration data, the target data itself by default),
``mix:N`` (those mixed once with the source statistics), ``prior:N`` (Schneider et al.: the source mixed
with each test batch's) and ``batch`` (prediction-time BN). The last two need no calibration pass.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch.nn as nn

from ..evaluation.data import EvalData, order_record
from ..evaluation.models import weights_sha1
from ..evaluation.results import jsonable_config
from ..evaluation.store import ResultsStore
from ..utils.errors import UserError
from ..utils.norms import bns_with_running_stats
from .methods import canonical_method
from .runner import GridRunner, Unit, unit_inputs

__all__ = ["MODES", "RESULTS_FILE", "adabn_method", "evaluate_adabn", "require_bn_statistics"]

RESULTS_FILE = "adabn.json"
TARGET = "target"
MODES = ("norm", "prior", "mix", "batch")


def adabn_method(mode: str, prior: float = 16.0) -> str:
    """The grid method of an AdaBN ``mode`` (``full``, 0.1's name of ``norm``, is accepted) and source strength."""
    name = canonical_method(mode) if mode == "full" else mode
    if name not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return canonical_method(f"{name}:{float(prior)!r}" if name in ("prior", "mix") else name)


def require_bn_statistics(models: Mapping[str, nn.Module]) -> None:
    """``ValueError`` naming the first model without BatchNorm running statistics (nothing to re-estimate)."""
    for label, model in models.items():
        if not bns_with_running_stats(model):
            raise UserError(f"{label}: {type(model).__name__} has no BatchNorm layers with running statistics "
                            "to recalibrate")


def evaluate_adabn(
    models: Mapping[str, nn.Module],
    data: EvalData,
    mode: str = "norm",
    prior: float = 16.0,
    calib_data: Optional[EvalData] = None,
    calib_batches: Optional[int] = None,
    output_dir: Optional[Union[str, Path]] = None,
    progress: bool = False,
    order: str = "shuffle",
    order_seed: int = 0,
) -> Dict[str, Any]:
    """Top-1/top-5 of each model before and after BN recalibration; returns the ``adabn`` results document.

    Args:
        models: label -> model (on its device); they are not modified (adapted copies are made).
        data: target data to evaluate on.
        mode: ``"norm"`` (AdaBN), ``"prior"``, ``"mix"`` or ``"batch"`` (module docstring).
        prior: the source strength N of ``prior`` and ``mix``.
        calib_data: data to recalibrate on (default: ``data``); ``calib_batches`` limits it.
        output_dir: write ``adabn.json`` and ``adabn.csv`` there (a rerun with the same folder resumes).
        order, order_seed: the order in which ``data`` and ``calib_data`` are read
            (``EvalData.ordered``; every mode depends on how the images are batched, ``norm``
            through the batch statistics of the earlier BNs in its calibration pass), recorded.
    """
    method = adabn_method(mode, prior)
    require_bn_statistics(models)
    data = data.ordered(order, order_seed)
    calib = calib_data.ordered(order, order_seed) if calib_data is not None else data
    run = {"dataset": data.source, "files": len(data), "data_config": jsonable_config(data.data_config),
           **order_record(order, order_seed),
           "calibration": {"dataset": calib.source, "max_batches": calib_batches, "batch_size": calib.batch_size}}
    store = ResultsStore("adabn", run, {label: {"weights_sha1": weights_sha1(m)} for label, m in models.items()},
                         output_dir, RESULTS_FILE)
    name = method.partition(":")[0]
    GridRunner(models, ["source", method], store, progress=progress).run(
        [Unit(TARGET, data, adaptation_batches=lambda: unit_inputs(calib, max_batches=calib_batches))])

    entries = {}
    for label in models:
        before, after = store.get(label, "source", TARGET), store.get(label, method, TARGET)
        entries[label] = {"mode": name, "before_top1": before["top1"], "after_top1": after["top1"],
                          "before_top5": before["top5"], "after_top5": after["top5"], "count": before["count"],
                          **{f"{tag}_{k}": cell[k] for tag, cell in (("before", before), ("after", after))
                             for k in ("ece", "nll", "brier")},
                          **({"prior": float(prior)} if name in ("prior", "mix") else {})}
    results = store.document({"methods": ["source", method], "pairs": [TARGET]}, entries)
    store.write(results, csv_rows=[{"model": label, **entry} for label, entry in entries.items()])
    return results
