"""Test-time adaptation as a view of the grid: every model x method on each (corruption, severity) of a
``CorruptionSource``, in an episodic or continual protocol, on an i.i.d., label-shift or mixed stream.

Each pair is read in the order of its stream (``timm_xbn.adapt.streams``: the seeded shuffle of
``EvalData.ordered`` for ``iid``, the same order as ``corruption`` and ``adabn``, so a method gives the same
numbers there). Results are written after every pair and a rerun with the same output folder skips the
cells done; in the continual protocol the stateful adapters' states are saved after every pair too
(loaded with ``weights_only=True``). A mixed stream (every pair in one shuffled stream) is one unit: a rerun
skips the (model, method)s that finished it and runs the others through all of it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..adapt.mixed import MixedPass, MixedPrep, mixed_data
from ..adapt.protocol import counts_record
from ..adapt.report import plot_adaptation
from ..adapt.streams import check_stream, stream_data, stream_record
from ..corruptions.datasets import CorruptionSource
from ..corruptions.metrics import summarize
from ..corruptions.prep import BatchPrep
from ..evaluation.data import order_record
from ..evaluation.engine import run_pass
from ..evaluation.models import weights_sha1
from ..evaluation.results import jsonable_config
from ..evaluation.store import Cell, ResultsStore
from ..utils.device import eval_mode, model_device
from .corruption import CLEAN, corruption_units
from .methods import canonical_method
from .runner import GridRunner, Unit, adapter_passes

__all__ = ["MIXED", "RESULTS_FILE", "entry_key", "evaluate_adaptation"]

RESULTS_FILE = "adapt.json"
MIXED = "mixed"


def entry_key(label: str, method: str) -> str:
    """The key of one model x method in the ``adapt`` results' ``entries``."""
    return f"{label} | {method}"


def _with_errors(cell: Mapping[str, Any]) -> dict[str, Any]:
    """A cell as one stream's result (``timm_xbn.adapt.counts_record`` of its scores and passes)."""
    return counts_record(torch.tensor(cell["scores"]), cell["forward"], cell["backward"])


def _summary(store: ResultsStore, label: str, method: str, pairs: Sequence[str],
             clean_error: Optional[float]) -> dict[str, Any]:
    runs = {pair: _with_errors(c) for pair in pairs if (c := store.get(label, method, pair)) is not None}
    errors: dict[str, dict[str, float]] = {}
    for pair, run in runs.items():
        corruption, severity = pair.split("/")
        errors.setdefault(corruption, {})[severity] = run["top1_error"]
    mixed = store.get(label, method, MIXED)
    passed = [mixed] if mixed is not None else list(runs.values())  # a mixed stream counts its passes as a whole
    count = sum(r["count"] for r in passed) or 1
    eces = [r["ece"] for r in runs.values() if r["ece"] is not None]
    return {"model": label, "method": method, "clean_error": clean_error, "errors": errors,
            **summarize(errors, clean_error), "mean_ece": sum(eces) / len(eces) if eces else None,
            "passes_per_image": {k: sum(r[k] for r in passed) / count for k in ("forward", "backward")},
            "runs": runs, **({"mixed": _with_errors(mixed)} if mixed is not None else {})}


def _csv_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per pair (and one for a whole mixed stream, corruption ``mixed``)."""
    named = [(*k.split("/"), r) for k, r in summary["runs"].items()]
    named += [(MIXED, "", summary["mixed"])] if "mixed" in summary else []
    return [{"model": summary["model"], "method": summary["method"], "corruption": corruption, "severity": severity,
             **{f: r[f] for f in ("top1_error", "top5_error", "count", "forward", "backward", "ece", "nll", "brier")}}
            for corruption, severity, r in named]


def _run_mixed(runner: GridRunner, source: CorruptionSource, seed: int, device: torch.device, progress: bool) -> None:
    """Every pending (model, method), from its state at creation, through the mixed stream of ``source``:
    a cell per pair (passes ``None``: they are counted for the stream) and one for the whole stream."""
    store = runner.store
    keys = [(label, method) for label in runner.models for method in runner.methods
            if not store.done(Cell(label, method, MIXED))]
    if not keys:
        return
    data = mixed_data(source, seed)
    prep = MixedPrep(source, device, int(source.info.get("seed", 0)))
    predictors = {entry_key(*key): runner.predictor(*key) for key in keys}
    adapters = {k: p for k, p in predictors.items() if hasattr(p, "passes")}
    start = {k: a.passes.as_dict() for k, a in adapters.items()}
    for adapter in adapters.values():
        adapter.reset()
        if adapter.needs_data:
            adapter.prepare(prep(b.images, b.targets[:, 1]) for b in data.loader() if b.images is not None)
    pairs = [f"{c}/{s}" for c, s in source.pairs]
    evaluator = MixedPass(predictors, prep, pairs)
    with eval_mode(runner.models.values()):
        result = run_pass(evaluator, data, progress=progress, description=MIXED)
    passes = adapter_passes(adapters, start)
    for (label, method), (key, split) in zip(keys, evaluator.split(result.counts).items()):
        for pair, counts in split.items():
            store.record(Cell(label, method, pair), counts)
        total = sum(split.values())
        store.record(Cell(label, method, MIXED), total, *passes.get(key, (int(total[2]), 0)))
    store.record_skipped(MIXED, result.skipped)


def evaluate_adaptation(
    models: Mapping[str, nn.Module],
    methods: Sequence[str],
    source: CorruptionSource,
    protocol: Optional[str] = None,
    clean_error: Optional[Union[float, Mapping[str, float]]] = None,
    output_dir: Optional[Union[str, Path]] = None,
    progress: bool = False,
    order_seed: int = 0,
    model_specs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    order: str = "shuffle",
    stream: str = "iid",
    dirichlet: Optional[float] = None,
    per_domain: bool = False,
) -> dict[str, Any]:
    """Top-1 error of every model x method on each pair of ``source``; returns the ``adapt`` results document
    (its ``results``: ``clean_error`` per model, ``entries`` per model x method).

    Args:
        models: label -> model (on its device); never modified (each method works on a copy).
        methods: method specs (``timm_xbn.grid.methods``), e.g. ``["source", "norm", "tent"]``.
        protocol: ``"episodic"`` (default: every adapter reset before each pair) or ``"continual"``
            (one stream through the pairs in ``source.pairs`` order, never reset).
        clean_error: known clean top-1 error (%) of the source models (relative mCE), one for all
            or per label; otherwise measured on the source's clean data when it has some.
        output_dir: write ``adapt.json`` / ``adapt.csv`` / ``adapt.png`` there after every pair; resume from them.
        order_seed: seed of the stream (its shuffled order, its Dirichlet draw); the on-the-fly corruptions
            keep their own seed, ``source``'s.
        order: ``"shuffle"`` (default) or ``"folder"``, the order in which each pair's images are read (iid).
        stream: ``"iid"``, ``"label-shift"`` (Dirichlet ``dirichlet`` label order) or ``"mixed"`` (every pair
            shuffled together into one stream; no ``protocol``; its entries hold the errors per pair under
            ``runs`` and the whole stream's under ``mixed``), recorded.
        per_domain: a label-shift stream drawn anew for each (corruption, severity), as RoTTA draws per domain.
    """
    check_stream(stream, dirichlet, protocol, order, per_domain)
    if stream != "mixed":
        protocol = protocol or "episodic"
    methods = [canonical_method(m) for m in methods]
    run = {"dataset": source.source, "source": source.kind, "protocol": protocol, **order_record(order, order_seed),
           **stream_record(stream, dirichlet, per_domain), "seed": int(source.info.get("seed", 0)),
           "data_config": jsonable_config(source.data_config), "batch_size": source.batch_size}
    provenance = {label: {"weights_sha1": weights_sha1(m), "spec": dict((model_specs or {}).get(label, {})) or None}
                  for label, m in models.items()}
    store = ResultsStore("adapt", run, provenance, output_dir, RESULTS_FILE)
    pairs = [f"{c}/{s}" for c, s in source.pairs]
    known = {label: (clean_error.get(label) if isinstance(clean_error, Mapping) else clean_error) for label in models}

    def clean(label: str) -> Optional[float]:
        cell = store.get(label, "source", CLEAN)
        value = known[label] if known[label] is not None else (None if cell is None else 100.0 - cell["top1"])
        return None if value is None else float(value)

    def document() -> dict[str, Any]:
        return store.document({"methods": list(methods), "pairs": pairs}, {
            "clean_error": {label: clean(label) for label in models},
            "entries": {entry_key(label, m): {**_summary(store, label, m, pairs, clean(label)), **learning_rate(label, m)}
                        for label in models for m in methods}})

    def write(_: str = "") -> dict[str, Any]:
        results = document()
        store.write(results, plot=plot_adaptation,
                    csv_rows=[row for entry in results["results"]["entries"].values() for row in _csv_rows(entry)])
        return results

    runner = GridRunner(models, methods, store, protocol=protocol or "episodic", progress=progress, on_unit=write)

    def learning_rate(label: str, method: str) -> dict[str, Any]:
        """The learning-rate rule and rate of a gradient adapter (TENT, EATA, SAR), as it ran."""
        adapter = runner.predictor(label, method)
        return adapter.lr_record() if hasattr(adapter, "lr_record") else {}

    device = model_device(next(iter(models.values())))
    clean_data = source.clean_data()
    todo = [label for label in models if known[label] is None]
    if clean_data is not None and todo:
        runner.run([Unit(CLEAN, clean_data, BatchPrep(source.data_config, device), methods=["source"], models=todo)])
    if stream == "mixed":
        _run_mixed(runner, source, order_seed, device, progress)
    else:
        runner.run(corruption_units(source, device, order, order_seed,
                                    stream=lambda data, pair: stream_data(data, stream, order_seed, dirichlet, order,
                                                                          domain=pair if per_domain else None)))
    return write()
