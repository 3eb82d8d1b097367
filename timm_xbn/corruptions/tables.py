"""Rich table of a corruption results dict (printed by ``xbn-eval corruption``; renders in notebooks)."""
from __future__ import annotations

from typing import Any, Mapping

from rich.table import Table

from ..evaluation.data import order_label
from ..evaluation.store import legacy_layout
from ..evaluation.tables import format_value, scored_images
from .names import ALL_CORRUPTIONS, SEVERITIES

__all__ = ["corruption_table"]


def corruption_table(results: Mapping[str, Any]) -> Table:
    """One row per corruption: top-1 error (%) per severity, CE, relative CE and the mean ECE (%) over the
    severities; mCE and the mean ECE over every pair in the footer."""
    scored = scored_images(results)
    results = legacy_layout(results)
    errors, ce, rel = results["errors"], results.get("ce", {}), results.get("relative_ce", {})
    title = (f"{results['model']} on {results['dataset']}: top-1 error (%)"
             + (f", clean {format_value(results['clean_error'])}" if results.get("clean_error") is not None else "")
             + (f", BN adapted ({results['adapt']})" if results.get("adapt") else "")
             + f", {order_label(results.get('order'), results.get('order_seed'))}"
             + (f"; {scored} per pass" if scored else ""))
    table = Table(title=title, show_footer=True)
    table.add_column("corruption", footer="mCE" + ("" if results["complete"] else " (incomplete)"))
    for s in SEVERITIES:
        table.add_column(str(s), justify="right")
    table.add_column("CE", justify="right", footer=format_value(results.get("mce")))
    table.add_column("rel. CE", justify="right", footer=format_value(results.get("relative_mce")))
    table.add_column("ECE", justify="right", footer=format_value(results.get("mean_ece")))
    ece = results.get("ece", {})
    for c in (c for c in ALL_CORRUPTIONS if c in errors):
        eces = [v for v in ece.get(c, {}).values() if v is not None]
        table.add_row(c, *[format_value(errors[c].get(str(s))) for s in SEVERITIES], format_value(ce.get(c)), format_value(rel.get(c)),
                      format_value(sum(eces) / len(eces) if eces else None))
    if results.get("missing"):
        shown = ", ".join(results["missing"][:8]) + (" ..." if len(results["missing"]) > 8 else "")
        table.caption = f"missing for the benchmark metrics: {shown}"
    return table
