"""Model cards: Hub metadata (``model-index``) and a Markdown body rendered from ``hub_cards/``.

Every figure comes from a results file (``timm_xbn.hub.results``) or from the model itself
(layer and parameter counts); a section without results says so instead of showing numbers.
"""
import json
import re
from pathlib import Path
from string import Template
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..layers import is_batch_free
from ..models import XBN_VARIANTS
from ..utils.errors import UserError
from ..utils.norms import is_bn
from ..version import __version__
from .results import ResultsFile, select_entry

__all__ = ["CARD_TEMPLATE", "NO_RESULTS", "check_license", "render_card", "card_results"]

# timm_xbn/hub/hub_cards links to the repository's hub_cards/, so wheels ship the templates too
CARD_TEMPLATE = Path(__file__).parent / "hub_cards" / "model_card.md"
NO_RESULTS = "No results measured yet"
TASK = "image-classification"
TAGS = [TASK, "timm", "timm-xbn", "batch-normalization"]
PAPER_URL = "https://arxiv.org/abs/2203.10778"

Section = Tuple[str, List[Optional[EvalResult]]]


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _dataset_label(dataset: str) -> str:
    """A dataset name fit for a public card: a local path becomes its folder name."""
    path = Path(str(dataset))
    return path.name if path.is_absolute() or str(dataset).startswith(".") else str(dataset)


def _eval(dataset: str, metric_type: str, name: str, value: Any, **kwargs: Any) -> Optional[EvalResult]:
    """A model-index entry; ``None`` for a value the results file does not have (yet)."""
    if value is None:
        return None
    label = _dataset_label(dataset)
    return EvalResult(task_type=TASK, dataset_type=label, dataset_name=label, metric_type=metric_type,
                      metric_name=name, metric_value=value, **kwargs)


def _source(results: ResultsFile) -> str:
    version = results.data.get("timm_xbn_version")
    return f"`{results.source}`" + (f" (timm-xbn {version})" if version else "")


def _none(what: str) -> str:
    return f"{NO_RESULTS} (no `{what}` results file was given)."


def _ordinal(n: int) -> str:
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(n if n < 20 else n % 10, "th")
    return f"{n}{suffix}"


def _base_model(architecture: str, model_args: Dict[str, Any]) -> str:
    if "base_model" in model_args:
        return model_args["base_model"]
    return XBN_VARIANTS[architecture]["base"] if architecture in XBN_VARIANTS else architecture


# What P1 / P2 / P3 replace (timm_xbn.surgery.blocks: the authors' placement).
_POSITION_TEXT = {1: "the block's first BN", 2: "the BN after the block's first k×k convolution",
                  3: "the block's last BN, before the residual addition"}


def _bfn_text(cfg: Dict[str, Any]) -> str:
    if cfg["bfn"] == "gn":
        if cfg.get("channels_per_group"):
            return f"GroupNorm, {cfg['channels_per_group']} channels per group"
        return f"GroupNorm, {cfg['groups']} groups (clamped to the channel count)"
    return {"in": "InstanceNorm", "ln": "GroupNorm with one group (LayerNorm over C, H, W)"}.get(cfg["bfn"], cfg["bfn"])


def _summary(model: nn.Module, architecture: str, config: Dict[str, Any]) -> str:
    cfg = getattr(model, "xbn_cfg", None)
    base = _base_model(architecture, config.get("model_args", {}))
    if cfg is None:
        kind = f"A BatchNorm `{base}` baseline"
    else:
        variant = f"-D{cfg['every']}" if cfg["every"] > 1 else ""
        kind = f"An XBNBlock-P{cfg['position']}{variant} network: timm's `{base}` with {_bfn_text(cfg)} as batch-free norm"
    return (
        f"{kind}, for comparing Batch Normalization's estimation shift as studied in "
        f"[Delving into the Estimation Shift of Batch Normalization in a Network]({PAPER_URL}) "
        f"(Huang et al., CVPR 2022). timm architecture `{architecture}`; published with timm-xbn {__version__}."
    )


def _numbers(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _architecture(model: nn.Module, architecture: str, config: Dict[str, Any]) -> str:
    model_args = config.get("model_args", {})
    cfg = getattr(model, "xbn_cfg", None)
    rows: List[Tuple[str, str]] = [("timm architecture", f"`{architecture}`"),
                                   ("Base network", f"`{_base_model(architecture, model_args)}`")]
    if cfg is None:
        rows.append(("XBNBlock", "none: BatchNorm in every block (baseline)"))
    else:
        every = cfg["every"]
        blocks = "every residual block" if every == 1 else (
            f"every {_ordinal(every)} residual block (D{every}: blocks {every}, {2 * every}, {3 * every}, … "
            "counted 1-based over the whole network)")
        rows += [
            ("XBNBlock position", f"P{cfg['position']}: {_POSITION_TEXT[cfg['position']]} is replaced by a batch-free norm"),
            ("Converted blocks", blocks),
            ("Batch-free norm", _bfn_text(cfg) + ("" if cfg.get("affine") is None else f", affine={cfg['affine']}")),
            ("Stem norm", "batch-free norm" if cfg["stem"] else "BatchNorm"),
        ]
    n_bfn = sum(is_batch_free(m) for m in model.modules())
    n_bn = sum(is_bn(m) for m in model.modules())
    params = sum(p.numel() for p in model.parameters())
    input_size = config.get("pretrained_cfg", {}).get("input_size")
    rows += [
        ("Norm layers", f"{n_bfn} batch-free, {n_bn} BatchNorm"),
        ("Parameters", f"{params / 1e6:.2f} M"),
        ("Classes", str(config.get("num_classes"))),
    ]
    pretrained_cfg = config.get("pretrained_cfg", {})
    if input_size:
        rows.append(("Input size", "×".join(map(str, input_size))))
    if pretrained_cfg.get("mean") and pretrained_cfg.get("std"):
        rows.append(("Normalization", f"mean {_numbers(pretrained_cfg['mean'])}, std {_numbers(pretrained_cfg['std'])}"))
    if pretrained_cfg.get("crop_pct"):
        rows.append(("Center crop", f"{pretrained_cfg['crop_pct']:g} ({pretrained_cfg.get('interpolation', 'bilinear')} resize)"))
    rows.append(("Pretrained tag", f"`{pretrained_cfg['tag']}`" if pretrained_cfg.get("tag") else
                 "none (not one of timm's released weight sets)"))
    table = _table(("", ""), rows)
    args = json.dumps(model_args, indent=2, sort_keys=True)
    return f"{table}\n\n`config.json` rebuilds it with `timm.create_model(architecture, **model_args)`:\n\n```json\n{args}\n```"


def _recipe(files: List[ResultsFile], names: Sequence[str]) -> Section:
    train = [r for r in files if r.kind == "train"]
    if not train:
        return _none("xbn-train"), []
    parts = []
    for r in train:
        d = r.data
        parts.append(_table(("", ""), [("Recipe", f"`{d['recipe']}`"), ("Epochs", str(d["epochs"])),
                                      ("Dataset", _dataset_label(d["dataset"])), ("Source", _source(r))]))
    return "\n\n".join(parts), []


def _accuracy(files: List[ResultsFile], names: Sequence[str]) -> Section:
    train = [r for r in files if r.kind == "train"]
    if not train:
        return _none("xbn-train"), []
    rows, evals = [], []
    for r in train:
        select_entry(r, names)
        d = r.data
        rows.append((_dataset_label(d["dataset"]), d["val_top1"], d["val_top5"], d["epochs"], _source(r)))
        evals += [_eval(d["dataset"], "accuracy", "Top 1 Accuracy", d["val_top1"]),
                  _eval(d["dataset"], "accuracy", "Top 5 Accuracy", d["val_top5"])]
    return _table(("Dataset", "Top-1 (%)", "Top-5 (%)", "Epochs", "Source"), rows), evals


def _robustness(files: List[ResultsFile], names: Sequence[str]) -> Section:
    robust = [r for r in files if r.kind == "robustness"]
    if not robust:
        return _none("xbn-eval robustness"), []
    parts, evals = [], []
    for r in robust:
        d = r.data
        chosen, entry = select_entry(r, names)
        deltas = sorted({k for m in d["models"].values() for k in m["deltas"]}, key=float)
        rows = []
        for name, m in d["models"].items():
            cells = [m["deltas"].get(k) for k in deltas]
            row = [f"**{name}**" if name == chosen else name, m["clean_top1"]]
            row += [f"{c['mean']:.2f} ± {c['std']:.2f}" if c else "–" for c in cells]
            rows.append(row)
        blocks = d["blocks"]
        which = f"blocks {', '.join(map(str, blocks))}" if isinstance(blocks, list) else f"the first {blocks} blocks"
        intro = (
            f"Top-1 (%) on {_dataset_label(d['dataset'])} when the running mean and variance of the first BN of "
            f"{which} are scaled "
            f"by (1 + d), d ~ U(-D, D) (paper Eq. 5); mean ± std over seeds {', '.join(map(str, d['seeds']))}. "
            f"Source: {_source(r)}."
        )
        parts.append(intro + "\n\n" + _table(["Model", "Clean top-1"] + [f"D = {k}" for k in deltas], rows))
        evals.append(_eval(d["dataset"], "accuracy", "Top 1 Accuracy (clean BN statistics)", entry["clean_top1"]))
        for k in sorted(entry["deltas"], key=float):
            cell = entry["deltas"][k]
            evals.append(_eval(d["dataset"], "accuracy", f"Top 1 Accuracy (BN statistics perturbed, D={k})",
                               cell["mean"], metric_args={"D": float(k), "std": cell["std"],
                                                          "seeds": len(cell.get("per_seed", d["seeds"]))}))
    return "\n\n".join(parts), evals


def _corruption(files: List[ResultsFile], names: Sequence[str]) -> Section:
    corrupt = [r for r in files if r.kind == "corruption"]
    if not corrupt:
        return _none("xbn-eval corruption"), []
    parts, evals = [], []
    for r in corrupt:
        select_entry(r, names)
        d = r.data
        status = "all corruptions and severities evaluated" if d["complete"] else (
            "**partial run**: missing " + ", ".join(d["missing"]) + "; mCE is only reported for a complete run")
        summary = _table(("Metric", "Value (%)"), [("mCE", d["mce"]), ("Relative mCE", d["relative_mce"]),
                                                   ("Clean top-1 error", d["clean_error"])])
        severities = sorted({s for errs in d["errors"].values() for s in errs}, key=int)
        rows = [[c, d["ce"].get(c)] + [d["errors"][c].get(s) for s in severities] for c in d["errors"]]
        detail = _table(["Corruption", "CE"] + [f"Error s{s}" for s in severities], rows)
        parts.append(f"{_dataset_label(d['dataset'])}: {status}. Source: {_source(r)}.\n\n{summary}\n\n{detail}")
        if d["complete"]:
            evals += [_eval(d["dataset"], "mce", "mCE", d["mce"]),
                      _eval(d["dataset"], "relative_mce", "Relative mCE", d["relative_mce"])]
        evals.append(_eval(d["dataset"], "error", "Top 1 Error (clean)", d["clean_error"]))
    return "\n\n".join(parts), evals


def _esm(files: List[ResultsFile], names: Sequence[str]) -> Section:
    esm = [r for r in files if r.kind == "esm"]
    if not esm:
        return _none("xbn-eval esm"), []
    parts, evals = [], []
    for r in esm:
        d = r.data
        chosen, entry = select_entry(r, names)
        rows = []
        for name, m in d["models"].items():
            worst = max(m["layers"], key=lambda layer: layer["esm_sigma"]) if m["layers"] else None
            rows.append([f"**{name}**" if name == chosen else name, _fmt(m["mean_esm_sigma"], 4), str(len(m["layers"])),
                         f"{worst['esm_sigma']:.4f} (`{worst['name']}`)" if worst else "–"])
        intro = (f"ESM of each BN (paper Definition 2) between its running statistics and the statistics of its input "
                 f"over {_dataset_label(d['dataset'])}. Source: {_source(r)}.")
        parts.append(intro + "\n\n" + _table(("Model", "Mean ESM σ", "BN layers", "Largest ESM σ (layer)"), rows))
        evals.append(_eval(d["dataset"], "esm_sigma", "Mean ESM sigma", entry["mean_esm_sigma"]))
    return "\n\n".join(parts), evals


def _adabn(files: List[ResultsFile], names: Sequence[str]) -> Section:
    adabn = [r for r in files if r.kind == "adabn"]
    if not adabn:
        return _none("xbn-eval adabn"), []
    parts, evals = [], []
    for r in adabn:
        d = r.data
        chosen, entry = select_entry(r, names)
        rows = [[f"**{n}**" if n == chosen else n, m["mode"], m["before_top1"], m["after_top1"]]
                for n, m in d["models"].items()]
        intro = f"Top-1 (%) on {_dataset_label(d['dataset'])} before and after re-estimating the BN statistics. " \
                f"Source: {_source(r)}."
        parts.append(intro + "\n\n" + _table(("Model", "Mode", "Before", "After"), rows))
        evals += [_eval(d["dataset"], "accuracy", "Top 1 Accuracy (before BN adaptation)", entry["before_top1"]),
                  _eval(d["dataset"], "accuracy", f"Top 1 Accuracy (after BN adaptation, {entry['mode']})",
                        entry["after_top1"])]
    return "\n\n".join(parts), evals


_SECTIONS: Dict[str, Callable[[List[ResultsFile], Sequence[str]], Section]] = {
    "recipe": _recipe, "accuracy": _accuracy, "robustness": _robustness,
    "corruption": _corruption, "esm": _esm, "adabn": _adabn,
}


def check_license(license: Optional[str]) -> Optional[str]:
    """``license`` when it is a Hub license id (``apache-2.0``, ``cc-by-nc-4.0``, ``other``: letters, digits and
    ``.-+_``); ``UserError`` otherwise, so that a newline or YAML never reaches the card's metadata."""
    if license is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+_-]*", license):
        raise UserError(f"--license {license!r} is not a license id (letters, digits and .-+_, e.g. apache-2.0 or other)")
    return license


def render_card(
    model: nn.Module,
    repo_id: str,
    config: Dict[str, Any],
    results: Sequence[ResultsFile] = (),
    names: Sequence[str] = (),
    license: Optional[str] = None,
    template: Optional[Union[str, Path]] = None,
) -> str:
    """README.md text for ``repo_id``: YAML metadata with a ``model-index`` built from ``results`` and
    the body of ``template`` (default ``hub_cards/model_card.md``).

    ``config`` is the ``config.json`` written for the same model; ``names`` are the names under which
    the results files may report on this model (see ``select_entry``).
    """
    template_path = Path(template) if template is not None else CARD_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template not found: {template_path}")
    architecture = config["architecture"]
    repo_name = repo_id.split("/")[-1]
    names = [n for n in (*names, architecture, repo_name) if n]
    sections, evals = {}, []
    for key, render in _SECTIONS.items():
        sections[key], section_evals = render(list(results), names)
        evals += [e for e in section_evals if e is not None]
    train_sets = [_dataset_label(r.data["dataset"]) for r in results if r.kind == "train"]
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag=TASK,
        license=check_license(license) or model.pretrained_cfg.get("license") or "apache-2.0",
        tags=TAGS,
        datasets=list(dict.fromkeys(train_sets)) or None,
        model_name=repo_name,
        eval_results=evals or None,
    )
    text = Template(template_path.read_text(encoding="utf-8")).substitute(
        metadata=card_data.to_yaml(),
        repo_id=repo_id,
        repo_name=repo_name,
        summary=_summary(model, architecture, config),
        architecture=_architecture(model, architecture, config),
        **sections,
    )
    ModelCard(text)  # raises if the metadata block does not parse
    return text


def card_results(readme: Union[str, Path]) -> List[Dict[str, Any]]:
    """The ``model-index`` results of a model card (path to README.md, or its text) as plain dicts."""
    card = ModelCard.load(readme) if isinstance(readme, Path) else ModelCard(readme)
    return [
        {"dataset": r.dataset_name, "metric": r.metric_name or r.metric_type, "value": r.metric_value,
         "args": r.metric_args or {}}
        for r in card.data.eval_results or []
    ]
