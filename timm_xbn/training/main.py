"""Command-line entry shared by ``python -m timm_xbn.training`` and ``xbn-train``."""
import sys
from typing import Optional, Sequence

import typer

from ..utils.errors import USER_ERRORS
from ..utils.interrupts import EXIT_CODE, Interrupted

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse train.py-style arguments and train; errors in the options print one red line and return 2."""
    from .args import build_args
    from .engine import train

    try:
        args = build_args(argv=sys.argv[1:] if argv is None else argv)
        train(args)
    except USER_ERRORS as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        return 2
    except Interrupted as stopped:
        typer.secho(str(stopped), fg="yellow", err=True)
        return EXIT_CODE
    return 0
