"""The study's figures (matplotlib, Agg backend), drawn from the results dict alone."""
from pathlib import Path
from typing import Any, Dict, List, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..evaluation.plots import plot_robustness, save_figure  # noqa: E402
from .report import esm_profiles  # noqa: E402

__all__ = ["plot_study", "PLOT_FILES"]

PLOT_FILES = (
    "mlp_setup_one.png",
    "mlp_esm_vs_depth.png",
    "mlp_setup_two_errors.png",
    "resnet_robustness.png",
    "resnet_esm_vs_depth.png",
    "resnet_adabn.png",
)
MODEL_STYLE = {"BN": dict(color="tab:red", linestyle="-", marker="o"), "GNBN": dict(color="tab:blue", linestyle="--", marker="s")}


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
    fig.suptitle("Section 4, setup one: training set = test set S' (paper Figs. 2 and 4)", fontsize=11)
    return save_figure(fig, path, dpi=110, tight=False)


def plot_mlp_esm_vs_depth(mlp: Mapping, path: Path) -> Path:
    """ESM_sigma vs layer for BN and GNBN: setup one early epochs, and setup two at the end per |S|."""
    profiles = esm_profiles(mlp)
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
    return save_figure(fig, path, dpi=110)


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
    return save_figure(fig, path, dpi=110)


def plot_resnet_esm(resnet: Mapping, path: Path) -> Path:
    """Per-channel ESM_sigma of each BN vs its depth in the BN network, per variant."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, entry in resnet["esm"].items():
        layers = entry["layers"]
        ax.plot([r["depth"] for r in layers], [r["esm_sigma_per_channel"] for r in layers], marker=".", label=label)
    ax.set_xlabel("norm layer depth (position among the BN network's norms)")
    ax.set_ylabel("ESM$_\\sigma$ per channel (RMS)")
    ax.set_title("Section 5: ESM$_\\sigma$ on the test split, BN vs XBNBlock-P2 (GN / IN)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


def plot_resnet_adabn(resnet: Mapping, path: Path) -> Path:
    """Top-1 on corrupted test images before and after AdaBN, per corruption and model."""
    adabn = resnet["adabn"]
    models = list(adabn["models"])
    corruptions = list(adabn["models"][models[0]])
    fig, ax = plt.subplots(figsize=(8, 4.4))
    width = 0.8 / len(models)
    colors = plt.get_cmap("tab10")
    x = np.arange(len(corruptions))
    for i, label in enumerate(models):
        before = [adabn["models"][label][c]["before_top1"] for c in corruptions]
        after = [adabn["models"][label][c]["after_top1"] for c in corruptions]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, before, width, color=colors(i), alpha=0.35, edgecolor=colors(i))
        ax.bar(pos, np.array(after) - np.array(before), width, bottom=before, color=colors(i), label=label)
        ax.hlines([adabn["clean_top1"][label]] * len(pos), pos - width / 2, pos + width / 2, colors="k", linewidth=1)
    ax.set_xticks(x)
    ax.set_xticklabels(corruptions, fontsize=9)
    ax.set_ylabel("top-1 on corrupted test images (%)")
    ax.set_title(
        f"Section 5: AdaBN under ImageNet-C corruptions (severity {adabn['severity']})\n"
        "pale = before, solid = gain after recalibration, black line = clean top-1", fontsize=10,
    )
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=len(models), loc="upper right")
    return save_figure(fig, path, dpi=110)


def plot_study(results: Mapping[str, Any], output_dir: Path) -> List[Path]:
    """Write every figure of ``PLOT_FILES`` into ``output_dir``; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mlp, resnet = results["mlp"], results["resnet"]
    rob = resnet["robustness"]
    return [
        plot_mlp_setup_one(mlp, output_dir / PLOT_FILES[0]),
        plot_mlp_esm_vs_depth(mlp, output_dir / PLOT_FILES[1]),
        plot_mlp_setup_two_errors(mlp, output_dir / PLOT_FILES[2]),
        plot_robustness({"models": rob["models"], "seeds": rob["seeds"], "blocks": rob["blocks"]}, output_dir / PLOT_FILES[3]),
        plot_resnet_esm(resnet, output_dir / PLOT_FILES[4]),
        plot_resnet_adabn(resnet, output_dir / PLOT_FILES[5]),
    ]
