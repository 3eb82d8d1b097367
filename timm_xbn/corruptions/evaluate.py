"""Evaluate models on every (corruption, severity) of a ``CorruptionSource``: top-1 errors, CE,
mCE and relative mCE, optional BN adaptation per pair, resumable per pair.

All models share each decoded batch (``timm_xbn.evaluation.SharedPass`` / ``run_pass``: progress
bar, torch.distributed sharding, mid-pass checkpoints). With ``adapt`` each model's BN statistics
are re-estimated on each (corruption, severity) before it is evaluated (Schneider et al. 2020),
on a copy: the caller's models never change.

Every pass reads its images in one order, a seeded shuffle by default (``EvalData.ordered``), as
``timm_xbn.adapt`` and ``evaluate_adabn`` do, and on-the-fly corruptions are keyed by the image
(``seeding``): the same model, data, method and order give the same numbers in every command.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..evaluation.data import order_record
from ..evaluation.engine import run_pass
from ..evaluation.metrics import accuracy_from_counts
from ..evaluation.models import weights_sha1
from ..evaluation.results import (
    NUMBER, jsonable_config, load_results, make_results, skipped_report, write_csv, write_json_atomic,
)
from ..evaluation.sweep import Setting, SharedPass
from ..utils.device import eval_mode, model_device
from ..utils.distributed import is_main_process
from .datasets import CorruptionSource
from .metrics import summarize
from .seeding import corrupt_images

__all__ = ["BatchPrep", "CorruptionPass", "evaluate_corruptions", "parse_adapt", "results_path"]

CLEAN = "clean"
# the fields of a previous corruption-<label>.json that a resumed run reads back
RESUME_SHAPE = {
    "runs": {"*": {"correct1": int, "correct5": int, "count": int, "top1_error": NUMBER, "top5_error": NUMBER}},
    "skipped_images": {"*": dict},
}


def parse_adapt(spec: Optional[str]) -> Optional[tuple[str, float]]:
    """``"full"`` / ``"batch"`` / ``"prior:N"`` -> (mode, prior N); ``None`` -> no adaptation."""
    if spec is None or spec in ("", "none"):
        return None
    mode, _, value = spec.partition(":")
    if mode in ("full", "batch") and not value:
        return mode, 0.0
    if mode == "prior":
        try:
            prior = float(value) if value else 16.0
        except ValueError:
            prior = -1.0
        if prior >= 0:
            return mode, prior
    raise ValueError(f"--adapt must be full, batch or prior:N (N >= 0, the source strength), got {spec!r}")


def results_path(output_dir: Union[str, Path], label: str, suffix: str = ".json") -> Path:
    """``<output_dir>/corruption-<label><suffix>`` with the label made file-name safe."""
    return Path(output_dir) / f"corruption-{re.sub(r'[^A-Za-z0-9._+-]', '_', label)}{suffix}"


class BatchPrep:
    """uint8 batch -> float batch on ``device``, corrupted first when ``corruption`` is given
    (torch implementation, each image seeded by its own pixels: ``seeding.corrupt_images``),
    normalised with the data config's mean / std."""

    def __init__(self, data_config: Mapping[str, Any], device: torch.device,
                 corruption: Optional[tuple[str, int]] = None, seed: int = 0):
        self.device, self.corruption, self.seed = device, corruption, seed
        self.mean = torch.tensor(data_config["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(data_config["std"], device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.corruption is not None:
            x = corrupt_images(images, *self.corruption, seed=self.seed, device=self.device)
        else:
            x = images.to(self.device, non_blocking=True)
        return (x.float() - self.mean) / self.std


class CorruptionPass(SharedPass):
    """A ``SharedPass`` of every model, clean settings only, fed with uint8 batches that a
    ``BatchPrep`` corrupts and normalises first (``run_pass`` drives it like any SharedPass)."""

    def __init__(self, models: Mapping[str, nn.Module], prep: BatchPrep):
        super().__init__(models, [Setting(label) for label in models])
        self.prep = prep

    def update(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        super().update(self.prep(images), targets)


def _calibration_batches(data, prep: BatchPrep) -> Iterator[torch.Tensor]:
    for batch in data.loader():
        if batch.images is not None:
            yield prep(batch.images)


def _record(counts: torch.Tensor) -> dict[str, Any]:
    acc = accuracy_from_counts(counts)
    c1, c5, n = (int(v) for v in counts.tolist())
    return {"correct1": c1, "correct5": c5, "count": n, "top1_error": 100.0 - acc["top1"], "top5_error": 100.0 - acc["top5"]}


def _model_results(label: str, source: CorruptionSource, runs: Mapping[str, Any], meta: Mapping[str, Any],
                   clean_error: Optional[float], skipped: Mapping[str, Any]) -> dict[str, Any]:
    errors: dict[str, dict[str, float]] = {}
    top5: dict[str, dict[str, float]] = {}
    for corruption, severity in source.pairs:
        run = runs.get(f"{corruption}/{severity}")
        if run is not None:
            errors.setdefault(corruption, {})[str(severity)] = run["top1_error"]
            top5.setdefault(corruption, {})[str(severity)] = run["top5_error"]
    if clean_error is None and CLEAN in runs:
        clean_error = runs[CLEAN]["top1_error"]
    summary = summarize(errors, clean_error)
    return make_results("corruption", {
        "model": label,
        "dataset": source.source,
        "clean_error": clean_error,
        "errors": errors,
        "ce": summary["ce"],
        "mce": summary["mce"],
        "relative_ce": summary["relative_ce"],
        "relative_mce": summary["relative_mce"],
        "mean_error": summary["mean_error"],
        "complete": summary["complete"],
        "missing": summary["missing"],
        "not_found": list(source.missing),
        "top5_errors": top5,
        "source": source.kind,
        **{k: meta[k] for k in ("adapt", "seed", "order", "order_seed", "data_config", "weights_sha1")},
        "batch_size": source.batch_size,
        "model_info": meta.get("spec"),
        "skipped_images": dict(skipped),
        "runs": dict(runs),
    })


def _check_same_run(previous: Mapping[str, Any], meta: Mapping[str, Any], path: Path) -> None:
    for key in ("dataset", "source", "adapt", "seed", "order", "order_seed", "data_config", "weights_sha1"):
        old = previous.get(key)
        if old != meta[key]:
            raise ValueError(f"{path} holds results for {key}={old!r}, this run has {key}={meta[key]!r}; "
                             "use another output folder")


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
    ``{label: corruption results dict}`` (the ``"corruption"`` schema plus ``runs`` and extras).

    Args:
        models: label -> model (on its device), evaluated side by side; never modified.
        source: ``ImageNetCFolders``, ``CifarC`` or ``OnTheFly``.
        adapt: ``"full"``, ``"prior:N"`` or ``"batch"``: re-estimate BN statistics on each pair
            first (``timm_xbn.stats.recalibrate`` on a copy), or ``None``.
        clean_error: known clean top-1 error (%) for relative mCE, one for all models or per label;
            otherwise the clean data of ``source`` (if any) is evaluated, without adaptation.
        output_dir: write ``corruption-<label>.json`` / ``.csv`` / ``.png`` there after every pair;
            pairs already in those files are not evaluated again (resume).
        model_specs: optional label -> how the model was built (name, checkpoint, ...), recorded.
        order, order_seed: the order in which every pass reads its images (``EvalData.ordered``:
            a seeded shuffle by default, as ``xbn-eval adapt`` and ``adabn``), recorded.

    Under torch.distributed every rank passes the same arguments; rank 0 writes the files.
    """
    parsed = parse_adapt(adapt)
    ordering = order_record(order, order_seed)
    if not models:
        raise ValueError("no models given")
    out = Path(output_dir) if output_dir is not None else None
    seed = int(source.info.get("seed", 0))
    metas, runs, skipped, clean = {}, {}, {}, {}
    for label, model in models.items():
        metas[label] = {"dataset": source.source, "source": source.kind, "adapt": adapt, "seed": seed, **ordering,
                        "data_config": jsonable_config(source.data_config), "weights_sha1": weights_sha1(model),
                        "spec": dict((model_specs or {}).get(label, {})) or None}
        previous = load_results(results_path(out, label), "corruption", RESUME_SHAPE) if out else None
        if previous:
            _check_same_run(previous, metas[label], results_path(out, label))
        runs[label] = dict(previous.get("runs", {})) if previous else {}
        skipped[label] = dict(previous.get("skipped_images", {})) if previous else {}
        known = clean_error.get(label) if isinstance(clean_error, Mapping) else clean_error
        clean[label] = None if known is None else float(known)

    def write() -> None:
        if out is None or not is_main_process():
            return
        from .plots import plot_corruption_heatmap

        for label in models:
            results = _model_results(label, source, runs[label], metas[label], clean[label], skipped[label])
            write_json_atomic(results_path(out, label), results)
            write_csv(results_path(out, label, ".csv"), [
                {"corruption": c, "severity": s, **{k: runs[label][f"{c}/{s}"][k] for k in
                                                    ("top1_error", "top5_error", "correct1", "correct5", "count")}}
                for c, s in source.pairs if f"{c}/{s}" in runs[label]])
            plot_corruption_heatmap(results, results_path(out, label, ".png"))

    def evaluate(key: str, data, evaluated: Mapping[str, nn.Module], prep: BatchPrep) -> None:
        with eval_mode(evaluated.values()):
            result = run_pass(CorruptionPass(evaluated, prep), data, progress=progress, description=key,
                              state_file=out / "corruption.partial.json" if out else None,
                              meta={"pair": key, "models": {k: metas[k]["weights_sha1"] for k in evaluated},
                                    "dataset": source.source, "adapt": adapt, "seed": seed, **ordering})
        for label in evaluated:
            runs[label][key] = _record(result.counts[Setting(label).key])
            if result.skipped:
                skipped[label][key] = skipped_report(result.skipped)

    device = model_device(next(iter(models.values())))
    clean_data = source.clean_data()
    clean_data = clean_data.ordered(order, order_seed) if clean_data is not None else None
    todo = [label for label in models if clean[label] is None and CLEAN not in runs[label]]
    if clean_data is not None and todo:
        evaluate(CLEAN, clean_data, {label: models[label] for label in todo}, BatchPrep(source.data_config, device))
        write()

    for corruption, severity in source.pairs:
        key = f"{corruption}/{severity}"
        pending = {label: m for label, m in models.items() if key not in runs[label]}
        if not pending:
            continue
        data = source.pair_data(corruption, severity).ordered(order, order_seed)
        prep = BatchPrep(source.data_config, device, (corruption, severity) if source.on_device else None, seed)
        evaluated = pending
        if parsed is not None:
            from ..stats.recalibrate import DATA_FREE_MODES, recalibrate

            mode, prior = parsed
            evaluated = {}
            for label, model in pending.items():
                try:
                    evaluated[label] = recalibrate(model, None if mode in DATA_FREE_MODES else _calibration_batches(data, prep),
                                                   mode=mode, prior=prior)
                except ValueError as err:
                    raise ValueError(f"{label}: {err}") from None
        evaluate(key, data, evaluated, prep)
        write()

    return {label: _model_results(label, source, runs[label], metas[label], clean[label], skipped[label])
            for label in models}
