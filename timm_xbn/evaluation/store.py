"""One results store for every evaluation grid: the run's identity, the finished cells, atomic writes.

A *cell* is one (model, method, pair) of a grid: a model under a statistics or adaptation method on one
unit of data (``"clean"``, a corruption ``"fog/3"``, the ``"target"`` of an AdaBN run). The store owns

* the run's identity (``run``: data, its order, protocol, ...; ``models``: each model's weights hash and
  how it was built): a store opened on a folder whose file holds another run refuses, naming the field;
* the finished cells with their raw counts, so a rerun skips them (resume) and a grown grid runs only
  what is new;
* the file: one schema for every kind (``SCHEMA``), written atomically after every unit of work.

The file::

    {"kind": "robustness" | "adabn" | "corruption" | "adapt", "schema": 2, "timm_xbn_version": ...,
     "run": {...},                   # what makes two runs the same
     "models": {label: {...}},       # provenance: weights_sha1, spec, ...
     "grid": {"methods": [...], "pairs": [...], ...},
     "results": {...},               # the numbers, as the view summarises them
     "cells": [{"model", "method", "pair", "correct1", "correct5", "count", "top1", "top5",
                "nll", "brier", "ece", "forward", "backward", "scores"}, ...],
     "skipped_images": {pair: {"count": n, "files": [...]}}}

``legacy_layout`` reads a file of either schema (0.1 wrote ``schema`` 1, without the field) in the 0.1
layout, for the readers that predate the store (model cards, tables).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Union

import torch

from ..utils.distributed import is_main_process
from ..utils.errors import UserError
from .data import SkippedSample
from .metrics import accuracy_from_counts, calibration_from_scores
from .results import NUMBER, load_results, make_results, shape_error, skipped_report, write_csv, write_json_atomic

__all__ = ["SCHEMA", "Cell", "ResultsStore", "cell_record", "legacy_layout", "safe_name", "scored_images"]

SCHEMA = 2
_SHAPE = {"schema": int, "run": dict, "models": {"*": {"weights_sha1": str}},
          "cells": [{"model": str, "method": str, "pair": str, "correct1": int, "correct5": int, "count": int,
                     "top1": NUMBER, "top5": NUMBER, "forward": (int, type(None)), "backward": (int, type(None)),
                     "scores": [int]}],
          "skipped_images": {"*": dict}}


@dataclass(frozen=True, order=True)
class Cell:
    """One model x method x pair of a grid."""

    model: str
    method: str
    pair: str

    @property
    def key(self) -> str:
        """The cell as one string (the counts' key in ``run_pass`` and its partial-pass file)."""
        return f"{self.model} | {self.method} | {self.pair}"


def cell_record(cell: Cell, scores: torch.Tensor, forward: Optional[int] = None,
                backward: Optional[int] = None) -> Dict[str, Any]:
    """The stored record of a cell: its counts, accuracies (%), calibration (NLL, Brier, ECE %; ``None`` where
    not scored), the samples that went through forward and backward passes (``None`` where the method does
    not count them) and its raw scores (``metrics.SCORE_LAYOUT``), from which every other field follows."""
    acc = accuracy_from_counts(scores)
    c1, c5, n = (int(v) for v in scores[:3].tolist())
    return {"model": cell.model, "method": cell.method, "pair": cell.pair, "correct1": c1, "correct5": c5,
            "count": n, "top1": acc["top1"], "top5": acc["top5"], **calibration_from_scores(scores.tolist()),
            "forward": forward, "backward": backward, "scores": [int(v) for v in scores.tolist()]}


def safe_name(label: str) -> str:
    """``label`` made file-name safe (a model label in a per-model file name)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", label)


class ResultsStore:
    """The results of one grid run, resumed from ``folder/filename`` when that file exists.

    Args:
        kind: the results kind (``robustness``, ``adabn``, ``corruption``, ``adapt``).
        run: the fields that make two runs the same; a stored file with other values is refused.
        models: label -> provenance (must hold ``weights_sha1``; ``identity_fields`` of it must match a
            stored model of the same label).
        folder / filename: where the file lives (``None``: in memory only); a ``filename`` with ``{model}``
            (e.g. ``"corruption-{model}.json"``) gives each model a file of its own (a model card reads one).
    """

    def __init__(self, kind: str, run: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]],
                 folder: Optional[Union[str, Path]] = None, filename: Optional[str] = None,
                 identity_fields: Sequence[str] = ("weights_sha1",)):
        self.kind, self.run = kind, dict(run)
        self.models = {label: dict(info) for label, info in models.items()}
        self.folder = Path(folder) if folder is not None else None
        self.filename = filename or f"{kind}.json"
        self.path = self.folder / self.filename if self.folder is not None and "{model}" not in self.filename else None
        self.cells: Dict[Cell, Dict[str, Any]] = {}
        self.skipped: Dict[str, Dict[str, Any]] = {}
        self.identity_fields = tuple(identity_fields)
        self._resume()

    # ---- identity and resume -------------------------------------------------------------------
    def model_path(self, label: str) -> Optional[Path]:
        """The file of ``label`` (per-model files) or the run's file."""
        if self.folder is None:
            return None
        return self.folder / self.filename.format(model=safe_name(label)) if "{model}" in self.filename else self.path

    def _resume(self) -> None:
        paths = dict.fromkeys(self.model_path(label) for label in self.models) if self.folder is not None else {}
        for path in paths:
            self._resume_from(path)

    def _resume_from(self, path: Path) -> None:
        previous = load_results(path, self.kind)
        if previous is None:
            return
        if previous.get("schema") != SCHEMA:
            raise UserError(f"{path} was written by timm-xbn {previous.get('timm_xbn_version', '0.1')} in "
                            "an older layout, which cannot be resumed; use another output folder")
        error = shape_error(previous, _SHAPE)
        if error:
            raise UserError(f"cannot resume from {path}: {error}; delete it or use another --output")
        for key in sorted(set(self.run) | set(previous["run"])):
            if previous["run"].get(key) != self.run.get(key):
                raise UserError(f"{path} holds results for {key}={previous['run'].get(key)!r}, this run has "
                                f"{key}={self.run.get(key)!r}; use another output folder")
        for label, info in self.models.items():
            old = previous["models"].get(label)
            if old is not None and any(old.get(f) != info.get(f) for f in self.identity_fields):
                raise UserError(f"{path} holds results of {label!r} with other "
                                f"{' or '.join(self.identity_fields)}; use another output folder")
        self.models = {**previous["models"], **self.models}
        for record in previous["cells"]:
            self.cells[Cell(record["model"], record["method"], record["pair"])] = dict(record)
        self.skipped.update({pair: dict(report) for pair, report in previous["skipped_images"].items()})

    # ---- cells ---------------------------------------------------------------------------------
    def done(self, cell: Cell) -> bool:
        return cell in self.cells

    def record(self, cell: Cell, counts: torch.Tensor, forward: Optional[int] = None,
               backward: Optional[int] = None) -> Dict[str, Any]:
        self.cells[cell] = cell_record(cell, counts, forward, backward)
        return self.cells[cell]

    def get(self, model: str, method: str, pair: str) -> Optional[Dict[str, Any]]:
        return self.cells.get(Cell(model, method, pair))

    def record_skipped(self, pair: str, skipped: Iterable[SkippedSample]) -> None:
        skipped = list(skipped)
        if skipped or pair not in self.skipped:
            self.skipped[pair] = skipped_report(skipped)

    # ---- files ---------------------------------------------------------------------------------
    @property
    def partial_path(self) -> Optional[Path]:
        """Where ``run_pass`` keeps a pass's partial counts (the resume point inside a pass)."""
        return None if self.folder is None else self.folder / f"{self.kind}.partial.json"

    def state_path(self, model: str, method: str) -> Optional[Path]:
        """Where a stateful adapter's state is kept between units (continual protocol)."""
        if self.folder is None:
            return None
        return self.folder / f"{self.kind}-state" / (re.sub(r"[^A-Za-z0-9._+=-]", "_", f"{model} | {method}") + ".pt")

    def document(self, grid: Mapping[str, Any], results: Mapping[str, Any], model: Optional[str] = None,
                 skipped: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """The results file's content (``SCHEMA``) for the cells stored so far (``model``'s alone for its own file)."""
        cells = [self.cells[c] for c in sorted(self.cells) if model is None or c.model == model]
        models = self.models if model is None else {model: self.models[model]}
        return make_results(self.kind, {
            "schema": SCHEMA, **({"model": model} if model is not None else {}), "run": self.run, "models": models,
            "grid": dict(grid), "results": dict(results), "cells": cells,
            "skipped_images": dict(self.skipped if skipped is None else skipped)})

    def write(self, document: Mapping[str, Any], csv_rows: Optional[Sequence[Mapping[str, Any]]] = None,
              plot: Optional[Callable[[Mapping[str, Any], Path], None]] = None,
              path: Optional[Path] = None) -> None:
        """Write ``document`` (and its CSV rows and plot beside it) atomically, on rank 0 only."""
        path = path or (self.model_path(document["model"]) if "model" in document else self.path)
        if path is None or not is_main_process():
            return
        write_json_atomic(path, document)
        if csv_rows is not None:
            write_csv(path.with_suffix(".csv"), csv_rows)
        if plot is not None:
            plot(document, path.with_suffix(".png"))


def _only_skipped(document: Mapping[str, Any]) -> Dict[str, Any]:
    reports = list(document.get("skipped_images", {}).values())
    if len(reports) == 1 and "count" in reports[0]:
        return dict(reports[0])
    return {"count": sum(r.get("count", 0) for r in reports), "files": [f for r in reports for f in r.get("files", [])]}


def scored_images(document: Mapping[str, Any], pairs: Optional[Sequence[str]] = None) -> str:
    """``"N images scored (K unreadable skipped)"`` for the cells of ``document`` (of ``pairs`` when given):
    the images each pass actually scored (a range when passes differ), and the most files one pass skipped
    as unreadable (they are listed in ``skipped_images``); ``""`` for a file without cells (schema 1)."""
    counts = sorted({c["count"] for c in document.get("cells", []) if pairs is None or c["pair"] in pairs})
    if not counts:
        return ""
    reports = [r for pair, r in document.get("skipped_images", {}).items() if pairs is None or pair in pairs]
    skipped = max((r.get("count", 0) for r in reports), default=0)
    scored = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{scored} images scored" + (f" ({skipped} unreadable skipped)" if skipped else "")


def legacy_layout(document: Mapping[str, Any]) -> Dict[str, Any]:
    """A results file of either schema in the layout timm-xbn 0.1 wrote (numbers at the top level,
    ``models`` holding each model's numbers), for readers written against it; 0.1 files pass unchanged."""
    if document.get("schema") != SCHEMA:
        return dict(document)
    kind, run, results = document.get("kind"), document.get("run", {}), document.get("results", {})
    base = {"kind": kind, "timm_xbn_version": document.get("timm_xbn_version"), **run}
    if kind == "robustness":
        scored = next((entry.get("count") for entry in results.values()), None)
        return {**base, **{k: document["grid"].get(k) for k in ("deltas", "seeds")}, "models": dict(results),
                "num_images": scored,
                "skipped_images": _only_skipped(document), "model_info": document.get("models", {})}
    if kind == "adabn":
        return {**base, "models": dict(results), "skipped_images": _only_skipped(document)}
    if kind == "corruption":
        return {**base, "model": document.get("model"), **results, "model_info": document.get("models", {})}
    if kind == "adapt":
        return {**base, **results, **document.get("grid", {}), "models": document.get("models", {})}
    return dict(document)

