"""Figures (matplotlib, Agg backend): accuracy vs noise magnitude (the paper's Figure 8) and ESM_sigma vs depth."""
from pathlib import Path
from typing import Any, Mapping, Union

import matplotlib

from ..utils.files import atomic_write
from .store import legacy_layout

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_robustness", "plot_esm", "save_figure"]


def plot_robustness(results: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Top-1 vs Delta per model, mean over seeds with std error bars; Delta = 0 is the clean accuracy."""
    results = legacy_layout(results)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, entry in results["models"].items():
        deltas = sorted(entry["deltas"], key=float)
        x = [0.0] + [float(d) for d in deltas]
        y = [entry["clean_top1"]] + [entry["deltas"][d]["mean"] for d in deltas]
        err = [0.0] + [entry["deltas"][d]["std"] for d in deltas]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    seeds = results.get("seeds", [])
    blocks = results.get("blocks")
    ax.set_xlabel("noise magnitude $\\Delta$")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Disturbed BN statistics (blocks: {blocks}, {len(seeds)} seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_esm(results: Mapping[str, Any], path: Union[str, Path], per_channel: bool = False) -> Path:
    """ESM_sigma of each BN vs its depth, one line per model (the paper's Figures 2-5 style)."""
    key = "esm_sigma_per_channel" if per_channel else "esm_sigma"
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, entry in results["models"].items():
        layers = entry["layers"]
        ax.plot([r["depth"] for r in layers], [r[key] for r in layers], marker=".", label=label)
    ax.set_xlabel("BN layer depth (index among the BNs of the model)")
    ax.set_ylabel("ESM$_\\sigma$" + (" per channel (RMS)" if per_channel else ""))
    ax.set_title(f"Estimation shift on {Path(str(results.get('dataset', ''))).name or 'test data'}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: Union[str, Path], dpi: int = 120, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` (parents created), then close it so long sweeps do not leak figures."""
    path = Path(path)
    try:
        if tight:
            fig.tight_layout()
        with atomic_write(path) as tmp:  # a failed write keeps the previous figure
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
