"""Compare regenerated docs files with the committed ones: did the numbers and the verdicts hold?

``python -m benchmarks.regenerate --check`` writes the targets into a scratch folder and calls ``check``. Per
file it decides what may be asked: when both records say portable mode (``timm_xbn.utils.portable``) and name
the same torch, every number must be identical, per seed included; otherwise every summary number must lie
within the committed interval's half-width (a 95 % t-interval over the training seeds, from the committed
file) and every verdict must be equal. Timings are not compared. The markdown and PNG files are drawn from
the JSON / CSV files compared here.
"""
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from timm_xbn.study.evidence import paired_effect
from timm_xbn.utils.provenance import read_provenance

__all__ = ["Field", "Moved", "FileCheck", "EXTRACTORS", "half_width", "compare_file", "check", "report"]


@dataclass(frozen=True)
class Field:
    """One compared value: a number with its interval's half-width (None: only an exact comparison makes
    sense, e.g. a per-seed value), or a verdict (``value`` is a string)."""

    name: str
    value: object
    half_width: Optional[float] = None


@dataclass(frozen=True)
class Moved:
    """A field whose new value differs from the committed one (``within``: by no more than allowed)."""

    file: str
    field: str
    committed: object
    new: object
    within: bool


@dataclass
class FileCheck:
    file: str
    mode: str  # "identical" or "within intervals"
    compared: int
    moved: List[Moved]
    missing: List[str]

    @property
    def passed(self) -> bool:
        return not self.missing and all(m.within for m in self.moved)


def half_width(values: Sequence[float]) -> float:
    """Half-width of the 95 % Student-t interval of the mean of ``values`` (the seeds), as every table uses."""
    effect = paired_effect("value", list(values), [0.0] * len(values), direction=1)
    return (effect.ci_high - effect.ci_low) / 2


def _numbers(name: str, per_seed: Sequence[float]) -> List[Field]:
    """A mean over seeds with its half-width, and each seed's value (compared only when identical is asked)."""
    mean = sum(per_seed) / len(per_seed)
    return [Field(name, mean, half_width(per_seed)),
            *(Field(f"{name} [seed {i}]", v) for i, v in enumerate(per_seed))]


_NOT_SETTINGS = ("train_seconds", "total_seconds", "portable")  # timings; the mode is the record's


def _settings(settings: dict) -> List[Field]:
    """The run's settings as fields that must be equal: numbers of two different experiments do not compare."""
    return [Field(f"setting {key}", json.dumps(value)) for key, value in settings.items() if key not in _NOT_SETTINGS]


def tta_fields(data: dict) -> List[Field]:
    """benchmarks/tta_demo.py's JSON: its settings, every table cell (mean over seeds), each comparison and its
    verdict."""
    fields = _settings(data["settings"])
    for i, row in enumerate(data["rows"]):
        for key in row:
            if key in ("model", "method") or key.endswith("±"):
                continue
            fields += _numbers(f"{row['model']} / {row['method']} / {key}", [seed[i][key] for seed in data["per_seed"]])
    for e in data["effects"]:
        name = f"{e['comparison']} @ sev {e['severity']}"
        fields += [Field(name, e["mean"], (e["ci_high"] - e["ci_low"]) / 2), Field(f"{name}: verdict", e["verdict"])]
    return fields


def calibration_fields(data: dict) -> List[Field]:
    """benchmarks/calibration.py's JSON: its setting, every top-1 / R² cell, the re-estimation verdicts, the
    chosen default."""
    from benchmarks.calibration import reestimation_effects

    fields = _settings(data["setting"])
    for family, per in data["results"].items():
        fields += _numbers(f"{family} / BN", per["BN"])
        for variant, cells in per.items():
            if variant != "BN":
                fields += [f for row, values in cells.items() if row != "calibration s"  # a timing
                           for f in _numbers(f"{family} / {variant} / {row}", values)]
    for base in ("naive", "calibrated"):
        for (family, variant, choice), e in reestimation_effects(data["results"], base).items():
            fields.append(Field(f"{family} / {variant} / {base} + {choice} - none: verdict", e.verdict))
    return fields + [Field("default", data["default"])]


def claims_fields(rows: List[dict]) -> List[Field]:
    """The study's claims.csv: each effect's mean with its interval and verdict, each claim's verdict."""
    fields, claims = [], {}
    for row in rows:
        name = f"{row['claim']} / {row['effect']}"
        low, high = float(row["ci_low"]), float(row["ci_high"])
        fields += [Field(name, float(row["mean"]), (high - low) / 2), Field(f"{name}: verdict", row["effect_verdict"])]
        claims[row["claim"]] = row["verdict"]
    return fields + [Field(f"{claim}: verdict", verdict) for claim, verdict in claims.items()]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _csv(path: Path) -> List[dict]:
    return list(csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#")))


#: docs file -> (reader, fields)
EXTRACTORS: Dict[str, Tuple[Callable[[Path], object], Callable[[object], List[Field]]]] = {
    "tta/tta_demo.json": (_json, tta_fields),
    "calibration.json": (_json, calibration_fields),
    "study/claims.csv": (_csv, claims_fields),
}


def _torch(prov: dict) -> str:
    return next((part for part in prov.get("machine", "").split(", ") if part.startswith("torch ")), "")


def identical_expected(committed: Optional[dict], new: Optional[dict]) -> bool:
    """Both files made in portable mode with the same torch: then the numbers must be the same bits."""
    return bool(committed and new and committed.get("portable") and new.get("portable")
                and _torch(committed) == _torch(new) != "")


def compare_file(name: str, committed: Path, new: Path) -> FileCheck:
    """Compare one docs file (``name`` relative to docs/) of two folders."""
    read, extract = EXTRACTORS[name]
    old_fields = {f.name: f for f in extract(read(committed))}
    new_fields = {f.name: f for f in extract(read(new))}
    identical = identical_expected(read_provenance(committed), read_provenance(new))
    moved, compared = [], 0
    for key, old in old_fields.items():
        if key not in new_fields:
            continue
        value = new_fields[key].value
        if isinstance(old.value, str):  # a verdict or a setting: always equal
            within = value == old.value
        elif identical:
            within = value == old.value
        elif old.half_width is None:
            continue  # a per-seed value: no interval of its own
        else:
            within = abs(value - old.value) <= old.half_width
        compared += 1
        if value != old.value:
            moved.append(Moved(name, key, old.value, value, within))
    missing = sorted(set(old_fields) ^ set(new_fields))
    return FileCheck(name, "identical" if identical else "within intervals", compared, moved, missing)


def check(committed_dir: Path, new_dir: Path, files: Sequence[str]) -> List[FileCheck]:
    """``compare_file`` for each of ``files`` that has an extractor."""
    return [compare_file(f, committed_dir / f, new_dir / f) for f in files if f in EXTRACTORS]


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def report(results: List[FileCheck], shown_within: int = 10) -> str:
    """A table of what moved: every field outside its tolerance, then the ``shown_within`` largest moves
    within it per file; a summary line per file."""
    lines = ["| file | field | committed | new | within? |", "|---|---|---:|---:|---|"]
    for result in results:
        outside = [m for m in result.moved if not m.within]
        within = sorted((m for m in result.moved if m.within and not isinstance(m.committed, str)),
                        key=lambda m: -abs(m.new - m.committed))[:shown_within]
        for m in outside + within:
            lines.append(f"| {m.file} | {m.field} | {_cell(m.committed)} | {_cell(m.new)} | "
                         f"{'yes' if m.within else 'NO'} |")
    lines.append("")
    for r in results:
        verdicts = [m for m in r.moved if isinstance(m.committed, str)]
        lines.append(f"{r.file}: {'PASS' if r.passed else 'FAIL'} ({r.mode}): {r.compared} values compared, "
                     f"{len(r.moved)} moved, {sum(not m.within for m in r.moved)} outside, "
                     f"{len(verdicts)} verdicts or settings changed" + (f"; fields in one file only: {', '.join(r.missing[:5])}"
                                                            if r.missing else ""))
    return "\n".join(lines)
