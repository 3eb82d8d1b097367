"""Tables and a chart of ``adapt`` results: per-corruption error at one severity, means, mCE, passes."""
from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any, Mapping, Optional, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.table import Table  # noqa: E402

from ..corruptions.names import ALL_CORRUPTIONS  # noqa: E402
from .streams import stream_label  # noqa: E402
from ..evaluation.plots import save_figure  # noqa: E402
from ..evaluation.store import legacy_layout, scored_images  # noqa: E402

__all__ = ["adaptation_rows", "adaptation_table", "plot_adaptation", "protocol_label", "table_severity"]


def table_severity(results: Mapping[str, Any]) -> int:
    """The severity the tables show: the highest one evaluated (5 when it is there, as the benchmarks report)."""
    results = legacy_layout(results)
    return max(int(p.split("/")[1]) for p in results["pairs"])


def _mean(entry: Mapping[str, Any], severity: Optional[int]) -> Optional[float]:
    values = [v for sev in entry["errors"].values() for s, v in sev.items() if severity is None or int(s) == severity]
    return fmean(values) if values else None


def adaptation_rows(results: Mapping[str, Any], severity: Optional[int] = None) -> list[dict[str, Any]]:
    """One row per model x method: the source model's clean error, error (%) per corruption at
    ``severity``, its mean, the mean over all pairs, mCE / relative mCE (complete ImageNet-C only), the
    error over the whole stream of a mixed stream, the mean ECE (%) over the pairs, and passes per image."""
    results = legacy_layout(results)
    severity = severity or table_severity(results)
    corruptions = [c for c in ALL_CORRUPTIONS if any(p.startswith(c + "/") for p in results["pairs"])]
    rows = []
    for entry in results["entries"].values():
        row = {"model": entry["model"], "method": entry["method"], "clean (source)": entry["clean_error"]}
        row.update({c: entry["errors"].get(c, {}).get(str(severity)) for c in corruptions})
        row.update({f"mean@{severity}": _mean(entry, severity), "mean": _mean(entry, None),
                    "mCE": entry["mce"], "rel. mCE": entry["relative_mce"], "ECE": entry.get("mean_ece"),
                    **({"mixed stream": entry["mixed"]["top1_error"]} if "mixed" in entry else {}),
                    "fwd/img": entry["passes_per_image"]["forward"], "bwd/img": entry["passes_per_image"]["backward"]})
        rows.append(row)
    return rows


def protocol_label(results: Mapping[str, Any]) -> str:
    """``"episodic adaptation"``, ``"continual adaptation"``, or for a mixed stream (no protocol)
    ``"one mixed stream, never reset"``."""
    results = legacy_layout(results)
    return f"{results['protocol']} adaptation" if results.get("protocol") else "one mixed stream, never reset"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def adaptation_table(results: Mapping[str, Any], severity: Optional[int] = None) -> Table:
    """Rich table of ``adaptation_rows`` (printed by ``xbn-eval adapt``); the title says how many images were scored."""
    scored = scored_images(results)
    results = legacy_layout(results)
    rows = adaptation_rows(results, severity)
    table = Table(title=f"top-1 error (%) on {results['dataset']}" + (f" ({scored} per pass)" if scored else "")
                        + f", {protocol_label(results)}, per corruption at severity {severity or table_severity(results)}; "
                        f"{stream_label(results)}")
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("model", "method") else "right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row.values()])
    return table


def plot_adaptation(results: Mapping[str, Any], path: Union[str, Path], severity: Optional[int] = None) -> Path:
    """Grouped bars: mean error at ``severity`` (highest by default) per method, one bar per model."""
    results = legacy_layout(results)
    severity = severity or table_severity(results)
    entries = list(results["entries"].values())
    methods = list(dict.fromkeys(e["method"] for e in entries))
    models = list(dict.fromkeys(e["model"] for e in entries))
    by = {(e["model"], e["method"]): _mean(e, severity) for e in entries}
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2.5, 3.6))
    for i, model in enumerate(models):
        values = [by.get((model, m)) for m in methods]
        xs = np.arange(len(methods)) + (i - (len(models) - 1) / 2) * width
        bars = ax.bar(xs, [np.nan if v is None else v for v in values], width, label=model)
        ax.bar_label(bars, labels=[_fmt(v) if v is not None else "" for v in values], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(methods)), methods, fontsize=8)
    ax.set_ylabel(f"mean top-1 error (%), severity {severity}")
    ax.set_ylim(0, 100)
    ax.set_title(f"test-time adaptation, {protocol_label(results)}", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
