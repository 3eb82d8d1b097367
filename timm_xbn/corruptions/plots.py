"""Heatmap of a corruption results dict: top-1 error per corruption x severity (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..evaluation.plots import save_figure  # noqa: E402
from ..evaluation.store import legacy_layout  # noqa: E402
from .names import CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES  # noqa: E402

__all__ = ["plot_corruption_heatmap"]


def plot_corruption_heatmap(results: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Rows: corruptions (benchmark order), columns: severities 1-5 and the CE; missing cells grey."""
    results = legacy_layout(results)
    errors = results["errors"]
    rows = list(CORRUPTIONS) + [c for c in EXTRA_CORRUPTIONS if c in errors]  # absent ones shown as n/a
    grid = np.array([[errors.get(c, {}).get(str(s), np.nan) for s in SEVERITIES] for c in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(7.2, 0.38 * len(rows) + 1.6))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i, c in enumerate(rows):
        for j in range(len(SEVERITIES)):
            v = grid[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="black" if np.isnan(v) or v > 60 else "white")
        ce = results.get("ce", {}).get(c)
        ax.text(len(SEVERITIES) - 0.35, i, f"CE {ce:.1f}" if ce is not None else "", va="center", fontsize=7)
    ax.set_xticks(range(len(SEVERITIES)), [str(s) for s in SEVERITIES])
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("severity")
    mce = results.get("mce")
    summary = f"mCE {mce:.1f}" if mce is not None else f"incomplete ({len(results.get('missing', []))} missing)"
    clean = results.get("clean_error")
    ax.set_title(f"{results.get('model', '')}: top-1 error (%), {summary}"
                 + (f", clean {clean:.1f}" if clean is not None else ""), fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.18, label="top-1 error (%)")
    return save_figure(fig, path)
