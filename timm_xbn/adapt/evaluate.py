"""Test-time adaptation over a ``CorruptionSource``: every model x method on each (corruption, severity).

All adapters share each decoded batch (``CorruptionPass`` / ``run_pass`` of ``timm_xbn.corruptions``).
Each pair is read in the evaluation order of ``EvalData.ordered``: a seeded shuffle by default
(class-sorted folders would otherwise give one-class batches), the same order as
``evaluate_corruptions`` and ``evaluate_adabn``, so a method gives the same numbers there. Results are written after every pair and a rerun with the same output folder skips the
pairs done (resume at pair granularity); in the continual protocol the state of the TENT / EATA /
SAR adapters is saved after every pair too (``adapt-state/``, loaded with ``weights_only=True``).
A mixed stream (``stream="mixed"``, every pair in one shuffled stream) is one unit: a rerun skips the
methods that finished it and runs the others through all of it.

Sharding under torchrun: the statistics methods (source, norm, prior, batch) give the same numbers
as one process, since each batch holds the same images and norm's statistics are all-reduced. TENT,
EATA, SAR and rbn update the model after every batch, in stream order; under torchrun each rank would adapt
its own copy on every world-th batch, i.e. ``world`` independent, shorter streams: a different
method whose numbers depend on the world size. They are therefore refused when ``world > 1``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..corruptions.evaluate import BatchPrep, CorruptionPass
from ..corruptions.datasets import CorruptionSource
from ..corruptions.metrics import summarize
from ..evaluation.data import order_record
from ..evaluation.engine import run_pass
from ..evaluation.models import weights_sha1
from ..utils.files import atomic_write
from ..evaluation.results import jsonable_config, load_results, make_results, write_csv, write_json_atomic
from ..evaluation.sweep import Setting
from ..utils.device import model_device
from ..utils.distributed import all_reduce_sum, is_main_process, world_info
from .base import Adapter
from .methods import STATEFUL_METHODS, create_adapter, parse_method
from .mixed import MixedPass, MixedPrep, mixed_data
from .protocol import check_protocol, counts_record
from .streams import check_stream, stream_data, stream_record

__all__ = ["RESULTS_FILE", "entry_key", "evaluate_adaptation"]

RESULTS_FILE = "adapt.json"
STATE_DIR = "adapt-state"
CLEAN = "clean"
MIXED = "mixed"


def entry_key(label: str, method: str) -> str:
    """The results key of one model x method."""
    return f"{label} | {method}"


def _state_path(out: Path, key: str) -> Path:
    return out / STATE_DIR / (re.sub(r"[^A-Za-z0-9._+=-]", "_", key) + ".pt")


def _summary(label: str, method: str, pairs: Sequence[tuple[str, int]], runs: Mapping[str, Any],
             clean_error: Optional[float], mixed: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    errors: dict[str, dict[str, float]] = {}
    for corruption, severity in pairs:
        run = runs.get(f"{corruption}/{severity}")
        if run is not None:
            errors.setdefault(corruption, {})[str(severity)] = run["top1_error"]
    passed = [mixed] if mixed is not None else list(runs.values())  # a mixed stream counts its passes as a whole
    count = sum(r["count"] for r in passed) or 1
    return {"model": label, "method": method, "clean_error": clean_error, "errors": errors,
            **summarize(errors, clean_error),
            "passes_per_image": {k: sum(r[k] for r in passed) / count for k in ("forward", "backward")},
            "runs": dict(runs), **({"mixed": dict(mixed)} if mixed is not None else {})}


def _csv_rows(label: str, method: str, runs: Mapping[str, Any], mixed: Optional[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per pair (and one for a whole mixed stream, corruption ``mixed``)."""
    named = [(*k.split("/"), r) for k, r in runs.items()] + ([("mixed", "", mixed)] if mixed is not None else [])
    return [{"model": label, "method": method, "corruption": corruption, "severity": severity,
             **{f: r[f] for f in ("top1_error", "top5_error", "count", "forward", "backward")}}
            for corruption, severity, r in named]


def _passes(adapters: Mapping[str, Adapter], start: Mapping[str, Mapping[str, int]]) -> list[tuple[int, int]]:
    """(forward, backward) samples of each adapter since ``start``, summed over ranks."""
    return [tuple(p) for p in all_reduce_sum(torch.tensor(
        [[a.passes.forward - start[k]["forward"], a.passes.backward - start[k]["backward"]] for k, a in adapters.items()],
        dtype=torch.int64)).tolist()]


def _adapt_mixed(adapters: Mapping[str, Adapter], source: CorruptionSource, seed: int, device: torch.device,
                 progress: bool, runs: dict[str, Any], mixed: dict[str, Any]) -> None:
    """Every adapter, from its state at creation, through the mixed stream of ``source`` (``mixed_data``):
    fills ``runs[key]`` with the counts per pair and ``mixed[key]`` with the whole stream's."""
    if not adapters:
        return
    data = mixed_data(source, seed)
    prep = MixedPrep(source, device, int(source.info.get("seed", 0)))
    start = {key: a.passes.as_dict() for key, a in adapters.items()}
    for adapter in adapters.values():
        adapter.reset()
        if adapter.needs_data:
            adapter.prepare(prep(b.images, b.targets[:, 1]) for b in data.loader() if b.images is not None)
    evaluator = MixedPass(adapters, prep, [f"{c}/{s}" for c, s in source.pairs])
    result = run_pass(evaluator, data, progress=progress, description=MIXED)
    for (key, split), (fwd, bwd) in zip(evaluator.split(result.counts).items(), _passes(adapters, start)):
        runs[key] = {pair: counts_record(counts, None, None) for pair, counts in split.items()}
        mixed[key] = counts_record(sum(split.values()), fwd, bwd)


def _check_same_run(previous: Mapping[str, Any], meta: Mapping[str, Any], path: Path) -> None:
    for key, value in meta.items():  # a file without the key (an older version's) is another run too
        if previous.get(key) != value:
            raise ValueError(f"{path} holds results for {key}={previous.get(key)!r}, this run has {key}={value!r}; "
                             "use another output folder")


def _clean_errors(models: Mapping[str, nn.Module], source: CorruptionSource, known, progress: bool) -> dict:
    """Clean top-1 error (%) of each source model: given, or measured on the source's clean data."""
    clean = {label: (known.get(label) if isinstance(known, Mapping) else known) for label in models}
    data = source.clean_data()
    todo = {label: m for label, m in models.items() if clean[label] is None}
    if data is not None and todo:
        prep = BatchPrep(source.data_config, model_device(next(iter(todo.values()))))
        adapters = {label: create_adapter(m, "source") for label, m in todo.items()}
        result = run_pass(CorruptionPass(adapters, prep), data, progress=progress, description=CLEAN)
        clean.update({label: counts_record(result.counts[Setting(label).key], 0, 0)["top1_error"] for label in todo})
    return {label: None if v is None else float(v) for label, v in clean.items()}


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
) -> dict[str, Any]:
    """Top-1 error of every model x method on each pair of ``source``; returns the ``adapt`` results dict.

    Args:
        models: label -> model (on its device); never modified (each method works on a copy).
        methods: method specs (``timm_xbn.adapt.parse_method``), e.g. ``["source", "norm", "tent"]``.
        protocol: ``"episodic"`` (default: every adapter reset before each pair) or ``"continual"``
            (one stream through the pairs in ``source.pairs`` order, never reset).
        clean_error: known clean top-1 error (%) of the source models (relative mCE), one for all
            or per label; otherwise measured on the source's clean data when it has some.
        output_dir: write ``adapt.json`` / ``adapt.csv`` / ``adapt.png`` there after every pair; resume from them.
        order_seed: seed of the shuffled order (``order="shuffle"``).
        order: ``"shuffle"`` (default) or ``"folder"``, the order in which each pair's images are
            read (``EvalData.ordered``), recorded.
        stream: ``"iid"`` (``order``), ``"label-shift"`` (Dirichlet ``dirichlet`` label order, seeded
            by ``order_seed``; ``timm_xbn.adapt.streams``) or ``"mixed"`` (every pair shuffled
            together into one stream, seeded by ``order_seed``; ``timm_xbn.adapt.mixed``), recorded.
            A mixed stream takes no ``protocol`` (recorded as ``None``); its entries hold the errors
            per pair under ``runs`` (pass counts ``None``) and the whole stream's under ``mixed``.
    """
    check_stream(stream, dirichlet, protocol, order)
    if stream != "mixed":
        protocol = protocol or "episodic"
        check_protocol(protocol)
    if not models or not methods:
        raise ValueError("give at least one model and one method")
    parsed = [parse_method(m) for m in methods]
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods given twice: {sorted(m for m in set(methods) if list(methods).count(m) > 1)}")
    _, world = world_info()
    stateful = [m for m, (name, _) in zip(methods, parsed) if name in STATEFUL_METHODS]
    if world > 1 and stateful:
        raise ValueError(f"{', '.join(stateful)} update the model after every batch, in stream order; under torchrun "
                         f"each of the {world} ranks would adapt its own copy on its shard (independent, shorter "
                         "streams: another method). Run them in one process")
    out = Path(output_dir) if output_dir is not None else None
    meta = {"dataset": source.source, "source": source.kind, "protocol": protocol, **order_record(order, order_seed), **stream_record(stream, dirichlet),
            "seed": int(source.info.get("seed", 0)), "data_config": jsonable_config(source.data_config),
            "batch_size": source.batch_size,
            "models": {label: {"weights_sha1": weights_sha1(m), "spec": dict((model_specs or {}).get(label, {})) or None}
                       for label, m in models.items()}}
    previous = load_results(out / RESULTS_FILE, "adapt") if out else None
    if previous:
        _check_same_run(previous, {k: v for k, v in meta.items() if k != "models"}, out / RESULTS_FILE)
        for label, info in meta["models"].items():
            old = previous["models"].get(label)
            if old and old["weights_sha1"] != info["weights_sha1"]:
                raise ValueError(f"{out / RESULTS_FILE} holds results of other weights for {label!r}; use another output folder")
    old_entries = previous.get("entries", {}) if previous else {}
    keys = {entry_key(label, method): (label, method) for label in models for method in methods}
    runs = {key: dict(old_entries.get(key, {}).get("runs", {})) for key in keys}
    mixed = {key: old_entries[key]["mixed"] for key in keys if "mixed" in old_entries.get(key, {})}
    adapters: dict[str, Adapter] = {key: create_adapter(models[label], method) for key, (label, method) in keys.items()}
    for key, adapter in adapters.items():
        path = _state_path(out, key) if out else None
        if protocol == "continual" and adapter.stateful and runs[key] and path is not None and path.is_file():
            adapter.load_state(torch.load(path, map_location=model_device(adapter.model), weights_only=True))
        elif protocol == "continual" and adapter.stateful and runs[key]:
            raise ValueError(f"cannot resume the continual stream of {key!r}: {path} is missing; use another output folder")
    known = clean_error if clean_error is not None else (previous or {}).get("clean_error")
    clean = _clean_errors(models, source, known, progress)

    def write() -> dict[str, Any]:
        results = make_results("adapt", {**meta, "methods": list(methods), "pairs": [f"{c}/{s}" for c, s in source.pairs],
                                          "clean_error": clean, "entries": {
            key: _summary(label, method, source.pairs, runs[key], clean[label], mixed.get(key))
            for key, (label, method) in keys.items()}})
        if out is not None and is_main_process():
            from .report import plot_adaptation

            write_json_atomic(out / RESULTS_FILE, results)
            write_csv(out / "adapt.csv", [row for key, (label, method) in keys.items()
                                          for row in _csv_rows(label, method, runs[key], mixed.get(key))])
            plot_adaptation(results, out / "adapt.png")
        return results

    device = model_device(next(iter(models.values())))
    if stream == "mixed":
        _adapt_mixed({key: a for key, a in adapters.items() if key not in mixed}, source, order_seed, device, progress,
                     runs, mixed)
        return write()
    for corruption, severity in source.pairs:
        pair = f"{corruption}/{severity}"
        pending = {key: a for key, a in adapters.items() if pair not in runs[key]}
        if not pending:
            continue
        data = stream_data(source.pair_data(corruption, severity), stream, order_seed, dirichlet, order)
        prep = BatchPrep(source.data_config, device, (corruption, severity) if source.on_device else None, meta["seed"])
        start = {key: a.passes.as_dict() for key, a in pending.items()}
        for adapter in pending.values():
            if protocol == "episodic":
                adapter.reset()
            if adapter.needs_data:
                adapter.prepare(prep(b.images) for b in data.loader() if b.images is not None)
        result = run_pass(CorruptionPass(pending, prep), data, progress=progress, description=pair)
        for (key, adapter), (fwd, bwd) in zip(pending.items(), _passes(pending, start)):
            runs[key][pair] = counts_record(result.counts[Setting(key).key], fwd, bwd)
            if protocol == "continual" and adapter.stateful and out is not None and is_main_process():
                with atomic_write(_state_path(out, key)) as tmp:
                    torch.save(adapter.state(), tmp)
        write()
    return write()
