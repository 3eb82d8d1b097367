"""Results files shared by the project: JSON with ``kind`` / ``timm_xbn_version``, plus CSV rows.

A robustness results file keeps every evaluated setting's raw counts under ``"runs"``; when a
sweep is started again with the same ``--output`` those settings are skipped (resume), and the
summary (mean / std over seeds per Delta) is rebuilt from the runs.
"""
import csv
import json
import math
import os
import statistics
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Union

import torch

from ..utils.errors import UserError
from ..utils.files import atomic_write, write_text_atomic
from ..version import __version__
from .data import SkippedSample
from .metrics import accuracy_from_counts
from .sweep import Setting

__all__ = [
    "ANY_NUMBER",
    "NUMBER",
    "OPTIONAL_NUMBER",
    "check_output_dir",
    "claim_output_dir",
    "jsonable_config",
    "load_results",
    "shape_error",
    "run_record",
    "skipped_report",
    "summarize_robustness",
    "make_results",
    "mean_std",
    "write_csv",
    "write_json_atomic",
]

MAX_LISTED_SKIPPED = 50
NUMBER = (int, float)  # a finite number
OPTIONAL_NUMBER = (int, float, type(None))
ANY_NUMBER = (float, int)  # a number, NaN and infinities allowed


def jsonable_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A data config with tuples as lists, so it compares equal to the same config read back from JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def write_json_atomic(path: Union[str, Path], obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so an interruption never leaves half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def check_output_dir(path: Union[str, Path], option: str = "--output") -> Path:
    """Create the output folder and write a probe file in it, so that an unusable location (a file,
    a read-only place) is reported before any long work; ``ValueError`` naming ``option`` otherwise."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise UserError(f"{option} {path} is not writable: {err.strerror or err}") from None
    return path


@contextmanager
def claim_output_dir(path: Union[str, Path], option: str = "--output") -> Iterator[Path]:
    """``check_output_dir``, then hold an exclusive lock on the folder for the block, so that a second
    run on the same folder fails at once instead of overwriting the first one's results.

    The lock (``flock`` on the folder itself) ends with the block or the process, so a killed run
    never leaves a stale lock. A folder this call created is removed again if the block fails
    before writing anything into it.
    """
    import fcntl

    created = not Path(path).expanduser().exists()
    folder = check_output_dir(path, option)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{option} {folder} is in use by another run; wait for it to finish or give "
                            "another folder") from None
        try:
            yield folder
        except BaseException:
            if created and not any(folder.iterdir()):
                folder.rmdir()
            raise
    finally:
        os.close(fd)


def shape_error(value: Any, shape: Any, where: str = "") -> Optional[str]:
    """Where ``value`` departs from ``shape`` (e.g. ``"models['bn'].layers[0].esm_sigma: expected a number,
    got str"``), or ``None``.

    ``shape`` is a type or tuple of types; a dict of required keys to shapes (key ``"*"``: every value);
    or a one-item list (every item).
    """
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where or 'the file'}: expected an object, got {type(value).__name__}"
        for key, sub in shape.items():
            if key != "*" and key not in value:
                return f"{where + '.' if where else ''}{key}: missing"
            items = value.items() if key == "*" else [(key, value[key])]
            for k, v in items:
                error = shape_error(v, sub, f"{where}[{k!r}]" if key == "*" else f"{where + '.' if where else ''}{k}")
                if error:
                    return error
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where}: expected a list, got {type(value).__name__}"
        return next((e for i, v in enumerate(value) if (e := shape_error(v, shape[0], f"{where}[{i}]"))), None)
    if shape in (NUMBER, OPTIONAL_NUMBER) and isinstance(value, float) and not math.isfinite(value):
        return f"{where}: expected a finite number, got {value}"
    if not isinstance(value, shape):
        expected = "a number" if shape in (NUMBER, OPTIONAL_NUMBER, ANY_NUMBER) else " or ".join(
            t.__name__ for t in (shape if isinstance(shape, tuple) else (shape,)))
        return f"{where}: expected {expected}, got {type(value).__name__}"
    return None


def load_results(path: Union[str, Path], kind: str, shape: Optional[Mapping[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """The results JSON at ``path`` if it exists (``None`` otherwise).

    ``ValueError`` naming the file if it is not JSON, holds another kind, or departs from ``shape``
    (see ``shape_error``; the fields a resumed run reads back).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"cannot resume from {path}: not valid JSON ({err}); delete it or use another --output") from None
    if not isinstance(results, dict):
        raise UserError(f"cannot resume from {path}: it holds a JSON {type(results).__name__}, not {kind!r} results; "
                        "delete it or use another --output")
    if results.get("kind") != kind:
        raise UserError(f"cannot resume from {path}: it holds {results.get('kind')!r} results, expected {kind!r}")
    error = shape_error(results, dict(shape or {}))
    if error:
        raise UserError(f"cannot resume from {path}: {error}; delete it or use another --output")
    return results


def make_results(kind: str, data: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"kind": kind, "timm_xbn_version": ..., **data}``: the project's results-file envelope."""
    return {"kind": kind, "timm_xbn_version": __version__, **data}


def write_csv(path: Union[str, Path], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write dict rows (columns from the first row) to a CSV file (atomically)."""
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def run_record(setting: Setting, counts: torch.Tensor) -> Dict[str, Any]:
    """One entry of ``"runs"``: the setting, its raw counts and its accuracies in percent."""
    acc = accuracy_from_counts(counts)
    c1, c5, n = (int(v) for v in counts[:3].tolist())
    return {"model": setting.model, "delta": None if setting.clean else setting.delta, "seed": setting.seed,
            "correct1": c1, "correct5": c5, "count": n, "top1": acc["top1"], "top5": acc["top5"]}


def skipped_report(skipped: Iterable[SkippedSample]) -> Dict[str, Any]:
    """``{"count": n, "files": [...]}`` (the first ``MAX_LISTED_SKIPPED`` files with their error)."""
    skipped = list(skipped)
    return {"count": len(skipped),
            "files": [{"file": s.filename, "error": s.error} for s in skipped[:MAX_LISTED_SKIPPED]]}


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (0 for one value) of ``values``."""
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
            entry["deltas"][key] = {**mean_std(d["per_seed"]), "per_seed": d["per_seed"], "seeds": d["seeds"],
                                    "top5_mean": statistics.fmean(d["top5"])}
    return models
