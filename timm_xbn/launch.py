"""Run one of timm's own scripts with the ``xbn_*`` models registered.

    python -m timm_xbn.launch validate.py --model xbn_resnet50 --checkpoint model_best.pth.tar --data-dir /data/imagenet/val
    python -m timm_xbn.launch benchmark.py --model xbn_resnet50 --bench inference
    torchrun --nproc_per_node=8 -m timm_xbn.launch train.py -c recipes/xbn_resnet50_standard.yaml --data-dir /data/imagenet

timm's scripts (``train.py``, ``validate.py``, ``benchmark.py``, ``inference.py`` of a timm source
checkout) look models up by name in timm's registry, which holds a plugin's models only once the
plugin is imported; only ``train.py`` has ``--device-modules`` to do that, so ``validate.py --model
xbn_resnet50`` ends in ``Unknown model``. This module imports ``timm_xbn`` and then runs SCRIPT as
``__main__`` with ``sys.argv = [SCRIPT, *ARGS]`` and the script's folder first on ``sys.path``,
exactly as ``python SCRIPT ARGS`` would.
"""
import runpy
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["launch", "main"]

USAGE = "usage: python -m timm_xbn.launch SCRIPT [ARGS ...]   (e.g. SCRIPT = timm's validate.py, train.py, benchmark.py)"


def _script(script: str) -> Path:
    path = Path(script)
    if not path.is_file():
        raise FileNotFoundError(f"script not found: {script} (timm's train.py / validate.py / benchmark.py / "
                                "inference.py are in a timm source checkout, not in the pip package)")
    return path


def launch(script: str, args: Sequence[str] = ()) -> None:
    """Import ``timm_xbn`` (registers the models) and run ``script`` as ``__main__`` with ``args``.

    ``sys.argv`` and ``sys.path`` are restored afterwards; the script's ``SystemExit`` propagates.
    Raises ``FileNotFoundError`` when ``script`` is not a file.
    """
    path = _script(script)
    import timm_xbn  # noqa: F401  (registers the xbn_* models with timm)

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.resolve().parent))
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv[:], sys.path[:] = saved_argv, saved_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m timm_xbn.launch SCRIPT ARGS``: 0 when the script returns, its own code when it exits,
    2 (one red line) when SCRIPT is missing."""
    import typer

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        typer.echo(USAGE + "\n\n" + __doc__.split("\n\n")[1])
        return 0 if argv else 2
    try:
        _script(argv[0])
    except FileNotFoundError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        return 2
    launch(argv[0], argv[1:])  # the script's own errors keep their tracebacks, as with `python SCRIPT`
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
