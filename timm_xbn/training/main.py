"""Command-line entry shared by ``python -m timm_xbn.training`` and ``xbn-train``."""
import sys
from typing import Optional, Sequence

from ..utils.errors import command_errors

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse train.py-style arguments and train. Bad options or data end in one red line and
    ``SystemExit(2)``, Ctrl-C in ``SystemExit(130)`` (``timm_xbn.utils.errors.command_errors``)."""
    from .args import build_args
    from .engine import train

    with command_errors():
        train(build_args(argv=sys.argv[1:] if argv is None else argv))
    return 0
