"""Results JSON files (written by ``xbn-eval`` / ``xbn-train``) as the only source of a card's figures.

Each file is checked against the project-wide schema of its ``kind`` when it is loaded, so a
malformed or unknown file fails before anything is written or uploaded.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple, Union

from ..evaluation.results import NUMBER, OPTIONAL_NUMBER, shape_error
from ..evaluation.store import legacy_layout
from ..utils.errors import UserError

__all__ = ["CARD_KINDS", "ResultsFile", "load_results", "for_weights", "base_name", "select_entry"]

_OPTIONAL_STR = (str, type(None))
# The fields of each results kind that a model card reads, with their types (see ``shape_error``).
_SHAPES: Dict[str, Dict[str, Any]] = {
    "train": {"model": str, "val_top1": OPTIONAL_NUMBER, "val_top5": OPTIONAL_NUMBER, "epochs": int,
              "recipe": _OPTIONAL_STR, "dataset": str},
    "robustness": {"dataset": str, "blocks": (int, list, type(None)), "seeds": [int], "models": {"*": {
        "clean_top1": OPTIONAL_NUMBER, "deltas": {"*": {"mean": NUMBER, "std": NUMBER}}}}},
    "adabn": {"dataset": str, "models": {"*": {"mode": str, "before_top1": NUMBER, "after_top1": NUMBER}}},
    "esm": {"dataset": str, "models": {"*": {"mean_esm_sigma": NUMBER, "layers": [{"name": str, "esm_sigma": NUMBER}]}}},
    "corruption": {"model": str, "dataset": str, "clean_error": OPTIONAL_NUMBER, "errors": {"*": {"*": NUMBER}},
                   "ce": {"*": OPTIONAL_NUMBER}, "mce": OPTIONAL_NUMBER, "relative_mce": OPTIONAL_NUMBER,
                   "complete": bool, "missing": [str]},
}
_REQUIRED: Dict[str, Tuple[str, ...]] = {kind: tuple(shape) for kind, shape in _SHAPES.items()}
CARD_KINDS = tuple(_REQUIRED)


@dataclass(frozen=True)
class ResultsFile:
    """One loaded results file: where it came from, its kind and its data."""

    path: Path
    kind: str
    data: Dict[str, Any]

    @property
    def source(self) -> str:
        return self.path.name


def _load_one(path: Path) -> ResultsFile:
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"results file {path} is not valid JSON: {err}") from None
    data = legacy_layout(data) if isinstance(data, dict) else data  # xbn-eval's schema 2 or 0.1's layout
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "study":
        raise UserError(
            f"{path} is a 'study' results file, which aggregates several models; "
            "a model card takes that model's own train / robustness / adabn / esm / corruption files"
        )
    if kind not in _REQUIRED:
        raise UserError(f"{path} has kind {kind!r}; expected one of {', '.join(CARD_KINDS)}")
    missing = [k for k in _REQUIRED[kind] if k not in data]
    if missing:
        raise UserError(f"{path} ({kind} results) lacks the field(s) {', '.join(missing)}")
    if "models" in data and (not isinstance(data["models"], dict) or not data["models"]):
        raise UserError(f"{path} ({kind} results) has no per-model results in 'models'")
    error = shape_error(data, _SHAPES[kind])
    if error:
        raise UserError(f"{path} ({kind} results) does not have the shape xbn-train / xbn-eval write: {error}")
    for where, value in _percentages(kind, data):
        if value is not None and not 0 <= value <= 100:
            raise UserError(f"{path} ({kind} results): {where} is {value}, not a percentage in [0, 100]")
    return ResultsFile(path=path, kind=kind, data=data)


def _percentages(kind: str, data: Mapping[str, Any]) -> Iterator[Tuple[str, Any]]:
    """Every accuracy / error (%) a card reads from a results file of ``kind``, with where it sits (CE and mCE
    are ratios to AlexNet's errors, not percentages, and may pass 100)."""
    if kind == "train":
        yield from (("val_top1", data["val_top1"]), ("val_top5", data["val_top5"]))
    elif kind == "corruption":
        yield "clean_error", data["clean_error"]
        yield from ((f"errors.{c}.{s}", v) for c, sev in data["errors"].items() for s, v in sev.items())
    elif kind in ("robustness", "adabn"):
        for label, entry in data["models"].items():
            keys = ("clean_top1",) if kind == "robustness" else ("before_top1", "after_top1")
            yield from ((f"models.{label}.{k}", entry[k]) for k in keys)
            for delta, d in entry.get("deltas", {}).items():
                yield from ((f"models.{label}.deltas.{delta}.{k}", d[k]) for k in ("mean", "std"))


def load_results(paths: Iterable[Union[str, Path]]) -> List[ResultsFile]:
    """Load and schema-check results files; raises ``FileNotFoundError`` / ``ValueError`` naming the file."""
    return [_load_one(Path(p)) for p in paths]


def for_weights(results: ResultsFile, sha1: str) -> ResultsFile:
    """``results`` as it applies to the weights with ``weights_sha1`` ``sha1``: a train results file reports its
    best epoch's accuracy for ``model_best`` weights, its last epoch's for the final weights, and is refused
    for other weights. Files without weight hashes (other kinds, older versions) are returned as they are."""
    data = results.data
    if results.kind != "train" or not isinstance(data.get("weights_sha1"), str):
        return results
    best = data.get("best") if isinstance(data.get("best"), dict) else {}
    if best.get("weights_sha1") == sha1:
        return ResultsFile(results.path, results.kind, {**data, "val_top1": best.get("top1"), "val_top5": best.get("top5")})
    if data["weights_sha1"] == sha1:
        return results
    raise UserError(f"{results.path} (train results) was measured on other weights than this checkpoint (neither "
                    "its best epoch's nor its last epoch's); pass the results of the run that wrote the checkpoint")


def base_name(name: str) -> str:
    """``hf-hub:org/xbn_resnet50.in1k`` or ``xbn_resnet50:model_best`` (an eval label with its
    checkpoint) -> ``xbn_resnet50``: the part that names the architecture."""
    for prefix in ("hf-hub:", "hf_hub:", "local-dir:"):
        name = name.removeprefix(prefix)
    name = name.rstrip("/").rsplit("/", 1)[-1]
    return name.split(":", 1)[0].split(".", 1)[0]


def select_entry(results: ResultsFile, names: Sequence[str]) -> Tuple[str, Any]:
    """The model a results file reports on that is one of ``names``: an exact name match, else the one
    entry whose ``base_name`` matches.

    For ``train`` / ``corruption`` files that is the file itself (its ``model`` field), for the others
    one entry of ``models``. Raises ``ValueError`` rather than putting another model's figures in a card.
    """
    per_model = "models" in results.data
    candidates = list(results.data["models"]) if per_model else [str(results.data["model"])]
    wanted = {base_name(n) for n in names if n}
    matches = [c for c in candidates if c in names] or [c for c in candidates if base_name(c) in wanted]
    if len(matches) == 1:
        return matches[0], results.data["models"][matches[0]] if per_model else results.data
    found = f"reports on {', '.join(map(repr, candidates))}"
    if matches:
        raise UserError(f"{results.path} ({results.kind} results) {found}: several match; "
                        "pass the one for this model with --results-name (results_name=...)")
    raise UserError(
        f"{results.path} ({results.kind} results) {found}, not on {', '.join(map(repr, sorted(wanted)))}; "
        "pass the name it uses with --results-name (results_name=...) if it is the same model"
    )
