"""ImageNet-C style evaluation as a view of the grid: top-1 errors on every (corruption, severity) of a
``CorruptionSource``, CE, mCE and relative mCE, optionally with the BN statistics re-estimated on each pair.

The grid: models x one method (``source``, or the ``adapt`` method: ``norm``, ``prior:N``, ``batch``, ...)
on one unit per pair, plus the clean data (``source`` only) for the clean error. Each model gets its own
results file, ``corruption-<label>.json`` (what a model card reads), written after every pair.

Every pass reads its images in one order, a seeded shuffle by default (``EvalData.ordered``), and on-the-fly
corruptions are keyed by the image (``corruptions.seeding``): the same model, data, method and order give the
same numbers in ``adabn``, ``corruption`` and ``adapt``, since they are one grid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch.nn as nn

from ..corruptions.datasets import CorruptionSource
from ..corruptions.metrics import summarize
from ..corruptions.plots import plot_corruption_heatmap
from ..corruptions.prep import BatchPrep
from ..evaluation.data import order_record
from ..evaluation.models import weights_sha1
from ..evaluation.results import jsonable_config
from ..evaluation.store import ResultsStore, safe_name
from ..utils.device import model_device
from ..utils.distributed import is_main_process
from ..utils.errors import UserError
from .adabn import require_bn_statistics
from .methods import canonical_method
from .robustbench import write_robustbench
from .runner import GridRunner, Unit

__all__ = ["CLEAN", "corruption_units", "evaluate_corruptions", "parse_adapt", "results_path"]

CLEAN = "clean"
RESULTS_FILE = "corruption-{model}.json"
ADAPT_METHODS = ("norm", "prior", "batch", "mix")


def parse_adapt(spec: Optional[str]) -> Optional[str]:
    """``--adapt`` -> its grid method (``full`` is 0.1's name of ``norm``); ``None`` / ``"none"`` -> no adaptation."""
    if spec is None or spec in ("", "none"):
        return None
    name = spec.partition(":")[0]
    try:
        method = canonical_method(spec)
    except UserError:
        method = None
    if method is None or method.partition(":")[0] not in ADAPT_METHODS:
        raise UserError(f"--adapt must be norm, batch, prior:N or mix:N (N >= 0, the source strength), got {spec!r}"
                        + (f" ({name!r} is a test-time adaptation method: use xbn-eval adapt)" if method else ""))
    return method


def results_path(output_dir: Union[str, Path], label: str, suffix: str = ".json") -> Path:
    """``<output_dir>/corruption-<label><suffix>`` with the label made file-name safe."""
    return Path(output_dir) / f"corruption-{safe_name(label)}{suffix}"


def corruption_units(source: CorruptionSource, device, order: str, order_seed: int, stream=None) -> list[Unit]:
    """One unit per (corruption, severity) of ``source``, in ``source.pairs`` order, read in ``order``
    (``stream(data, pair)`` instead, when given) and corrupted / normalised on ``device``."""
    seed = int(source.info.get("seed", 0))
    units = []
    for corruption, severity in source.pairs:
        data = source.pair_data(corruption, severity)
        pair = f"{corruption}/{severity}"
        units.append(Unit(pair, stream(data, pair) if stream else data.ordered(order, order_seed),
                          BatchPrep(source.data_config, device, (corruption, severity) if source.on_device else None, seed)))
    return units


def _model_results(label: str, source: CorruptionSource, store: ResultsStore, method: str,
                   clean_error: Optional[float]) -> dict[str, Any]:
    errors: dict[str, dict[str, float]] = {}
    top5: dict[str, dict[str, float]] = {}
    calibration: dict[str, dict[str, dict[str, Optional[float]]]] = {k: {} for k in ("ece", "nll", "brier")}
    for corruption, severity in source.pairs:
        cell = store.get(label, method, f"{corruption}/{severity}")
        if cell is not None:
            errors.setdefault(corruption, {})[str(severity)] = 100.0 - cell["top1"]
            top5.setdefault(corruption, {})[str(severity)] = 100.0 - cell["top5"]
            for k, values in calibration.items():
                values.setdefault(corruption, {})[str(severity)] = cell[k]
    clean = store.get(label, "source", CLEAN)
    if clean_error is None and clean is not None:
        clean_error = 100.0 - clean["top1"]
    eces = [v for sev in calibration["ece"].values() for v in sev.values() if v is not None]
    return {"clean_error": clean_error, "errors": errors, **summarize(errors, clean_error),
            "not_found": list(source.missing), "top5_errors": top5, **calibration,
            "mean_ece": sum(eces) / len(eces) if eces else None, "batch_size": source.batch_size}


def evaluate_corruptions(
    models: Mapping[str, nn.Module],
    source: CorruptionSource,
    adapt: Optional[str] = None,
    clean_error: Optional[Union[float, Mapping[str, float]]] = None,
    output_dir: Optional[Union[str, Path]] = None,
    progress: bool = False,
    model_specs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    order: str = "shuffle",
    order_seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Top-1 error of each model on each (corruption, severity) of ``source``; returns
    ``{label: corruption results document}`` (its ``results``: errors, CE, mCE, relative mCE, ...).

    Args:
        models: label -> model (on its device), evaluated side by side; never modified.
        source: ``ImageNetCFolders``, ``CifarC`` or ``OnTheFly``.
        adapt: ``"norm"``, ``"prior:N"``, ``"mix:N"`` or ``"batch"``: re-estimate BN statistics on each pair
            first (on a copy), or ``None``.
        clean_error: known clean top-1 error (%) for relative mCE, one for all models or per label;
            otherwise the clean data of ``source`` (if any) is evaluated, without adaptation.
        output_dir: write ``corruption-<label>.json`` / ``.csv`` / ``.png`` there after every pair;
            pairs already in those files are not evaluated again (resume); at the end RobustBench's
            ``robustbench/<label>.json`` and ``unaggregated_results.csv`` (``grid.robustbench``).
        model_specs: optional label -> how the model was built (name, checkpoint, ...), recorded.
        order, order_seed: the order in which every pass reads its images (``EvalData.ordered``), recorded.

    Under torch.distributed every rank passes the same arguments; rank 0 writes the files.
    """
    method = parse_adapt(adapt) or "source"
    if not models:
        raise UserError("no models given")
    if method != "source":
        require_bn_statistics(models)
    run = {"dataset": source.source, "source": source.kind, "adapt": None if method == "source" else method,
           "seed": int(source.info.get("seed", 0)), **order_record(order, order_seed),
           "data_config": jsonable_config(source.data_config)}
    provenance = {label: {"weights_sha1": weights_sha1(m), "spec": dict((model_specs or {}).get(label, {})) or None}
                  for label, m in models.items()}
    store = ResultsStore("corruption", run, provenance, output_dir, RESULTS_FILE)
    known = {label: (clean_error.get(label) if isinstance(clean_error, Mapping) else clean_error) for label in models}
    known = {label: None if v is None else float(v) for label, v in known.items()}
    grid = {"methods": [method], "pairs": [f"{c}/{s}" for c, s in source.pairs]}

    def document(label: str) -> dict[str, Any]:
        return store.document(grid, _model_results(label, source, store, method, known[label]), model=label)

    def write(_: str = "") -> None:
        for label in models:
            results = document(label)
            store.write(results, plot=plot_corruption_heatmap, csv_rows=[
                {"corruption": c, "severity": s, "top1_error": 100.0 - cell["top1"], "top5_error": 100.0 - cell["top5"],
                 **{k: cell[k] for k in ("correct1", "correct5", "count", "ece", "nll", "brier")}}
                for c, s in source.pairs if (cell := store.get(label, method, f"{c}/{s}")) is not None])

    device = model_device(next(iter(models.values())))
    units = []
    clean_data = source.clean_data()
    todo = [label for label in models if known[label] is None]
    if clean_data is not None and todo:
        units.append(Unit(CLEAN, clean_data.ordered(order, order_seed), BatchPrep(source.data_config, device),
                          methods=["source"], models=todo))
    units += corruption_units(source, device, order, order_seed)
    GridRunner(models, [method], store, progress=progress, on_unit=write).run(units)
    write()
    documents = {label: document(label) for label in models}
    if output_dir is not None and is_main_process():
        write_robustbench(Path(output_dir) / "robustbench", documents)
    return documents
