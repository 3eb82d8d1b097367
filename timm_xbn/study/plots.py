"""The study's figures (matplotlib, Agg backend), drawn from the results dict alone."""
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..evaluation.plots import save_figure  # noqa: E402
from .config import JOB_KINDS, QUICK_NOTE  # noqa: E402
from .report import esm_profiles  # noqa: E402
from .tta import TTA_STREAMS  # noqa: E402

__all__ = ["plot_study", "PLOT_FILES"]

MODEL_STYLE = {"BN": dict(color="tab:red", linestyle="-", marker="o"), "GNBN": dict(color="tab:blue", linestyle="--", marker="s")}


_title_note = ""  # set by ``plot_study``: a line above every figure's title (a quick run's warning)


def _save(fig: Any, path: Path, **kwargs: Any) -> Path:
    """``save_figure`` with ``_title_note`` (if any) on top of the figure's title."""
    if _title_note:
        title = fig._suptitle.get_text() if fig._suptitle is not None else ""
        fig.suptitle(f"{_title_note}\n{title}" if title else _title_note, fontsize=11)
    return save_figure(fig, path, **kwargs)


def _esm_by_epoch(history: List[dict]) -> Dict[int, List[tuple]]:
    series: Dict[int, List[tuple]] = {}
    for record in history:
        for row in record.get("esm", []):
            series.setdefault(row["layer"], []).append((record["epoch"], row["esm_sigma"]))
    return series


def plot_mlp_setup_one(mlp: Mapping, path: Path) -> Path:
    """Fig. 2/4 style: train/test error per epoch, and ESM_sigma per epoch for each BN layer."""
    runs = mlp["setup_one"]
    depth = mlp["config"]["depth"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), layout="constrained")
    ax = axes[0]
    for model, run in runs.items():
        style = MODEL_STYLE[model]
        epochs = [r["epoch"] for r in run["history"]]
        ax.plot(epochs, [r["train_error"] for r in run["history"]], color=style["color"], linestyle=":", label=f"{model} train")
        tested = [r for r in run["history"] if "test_error" in r]
        ax.plot([r["epoch"] for r in tested], [r["test_error"] for r in tested], color=style["color"], linestyle="-", label=f"{model} test")
    ax.set_xlabel("epoch (= iteration, full batch)")
    ax.set_ylabel("top-1 error (%)")
    ax.set_title("(a) train error (batch stats) vs\ntest error (running stats)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    cmap = plt.get_cmap("viridis")
    top = max(row[1] for run in runs.values() for s in _esm_by_epoch(run["history"]).values() for row in s)
    for ax, model in zip(axes[1:], ("BN", "GNBN")):
        for layer, points in sorted(_esm_by_epoch(runs[model]["history"]).items()):
            x, y = zip(*points)
            ax.plot(x, y, color=cmap((layer - 1) / max(1, depth - 1)), linewidth=1.2)
        ax.set_yscale("log")
        ax.set_ylim(top=top * 1.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("ESM$_\\sigma$ on the test set (log)")
        which = "every layer" if model == "BN" else "the even layers (odd layers: GN)"
        ax.set_title(f"({'b' if model == 'BN' else 'c'}) {model}: ESM$_\\sigma$ per epoch\nof the BNs in {which}", fontsize=10)
        ax.grid(alpha=0.3)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, depth))
    fig.colorbar(sm, ax=axes[1:].tolist(), label="layer (depth)")
    fig.suptitle(f"Section 4, setup one: training set = test set S' (paper Figs. 2 and 4), seed {mlp['by_seed'][0]['seed']}", fontsize=11)
    return _save(fig, path, dpi=110, tight=False)


def plot_mlp_esm_vs_depth(mlp: Mapping, path: Path) -> Path:
    """ESM_sigma vs layer for BN and GNBN: setup one early epochs, and setup two at the end per |S|."""
    profiles = esm_profiles(mlp, mlp["config"]["epochs"])
    first_case = next(iter(profiles))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    for model, points in profiles[first_case].items():
        x, y = zip(*points)
        ax.plot(x, y, label=model, **MODEL_STYLE[model])
    ax.set_title(f"(a) {first_case}", fontsize=10)
    sizes = mlp["setup_two"]["train_sizes"]
    colors = plt.get_cmap("plasma")(np.linspace(0.05, 0.85, len(sizes)))
    ax2 = axes[1]
    shift = mlp["setup_two"]["input_esm_sigma"]
    for size, color in zip(sizes, colors):
        for model, runs in mlp["setup_two"]["runs"].items():
            pts = sorted((r["layer"], r["esm_sigma"]) for r in runs[str(size)]["final_esm"])
            x, y = zip(*pts)
            style = MODEL_STYLE[model]
            ax2.plot(x, y, color=color, linestyle=style["linestyle"], marker=style["marker"], markersize=3,
                     label=f"{model}-{size}")
        ax2.plot([0], [shift[str(size)]], color=color, marker="*", markersize=10, linestyle="none")
    ax2.set_title("(b) setup two: S sampled from S', end of training (* = layer 0: input shift)", fontsize=10)
    for a in axes:
        a.set_xlabel("layer (depth)")
        a.set_ylabel("ESM$_\\sigma$ (log)")
        a.set_yscale("log")
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle("Section 4: ESM$_\\sigma$ vs depth, BN in every layer vs GN in the odd layers (GNBN)", fontsize=11)
    return _save(fig, path, dpi=110)


def plot_mlp_setup_two_errors(mlp: Mapping, path: Path) -> Path:
    """Fig. 3(a)/5(b) style: final train and test error vs training-set size."""
    sizes = mlp["setup_two"]["train_sizes"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model, runs in mlp["setup_two"]["runs"].items():
        style = MODEL_STYLE[model]
        ax.plot(sizes, [runs[str(s)]["test_error"] for s in sizes], label=f"{model} test", **style)
        ax.plot(sizes, [runs[str(s)]["train_error"] for s in sizes], color=style["color"], linestyle=":",
                marker=style["marker"], fillstyle="none", label=f"{model} train")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    ax.set_xlabel("training-set size |S| (sampled from S')")
    ax.set_ylabel("top-1 error at the end of training (%)")
    ax.set_title("Section 4, setup two: error vs training-set size (paper Figs. 3a, 5b)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, dpi=110)


def _seed_values(per_seed: Mapping[str, Any], get) -> np.ndarray:
    return np.array([get(v) for v in per_seed.values()], dtype=np.float64)


def _mean_sd(values: np.ndarray) -> tuple:
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def plot_resnet_top1(resnet: Mapping, path: Path) -> Path:
    """Table 1 style: test top-1 per variant, mean over training seeds with each seed as a dot."""
    nets = resnet["networks"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.get_cmap("tab10")
    for i, (label, seeds) in enumerate(nets.items()):
        values = _seed_values(seeds, lambda r: r["top1"])
        mean, sd = _mean_sd(values)
        ax.bar(i, mean, 0.6, yerr=sd, color=colors(i), alpha=0.5, capsize=4)
        ax.plot(np.full(len(values), i), values, "k.", markersize=6)
    ax.set_xticks(range(len(nets)))
    ax.set_xticklabels(list(nets), fontsize=9)
    low = min(r["top1"] for seeds in nets.values() for r in seeds.values())
    ax.set_ylim(max(0.0, low - 3), None)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Section 5 (Table 1): top-1 per variant, mean ± sd over {len(resnet['seeds'])} training seeds "
                 "(dots: seeds)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path, dpi=110)


def plot_resnet_robustness(resnet: Mapping, path: Path) -> Path:
    """Figure 8 style: top-1 drop vs Delta per variant, mean ± sd over training seeds."""
    rob = resnet["robustness"]
    fig, ax = plt.subplots(figsize=(6.6, 4.2))
    deltas = [0.0] + [float(d) for d in rob["deltas"]]
    for label, seeds in rob["models"].items():
        drops = np.array([[0.0] + [e["clean_top1"] - e["deltas"][str(d)]["mean"] for d in rob["deltas"]]
                          for e in seeds.values()])
        mean, sd = drops.mean(0), drops.std(0, ddof=1) if len(drops) > 1 else np.zeros(len(deltas))
        ax.errorbar(deltas, mean, yerr=sd, marker="o", capsize=3, label=label)
    ax.set_xlabel("noise magnitude Delta (Eq. 5)")
    ax.set_ylabel("top-1 drop (points)")
    ax.set_title(f"Section 5 (Fig. 8): first BN of the first {rob['blocks']} bottlenecks disturbed\n"
                 f"mean ± sd over {len(resnet['seeds'])} training seeds, each the mean of "
                 f"{len(rob['perturb_seeds'])} perturbation seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, dpi=110)


def plot_resnet_esm(resnet: Mapping, path: Path) -> Path:
    """Per-channel ESM_sigma of each BN vs its depth in the BN network, clean and shifted test data."""
    esm = resnet["esm"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, which in zip(axes, ("clean", "shifted")):
        for label, seeds in esm["models"].items():
            per_seed = [sorted((r["depth"], r["esm_sigma_per_channel"]) for r in e[which]) for e in seeds.values()]
            depth = [d for d, _ in per_seed[0]]
            values = np.array([[v for _, v in rows] for rows in per_seed])
            ax.plot(depth, values.mean(0), marker=".", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("norm layer depth (position among the BN network's norms)")
        data = "clean test split" if which == "clean" else f"test split under {esm['corruption']} (severity {esm['severity']})"
        ax.set_title(f"{data}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ESM$_\\sigma$ per channel (RMS), mean over seeds (log)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Section 5: estimation shift of every BN, BN vs XBNBlock-P2 (GN / IN)", fontsize=11)
    return _save(fig, path, dpi=110)


def plot_resnet_adabn(resnet: Mapping, path: Path) -> Path:
    """Top-1 on corrupted test images before and after AdaBN, per corruption and model (mean over seeds)."""
    adabn = resnet["adabn"]
    models = list(adabn["models"])
    corruptions = adabn["corruptions"]
    fig, ax = plt.subplots(figsize=(8, 4.4))
    width = 0.8 / len(models)
    colors = plt.get_cmap("tab10")
    x = np.arange(len(corruptions))
    for i, label in enumerate(models):
        seeds = adabn["models"][label]
        before = [_seed_values(seeds, lambda r: r[c]["before_top1"]).mean() for c in corruptions]
        after = [_seed_values(seeds, lambda r: r[c]["after_top1"]).mean() for c in corruptions]
        clean = _seed_values(seeds, lambda r: r["clean_top1"]).mean()
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, before, width, color=colors(i), alpha=0.35, edgecolor=colors(i))
        ax.bar(pos, np.array(after) - np.array(before), width, bottom=before, color=colors(i), label=label)
        ax.hlines([clean] * len(pos), pos - width / 2, pos + width / 2, colors="k", linewidth=1)
    ax.set_xticks(x)
    ax.set_xticklabels(corruptions, fontsize=9)
    ax.set_ylabel("top-1 on the corrupted test split (%)")
    ax.set_title(
        f"Section 5: AdaBN under ImageNet-C corruptions (severity {adabn['severity']}), mean over seeds\n"
        "pale = before, solid = change after recalibration, black line = clean top-1", fontsize=10,
    )
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=len(models), loc="upper right")
    return _save(fig, path, dpi=110)


def plot_resnet_small_batch(resnet: Mapping, path: Path) -> Path:
    """Table 6 style: test top-1 vs training batch size per variant, mean ± sd over seeds."""
    sb = resnet["small_batch"]
    sizes = sorted(sb["batch_sizes"])
    fig, ax = plt.subplots(figsize=(6.6, 4.2))
    for label, per_size in sb["models"].items():
        values = np.array([[per_size[str(b)][str(s)] for s in resnet["seeds"]] for b in sizes])
        sd = values.std(1, ddof=1) if values.shape[1] > 1 else np.zeros(len(sizes))
        ax.errorbar(sizes, values.mean(1), yerr=sd, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(b) for b in sizes])
    ax.set_xlabel("images per training step")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Section 5 (Table 6): small-batch training, {sb['iterations']} iterations each\n"
                 f"mean ± sd over {len(resnet['seeds'])} training seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, dpi=110)


def plot_tta(tta: Mapping, path: Path) -> Path:
    """Test-time adaptation: top-1 error per method, one panel per stream, bars per variant (mean ± sd over seeds)."""
    cfg = tta["config"]
    methods, variants, seeds = cfg["methods"], list(tta["models"]), [str(s) for s in tta["seeds"]]
    fig, axes = plt.subplots(1, len(TTA_STREAMS), figsize=(17, 4.4), sharey=True)
    width = 0.8 / len(variants)
    x = np.arange(len(methods))
    for ax, stream in zip(axes, TTA_STREAMS):
        for i, variant in enumerate(variants):
            values = np.array([[tta["models"][variant][s][stream][m] for s in seeds] for m in methods])
            sd = values.std(1, ddof=1) if values.shape[1] > 1 else np.zeros(len(methods))
            ax.bar(x - 0.4 + width * (i + 0.5), values.mean(1), width, yerr=sd, capsize=2, label=variant)
        ax.set_xticks(x)
        ax.set_xticklabels(methods, fontsize=8, rotation=45)
        ax.set_title(stream, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("top-1 error (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Test-time adaptation, continual stream of {cfg['test_samples'] or 'all'} test images "
                 f"({', '.join(cfg['corruptions'])}, severity {cfg['severity']}): i.i.d. / label-shift (Dirichlet "
                 f"{cfg['dirichlet']:g}) batches of {cfg['batch_size']}; the first {cfg['short_samples']} at batch 1 and "
                 "in i.i.d. batches; mean ± sd over training seeds", fontsize=10)
    return _save(fig, path, dpi=110)


# figure -> (writer, the section of the results it draws, the job kind its numbers come from)
_FIGURES = {
    "mlp_setup_one.png": (plot_mlp_setup_one, "mlp", "mlp"),
    "mlp_esm_vs_depth.png": (plot_mlp_esm_vs_depth, "mlp", "mlp"),
    "mlp_setup_two_errors.png": (plot_mlp_setup_two_errors, "mlp", "mlp"),
    "resnet_top1.png": (plot_resnet_top1, "resnet", "network"),
    "resnet_robustness.png": (plot_resnet_robustness, "resnet", "network"),
    "resnet_esm_vs_depth.png": (plot_resnet_esm, "resnet", "network"),
    "resnet_adabn.png": (plot_resnet_adabn, "resnet", "network"),
    "resnet_small_batch.png": (plot_resnet_small_batch, "resnet", "small_batch"),
    "tta_streams.png": (plot_tta, "tta", "tta"),
}
PLOT_FILES = tuple(_FIGURES)


def plot_study(results: Mapping[str, Any], output_dir: Path, kinds: Sequence[str] = JOB_KINDS) -> List[Path]:
    """Write the figures of ``PLOT_FILES`` whose job kinds are in ``kinds`` into ``output_dir``; returns their
    paths. A quick run's figures say so above their titles."""
    global _title_note
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _title_note = QUICK_NOTE if results.get("config", {}).get("preset") == "quick" else ""
    try:
        return [write(results[section], output_dir / name) for name, (write, section, kind) in _FIGURES.items()
                if kind in kinds]
    finally:
        _title_note = ""
