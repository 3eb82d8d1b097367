"""Results in RobustBench's leaderboard layout, so that a model evaluated here sits beside the leaderboard's entries.

RobustBench keeps, per model, a ``model_info/<dataset>/corruptions/<name>.json`` (``ROBUSTBENCH_KEYS``:
clean and corruption accuracy as strings of percent with two decimals, ``corruptions_acc`` the mean accuracy over
the 15 corruptions x 5 severities) and one ``unaggregated_results.csv`` with a row of accuracies (fractions) per
corruption x severity and their average. ``write_robustbench`` writes both from ``corruption`` results documents;
an incomplete ImageNet-C run gets ``corruptions_acc`` null (never an average over fewer pairs). Shift sets
(``shift`` documents) add ``<set>_acc`` fields, this project's extension of the layout.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from statistics import fmean
from typing import Any, Mapping, Optional

from ..corruptions.names import CORRUPTIONS, SEVERITIES
from ..evaluation.store import safe_name
from ..utils.files import atomic_write, write_text_atomic

__all__ = ["ROBUSTBENCH_KEYS", "robustbench_entry", "robustbench_row", "write_robustbench"]

ROBUSTBENCH_KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                    "architecture", "eps", "clean_acc", "reported", "corruptions_acc")
DATASETS = {"imagenet-c": "imagenet", "cifar-c": "cifar10"}  # RobustBench's names of the clean data sets


def _percent(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{value:.2f}"


def robustbench_row(document: Mapping[str, Any]) -> Optional[list[float]]:
    """The model's accuracies (fractions) per corruption x severity in ``CORRUPTIONS`` x ``SEVERITIES`` order,
    then their average; ``None`` unless all 75 pairs were evaluated."""
    errors = document["results"]["errors"]
    try:
        accuracies = [1.0 - errors[c][str(s)] / 100.0 for c in CORRUPTIONS for s in SEVERITIES]
    except KeyError:
        return None
    return accuracies + [fmean(accuracies)]


def robustbench_entry(label: str, document: Optional[Mapping[str, Any]] = None,
                      shift: Optional[Mapping[str, Any]] = None, architecture: Optional[str] = None) -> dict[str, Any]:
    """The ``model_info`` JSON of model ``label`` from its ``corruption`` results document (clean and corruption
    accuracy; ``None`` without one) and its ``shift`` results per set (``<set>_acc``)."""
    results, run = (document or {}).get("results", {}), (document or {}).get("run", {})
    row = robustbench_row(document) if document is not None else None
    spec = ((document or {}).get("models", {}).get(label) or {}).get("spec") or {}
    cells = [c for c in (document or {}).get("cells", []) if c["pair"] != "clean"]
    count = sum(c["count"] for c in cells)
    passes = sum(c["forward"] or 0 for c in cells) / count if count else 1
    clean_error = results.get("clean_error")
    entry = {"link": "", "name": label, "authors": "", "additional_data": False,
             "number_forward_passes": max(1, round(passes)),
             "dataset": DATASETS.get(run.get("source"), run.get("dataset", "imagenet")), "venue": "",
             "architecture": architecture or spec.get("model") or label, "eps": None,
             "clean_acc": _percent(None if clean_error is None else 100.0 - clean_error),
             "reported": "", "corruptions_acc": _percent(None if row is None else 100.0 * row[-1])}
    for name, values in (shift or {}).items():
        entry[f"{name.replace('-', '_')}_acc"] = _percent(values["top1"])
    return entry


def write_robustbench(folder: Path, documents: Mapping[str, Mapping[str, Any]],
                      shift: Optional[Mapping[str, Mapping[str, Any]]] = None) -> list[Path]:
    """``folder/<model>.json`` per model (of ``documents``, ``corruption`` results, or ``shift``: per model, its
    results per set) and ``folder/unaggregated_results.csv`` (complete corruption runs only)."""
    written = []
    for label in dict.fromkeys([*documents, *(shift or {})]):
        path = folder / f"{safe_name(label)}.json"
        entry = robustbench_entry(label, documents.get(label), (shift or {}).get(label))
        write_text_atomic(path, json.dumps(entry, indent=2) + "\n")
        written.append(path)
    rows = [(label, row) for label, document in documents.items() if (row := robustbench_row(document)) is not None]
    if rows:
        path = folder / "unaggregated_results.csv"
        with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", *[c for c in CORRUPTIONS for _ in SEVERITIES], "average"])
            writer.writerow(["", *[s for _ in CORRUPTIONS for s in SEVERITIES], ""])
            writer.writerows([label, *row] for label, row in rows)
        written.append(path)
    return written

