"""How many timm models of each supported family the surgery converts (the README's table).

Every model of the family's timm module is built on the meta device (no memory, no weights) and
converted with P1 and one channel per group, so only block discovery and BN presence decide.

    python benchmarks/surgery_coverage.py
    python benchmarks/surgery_coverage.py --tiny     # the first 3 models of 2 families (the test)
"""
import argparse
import warnings
from typing import List, Optional, Sequence

import timm
import torch
from rich.console import Console
from rich.table import Table

import timm_xbn
from timm_xbn.surgery import find_residual_blocks, is_bn

MODULES = ("resnet", "regnet", "res2net", "resnest", "byobnet", "cspnet", "efficientnet", "mobilenetv3")


def converts(name: str) -> bool:
    with torch.device("meta"):
        model = timm.create_model(name)
        if not find_residual_blocks(model) or not any(is_bn(m) for m in model.modules()):
            return False
        timm_xbn.convert(model, position="P1", channels_per_group=1, inplace=True)
    return True


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    """Print the table; return its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the first 3 models of 2 families (the test)")
    args = parser.parse_args(argv)
    modules, limit = (MODULES[:2], 3) if args.tiny else (MODULES, None)
    warnings.filterwarnings("ignore")
    rows = []
    table = Table(title=f"timm {timm.__version__}: models the surgery converts")
    for column in ("timm module", "converted", "models", "not converted (first 6)"):
        table.add_column(column)
    for module in modules:
        names = timm.list_models(module=module)[:limit]
        failed = [n for n in names if not converts(n)]
        rows.append({"module": module, "converted": len(names) - len(failed), "models": len(names), "not_converted": failed})
        table.add_row(module, str(len(names) - len(failed)), str(len(names)), ", ".join(failed[:6]))
    Console(width=160).print(table)
    return rows


if __name__ == "__main__":
    main()
