"""Rich tables of the grid views that have no older home (``shift``); they render in notebooks too."""
from __future__ import annotations

from typing import Any, Mapping

from rich.table import Table

from ..evaluation.tables import format_value

from ..evaluation.store import scored_images

__all__ = ["shift_table"]


def shift_table(results: Mapping[str, Any]) -> Table:
    """One row per model x method: top-1 (%) and ECE (%) on each shift set (n/a: not scored, e.g. ReaL's ECE);
    the title gives each set's images scored (unreadable files skipped)."""
    sets = list(results["grid"]["pairs"])
    table = Table(title="Distribution-shift sets: top-1 accuracy (%) / ECE (%), "
                        + ", ".join(f"{name} {scored_images(results, [name])}" for name in sets))
    table.add_column("model | method")
    for name in sets:
        table.add_column(f"{name} top-1", justify="right")
        table.add_column("ECE", justify="right")
    for key, per_set in results["results"].items():
        table.add_row(key, *(v for name in sets for v in (format_value(per_set.get(name, {}).get("top1")),
                                                          format_value(per_set.get(name, {}).get("ece")))))
    return table
