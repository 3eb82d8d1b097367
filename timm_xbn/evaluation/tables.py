"""Rich tables of results dicts (printed by the CLI; they also render in notebooks)."""
from typing import Any, List, Mapping, Optional

from rich.table import Table

from .data import order_label
from .store import legacy_layout, scored_images

__all__ = ["adabn_table", "esm_tables", "format_value", "robustness_table"]


def format_value(value: Optional[float], digits: int = 2) -> str:
    """A table cell: ``value`` with ``digits`` decimals, ``n/a`` where there is none."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def robustness_table(results: Mapping[str, Any]) -> Table:
    """One row per model: clean top-1 and ECE, then top-1 mean ± std over seeds for each Delta; the title counts
    the images scored (unreadable files are skipped and listed in the JSON)."""
    results = legacy_layout(results)
    deltas = [str(float(d)) for d in results["deltas"]]
    skipped = results.get("skipped_images", {}).get("count", 0)
    table = Table(title=f"Top-1 (%) with disturbed BN statistics: blocks {results['blocks']}, "
                        f"seeds {results['seeds']}, {results['num_images']} images scored"
                        + (f" ({skipped} unreadable skipped)" if skipped else ""))
    table.add_column("model")
    table.add_column("clean", justify="right")
    table.add_column("clean ECE", justify="right")
    for d in deltas:
        table.add_column(f"Δ={d}", justify="right")
    for label, entry in results["models"].items():
        cells = [f"{entry['deltas'][d]['mean']:.2f} ± {entry['deltas'][d]['std']:.2f}" for d in deltas]
        table.add_row(label, f"{entry['clean_top1']:.2f}", format_value(entry.get("clean_ece")), *cells)
    return table


def adabn_table(results: Mapping[str, Any]) -> Table:
    """One row per model: top-1/top-5 before and after recalibration; the title says how many images were scored."""
    scored = scored_images(results)
    results = legacy_layout(results)
    table = Table(title=f"BN recalibration on {results['dataset']}, "
                        f"{order_label(results.get('order'), results.get('order_seed'))}" + (f", {scored}" if scored else ""))
    for column in ("model", "mode", "top-1 before", "top-1 after", "change", "top-5 before", "top-5 after",
                   "ECE before", "ECE after", "NLL before", "NLL after"):
        table.add_column(column, justify="left" if column in ("model", "mode") else "right")
    for label, e in results["models"].items():
        mode = e["mode"] + (f" (N={e['prior']:g})" if "prior" in e else "")
        table.add_row(label, mode, f"{e['before_top1']:.2f}", f"{e['after_top1']:.2f}",
                      f"{e['after_top1'] - e['before_top1']:+.2f}", f"{e['before_top5']:.2f}", f"{e['after_top5']:.2f}",
                      *(format_value(e.get(k)) for k in ("before_ece", "after_ece")),
                      *(format_value(e.get(k), 3) for k in ("before_nll", "after_nll")))
    return table


def esm_tables(results: Mapping[str, Any]) -> List[Table]:
    """One table per model: each BN's depth, name, channels, ESM_mu, ESM_sigma (and per channel)."""
    tables = []
    for label, entry in results["models"].items():
        table = Table(title=f"{label}: ESM per BN layer (mean ESM_σ {entry['mean_esm_sigma']:.4g})")
        for column in ("depth", "layer", "channels", "ESM_μ", "ESM_σ", "ESM_μ/√C", "ESM_σ/√C"):
            table.add_column(column, justify="left" if column == "layer" else "right", overflow="fold")
        for r in entry["layers"]:
            table.add_row(str(r["depth"]), r["name"], str(r["channels"]), f"{r['esm_mu']:.4g}", f"{r['esm_sigma']:.4g}",
                          f"{r['esm_mu_per_channel']:.4g}", f"{r['esm_sigma_per_channel']:.4g}")
        tables.append(table)
    return tables
