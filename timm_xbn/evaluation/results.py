"""Results files shared by the project: JSON with ``kind`` / ``timm_xbn_version``, plus CSV rows.

A robustness results file keeps every evaluated setting's raw counts under ``"runs"``; when a
sweep is started again with the same ``--output`` those settings are skipped (resume), and the
summary (mean / std over seeds per Delta) is rebuilt from the runs.
"""
import csv
import json
import os
import statistics
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch

from .data import SkippedSample
from .metrics import accuracy_from_counts
from .sweep import Setting

__all__ = [
    "jsonable_config",
    "load_results",
    "run_record",
    "skipped_report",
    "summarize_robustness",
    "make_results",
    "write_csv",
    "write_json_atomic",
]

MAX_LISTED_SKIPPED = 50


def _version() -> str:
    from .. import __version__

    return __version__


def jsonable_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A data config with tuples as lists, so it compares equal to the same config read back from JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def write_json_atomic(path: Union[str, Path], obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so an interruption never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def load_results(path: Union[str, Path], kind: str) -> Optional[Dict[str, Any]]:
    """The results JSON at ``path`` if it exists (``None`` otherwise); ``ValueError`` if it is another kind."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"cannot resume from {path}: not valid JSON ({err})") from None
    if results.get("kind") != kind:
        raise ValueError(f"cannot resume from {path}: it holds {results.get('kind')!r} results, expected {kind!r}")
    return results


def make_results(kind: str, data: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"kind": kind, "timm_xbn_version": ..., **data}``: the project's results-file envelope."""
    return {"kind": kind, "timm_xbn_version": _version(), **data}


def write_csv(path: Union[str, Path], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write dict rows (columns from the first row) to a CSV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def run_record(setting: Setting, counts: torch.Tensor) -> Dict[str, Any]:
    """One entry of ``"runs"``: the setting, its raw counts and its accuracies in percent."""
    acc = accuracy_from_counts(counts)
    c1, c5, n = (int(v) for v in counts.tolist())
    return {"model": setting.model, "delta": None if setting.clean else setting.delta, "seed": setting.seed,
            "correct1": c1, "correct5": c5, "count": n, "top1": acc["top1"], "top5": acc["top5"]}


def skipped_report(skipped: Iterable[SkippedSample]) -> Dict[str, Any]:
    """``{"count": n, "files": [...]}`` (the first ``MAX_LISTED_SKIPPED`` files with their error)."""
    skipped = list(skipped)
    return {"count": len(skipped),
            "files": [{"file": s.filename, "error": s.error} for s in skipped[:MAX_LISTED_SKIPPED]]}


def _mean_std(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize_robustness(runs: Mapping[str, Mapping[str, Any]], settings: Sequence[Setting]) -> Dict[str, Any]:
    """The ``"models"`` section of a robustness results file for ``settings``.

    Per model: clean top-1/top-5, and per Delta the mean and (sample) std of top-1 over the seeds,
    the per-seed top-1 values (seed order) and the mean top-5.
    """
    models: Dict[str, Any] = {}
    for s in settings:
        entry = models.setdefault(s.model, {"clean_top1": None, "clean_top5": None, "deltas": {}})
        run = runs[s.key]
        if s.clean:
            entry["clean_top1"], entry["clean_top5"] = run["top1"], run["top5"]
        else:
            d = entry["deltas"].setdefault(str(s.delta), {"seeds": [], "per_seed": [], "top5": []})
            d["seeds"].append(s.seed)
            d["per_seed"].append(run["top1"])
            d["top5"].append(run["top5"])
    for entry in models.values():
        for key, d in list(entry["deltas"].items()):
            entry["deltas"][key] = {**_mean_std(d["per_seed"]), "per_seed": d["per_seed"], "seeds": d["seeds"],
                                    "top5_mean": statistics.fmean(d["top5"])}
    return models
