"""Run the whole study: Section 4 (MLP) and Section 5 (small ResNet) on real data, then report.

``run_study(StudyConfig.preset(), "xbn_results/study")`` writes ``study.json`` (kind ``study``),
CSV tables, PNG figures and ``summary.txt`` into the output folder and returns the results dict.
Every finished unit (an MLP run, a trained ResNet, an evaluation) is stored under
``<output>/parts/<fingerprint>/``, so an interrupted run resumes where it stopped; the
fingerprint covers the configuration, the data and the torch version, so stale parts are never
reused. All randomness is seeded, so the same configuration gives the same numbers.
"""
import dataclasses
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..evaluation.results import make_results, write_csv, write_json_atomic
from ..surgery import is_bn
from .data import StudyData, load_dataset, subset
from .mlp import MLPConfig, build_mlp, input_shift, train_full_batch
from .plots import plot_study
from .report import evaluate_claims, summary_lines
from .resnet import (
    ImageSplit, ResNetConfig, adabn_under_corruption, build_variants, esm_per_layer, prepare_images,
    robustness_sweep, train_classifier,
)

__all__ = ["StudyConfig", "run_study", "RESULTS_FILE", "SUMMARY_FILE"]

RESULTS_FILE = "study.json"
SUMMARY_FILE = "summary.txt"


@dataclass
class StudyConfig:
    """Everything that determines the study's numbers."""

    dataset: str = "auto"
    image_size: int = 32
    seed: int = 0
    threads: int = 1
    mlp: MLPConfig = field(default_factory=lambda: MLPConfig(test_samples=5000))
    resnet: ResNetConfig = field(default_factory=ResNetConfig)

    @classmethod
    def preset(cls, quick: bool = False, **overrides: Any) -> "StudyConfig":
        """The default study (a few minutes on 2 CPU cores) or ``quick`` (under a minute, for CI)."""
        cfg = cls(**overrides)
        if quick:
            cfg.mlp = dataclasses.replace(cfg.mlp, epochs=16, test_samples=1000, train_sizes=(32, 256), eval_every=2)
            cfg.resnet = dataclasses.replace(
                cfg.resnet, train_samples=1500, eval_samples=400, calib_samples=400, warmup_steps=5,
                deltas=(0.5, 0.9), perturb_seeds=(0, 1), corruptions=("gaussian_noise", "contrast"),
            )
        return cfg

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset, "image_size": self.image_size, "seed": self.seed, "threads": self.threads,
            "mlp": self.mlp.to_dict(), "resnet": self.resnet.to_dict(),
        }


class _Parts:
    """Finished units of work as JSON / safetensors files, keyed by name, for resuming."""

    def __init__(self, root: Path, enabled: bool):
        self.root = root
        self.enabled = enabled
        self.reused = 0

    def json(self, key: str, compute: Callable[[], Any]) -> Any:
        path = self.root / f"{key}.json"
        if self.enabled and path.is_file():
            self.reused += 1
            return json.loads(path.read_text())
        value = compute()
        write_json_atomic(path, value)
        return value

    def trained(self, key: str, model: nn.Module, train: Callable[[], Any]) -> Any:
        """Train ``model`` (``train()`` returns its history), or load weights + history saved earlier."""
        from safetensors.torch import load_file, save_file

        weights = self.root / f"{key}.safetensors"
        history = self.root / f"{key}.json"
        if self.enabled and weights.is_file() and history.is_file():
            model.load_state_dict(load_file(str(weights)))
            model.eval()
            self.reused += 1
            return json.loads(history.read_text())
        value = train()
        self.root.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        write_json_atomic(history, value)
        return value


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fingerprint(cfg: StudyConfig, data: StudyData) -> str:
    blob = json.dumps({
        "config": cfg.to_dict(), "data": [data.name, data.source, len(data.train_y), len(data.test_y)],
        "torch": torch.__version__,
    }, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _mlp_inputs(data: StudyData, x: torch.Tensor) -> torch.Tensor:
    """Flattened images standardized with the training split's per-channel mean/std."""
    mean = data.train_x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = data.train_x.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
    return ((x - mean) / std).flatten(1)


def _run_mlp(cfg: StudyConfig, data: StudyData, parts: _Parts, progress: Progress) -> dict:
    mc = cfg.mlp
    test_x, test_y = subset(data.test_x, data.test_y, mc.test_samples, cfg.seed)
    test_x = _mlp_inputs(data, test_x)
    in_features, classes = test_x.shape[1], data.num_classes

    def run(layout: str, x: torch.Tensor, y: torch.Tensor, eval_every: int, esm_every: int, task) -> dict:
        model = build_mlp(layout, in_features, classes, mc, cfg.seed)
        result = train_full_batch(model, x, y, test_x, test_y, mc.epochs, mc.lr, eval_every, esm_every,
                                  on_epoch=lambda _e: progress.advance(task))
        return asdict(result)

    one_task = progress.add_task("Sec. 4 MLP, setup one (S = S')", total=2 * mc.epochs)
    setup_one = {}
    for label, layout in (("BN", "bn"), ("GNBN", "gnbn")):
        setup_one[label] = parts.json(
            f"mlp_one_{layout}", lambda: run(layout, test_x, test_y, mc.eval_every, mc.esm_every, one_task))
        progress.update(one_task, completed=mc.epochs * len(setup_one))

    sizes = [s for s in mc.train_sizes if s < len(test_y)]  # S must be a proper subset of S'
    if not sizes:
        raise ValueError(f"every training-set size {list(mc.train_sizes)} is >= the {len(test_y)} test samples S' it is drawn from")
    two_task = progress.add_task("Sec. 4 MLP, setup two (S from S')", total=2 * mc.epochs * len(sizes))
    runs: Dict[str, Dict[str, dict]] = {"BN": {}, "GNBN": {}}
    shift = {}
    done = 0
    for size in sizes:
        x, y = subset(test_x, test_y, size, cfg.seed + size)
        shift[str(size)] = input_shift(x, test_x)
        for label, layout in (("BN", "bn"), ("GNBN", "gnbn")):
            # setup two: test error every 4 epochs, ESM at the end only (the paper's Fig. 3(c)/5(a))
            runs[label][str(size)] = parts.json(
                f"mlp_two_{layout}_{size}", lambda: run(layout, x, y, max(mc.eval_every, 4), mc.epochs, two_task))
            done += mc.epochs
            progress.update(two_task, completed=done)
    return {
        "config": mc.to_dict(), "test_samples": len(test_y), "setup_one": setup_one,
        "setup_two": {"train_sizes": sizes, "input_esm_sigma": shift, "runs": runs},
    }


def _resnet_splits(cfg: StudyConfig, data: StudyData):
    rc = cfg.resnet
    train_x, train_y = subset(data.train_x, data.train_y, rc.train_samples, cfg.seed)
    train_x = prepare_images(train_x, cfg.image_size)
    mean, std = train_x.mean(dim=(0, 2, 3)), train_x.std(dim=(0, 2, 3))
    order = torch.randperm(len(data.test_y), generator=torch.Generator().manual_seed(cfg.seed))
    n_calib = min(rc.calib_samples, len(order) // 2)
    n_eval = min(rc.eval_samples, len(order) - n_calib)
    test_x = prepare_images(data.test_x[order[: n_eval + n_calib]], cfg.image_size)
    test_y = data.test_y[order[: n_eval + n_calib]]
    return (
        ImageSplit(train_x, train_y, mean, std),
        ImageSplit(test_x[:n_eval], test_y[:n_eval], mean, std),
        ImageSplit(test_x[n_eval:], test_y[n_eval:], mean, std),
    )


def _run_resnet(cfg: StudyConfig, data: StudyData, parts: _Parts, progress: Progress) -> dict:
    rc = cfg.resnet
    train, evaluation, calib = _resnet_splits(cfg, data)
    models = build_variants(rc, data.num_classes, cfg.seed)
    steps = rc.epochs * -(-len(train.y) // rc.batch_size)
    train_task = progress.add_task("Sec. 5 ResNet training (BN, XBN-GN, XBN-IN)", total=steps * len(models))
    histories = {}
    for i, (label, model) in enumerate(models.items()):
        key = "resnet_" + label.lower().replace("-", "_")
        histories[label] = parts.trained(
            key, model, lambda: train_classifier(model, train, rc, cfg.seed, on_step=lambda: progress.advance(train_task)))
        progress.update(train_task, completed=steps * (i + 1))
        model.eval()

    eval_task = progress.add_task("Sec. 5 evaluations (Delta sweep, ESM, AdaBN)", total=2 + len(rc.corruptions))
    bs = rc.eval_batch_size

    def sweep() -> dict:
        summary, targets = robustness_sweep(models, evaluation, rc.deltas, rc.perturb_seeds, rc.blocks, bs)
        return {"dataset": data.name, "blocks": rc.blocks, "seeds": list(rc.perturb_seeds), "targets": targets,
                "samples": len(evaluation.y), "models": summary}

    robustness = parts.json("resnet_robustness", sweep)
    progress.advance(eval_task)

    depth_of = {name: i for i, name in enumerate((n for n, m in models["BN"].named_modules() if is_bn(m)), start=1)}

    def esm() -> dict:
        out = {}
        for label, model in models.items():
            layers = esm_per_layer(model, evaluation, bs, depth_of)
            out[label] = {"layers": layers, "mean_esm_sigma": sum(r["esm_sigma"] for r in layers) / len(layers)}
        return out

    esm_results = parts.json("resnet_esm", esm)
    progress.advance(eval_task)

    adabn_models: Dict[str, Dict[str, dict]] = {label: {} for label in models}
    for j, corruption in enumerate(rc.corruptions):
        entry = parts.json(f"resnet_adabn_{corruption}", lambda: adabn_under_corruption(
            models, evaluation, calib, corruption, rc.severity, bs, cfg.seed + j))
        for label, r in entry.items():
            adabn_models[label][corruption] = r
        progress.advance(eval_task)

    clean = {label: robustness["models"][label]["clean_top1"] for label in models}
    bn = models["BN"]
    description = (
        f"timm {rc.arch}, channels {tuple(rc.channels)}, stem {rc.stem_width}"
        f"{'' if rc.stem_pool else ' without stem max-pool'}, {cfg.image_size} px RGB, "
        f"{sum(p.numel() for p in bn.parameters()):,} parameters; XBN = P2 GN ({rc.gn_groups} groups) / P2 IN; "
        f"{len(train.y):,} training images x {rc.epochs} epoch(s), SGD lr {rc.lr} batch {rc.batch_size}; "
        f"evaluated on {len(evaluation.y):,} test images; AdaBN recalibrates on {len(calib.y):,} other test images "
        f"with the same corruption"
    )
    return {
        "config": rc.to_dict(),
        "description": description,
        "splits": {"train": len(train.y), "eval": len(evaluation.y), "calib": len(calib.y)},
        "models": {label: {"history": histories[label], "clean_top1": clean[label]} for label in models},
        "robustness": robustness,
        "esm": esm_results,
        "adabn": {"mode": "full", "severity": rc.severity, "corruptions": list(rc.corruptions), "clean_top1": clean,
                  "calibration_samples": len(calib.y), "models": adabn_models},
    }


def _csv_tables(results: dict) -> Dict[str, List[dict]]:
    mlp, rn = results["mlp"], results["resnet"]
    history, esm_rows = [], []
    setups = [("one", None, model, run) for model, run in mlp["setup_one"].items()]
    setups += [("two", int(size), model, run) for model, runs in mlp["setup_two"]["runs"].items() for size, run in runs.items()]
    for setup, size, model, run in setups:
        for r in run["history"]:
            history.append({"setup": setup, "train_size": size, "model": model, "epoch": r["epoch"], "loss": r["loss"],
                            "train_error": r["train_error"], "test_error": r.get("test_error")})
            for e in r.get("esm", []):
                esm_rows.append({"setup": setup, "train_size": size, "model": model, "epoch": r["epoch"], **e})
    robustness = []
    for model, entry in rn["robustness"]["models"].items():
        robustness.append({"model": model, "delta": 0.0, "seed": None, "top1": entry["clean_top1"]})
        for delta, d in entry["deltas"].items():
            for seed, top1 in zip(d["seeds"], d["per_seed"]):
                robustness.append({"model": model, "delta": float(delta), "seed": seed, "top1": top1})
    adabn = rn["adabn"]
    return {
        "mlp_history.csv": history,
        "mlp_esm.csv": esm_rows,
        "resnet_robustness.csv": robustness,
        "resnet_esm.csv": [{"model": m, **r} for m, e in rn["esm"].items() for r in e["layers"]],
        "resnet_adabn.csv": [
            {"model": m, "corruption": c, "severity": adabn["severity"], "clean_top1": adabn["clean_top1"][m], **r}
            for m, per in adabn["models"].items() for c, r in per.items()
        ],
        "claims.csv": [
            {"claim": c["id"], "holds": c["holds"], "case": case["case"], "passed": case["passed"], "numbers": case["numbers"]}
            for c in results["claims"] for case in c["cases"]
        ],
    }


def run_study(
    config: Optional[StudyConfig] = None,
    output_dir: Union[str, Path] = "xbn_results/study",
    resume: bool = True,
    progress: bool = True,
    console: Optional[Console] = None,
) -> Dict[str, Any]:
    """Run the study, write its artefacts into ``output_dir`` and return the ``study`` results dict.

    Args:
        config: ``StudyConfig.preset()`` by default (``StudyConfig.preset(quick=True)`` for CI).
        output_dir: where ``study.json``, the CSV tables, the PNG figures and ``summary.txt`` go.
        resume: reuse finished units stored in ``output_dir/parts`` by an earlier run of the same config.
        progress: show rich progress bars (on ``console``).
    """
    cfg = config or StudyConfig.preset()
    output_dir = Path(output_dir)
    console = console or Console(stderr=True)
    started = time.perf_counter()
    with _torch_threads(cfg.threads):
        data = load_dataset(cfg.dataset, cfg.image_size, cfg.seed)
        console.print(f"[bold]Study data[/bold]: {data.describe()}")
        parts = _Parts(output_dir / "parts" / _fingerprint(cfg, data), resume)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not progress) as bar:
            mlp = _run_mlp(cfg, data, parts, bar)
            resnet = _run_resnet(cfg, data, parts, bar)
    results = make_results("study", {
        "dataset": {"name": data.name, "source": data.source, "description": data.describe(),
                    "train": len(data.train_y), "test": len(data.test_y), "image_shape": list(data.image_shape),
                    "classes": data.classes},
        "config": cfg.to_dict(),
        "seeds": {"init_and_shuffle": cfg.seed, "perturbation": list(cfg.resnet.perturb_seeds),
                  "corruption": [cfg.seed + j for j in range(len(cfg.resnet.corruptions))]},
        "threads": cfg.threads,
        "torch_version": torch.__version__,
        "mlp": mlp,
        "resnet": resnet,
    })
    results["claims"] = [c.to_dict() for c in evaluate_claims(results)]
    write_json_atomic(output_dir / RESULTS_FILE, results)
    for name, rows in _csv_tables(results).items():
        write_csv(output_dir / name, rows)
    plots = plot_study(results, output_dir)
    wall = time.perf_counter() - started
    lines = summary_lines(results)
    lines.append(f"Wall time: {wall:.0f} s ({parts.reused} finished parts reused); results in {output_dir}/")
    lines.append("Figures: " + ", ".join(str(p) for p in plots))
    (output_dir / SUMMARY_FILE).write_text("\n".join(lines) + "\n")
    for line in lines:
        style = "green" if line.startswith("[HOLDS]") else "red" if line.startswith("[DOES NOT HOLD]") else None
        console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)
    return results
