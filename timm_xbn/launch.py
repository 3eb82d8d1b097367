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

For validate.py and inference.py the launcher first checks, with one error line each, that --checkpoint
loads weights-only (a pickled checkpoint is refused, never loaded; a folder is validate.py's bulk mode and
each *.pth.tar / *.pth in it is checked) and that the pretrained weights they would load are reachable
(validate.py without --model validates dpn92).
"""
import runpy
import sys
from pathlib import Path
from typing import Optional, Sequence

from .utils.errors import UserError, command_errors

__all__ = ["check_script_args", "launch", "main"]

#: the scripts whose arguments are checked first (``check_script_args``)
CHECKED_SCRIPTS = ("validate.py", "inference.py")
USAGE = "usage: python -m timm_xbn.launch SCRIPT [ARGS ...]   (e.g. SCRIPT = timm's validate.py, train.py, benchmark.py)"


def _script(script: str) -> Path:
    path = Path(script)
    if not path.is_file():
        raise FileNotFoundError(f"script not found: {script} (timm's train.py / validate.py / benchmark.py / "
                                "inference.py are in a timm source checkout, not in the pip package)")
    return path


#: validate.py's ``--model`` default: without ``--model`` it validates this model
VALIDATE_DEFAULT_MODEL = "dpn92"
#: the checkpoints validate.py's bulk mode reads from a ``--checkpoint`` folder
BULK_PATTERNS = ("*.pth.tar", "*.pth")


def _check_checkpoint(path: Path) -> None:
    """One-line error when ``path`` does not load weights-only (a pickle, a damaged file)."""
    import torch

    from .models.checkpoints import load_problem

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            safe_open(str(path), "pt").keys()
        else:
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"--checkpoint {path}: {load_problem(path, err)}") from None


def check_script_args(script: str, args: Sequence[str]) -> None:
    """What timm's validate.py or inference.py would end in a traceback on (or, for a pickle, run), as one-line
    errors: a ``--checkpoint`` that does not load weights-only (a pickle, a damaged file; for validate.py a
    folder is its bulk mode, every ``*.pth.tar`` / ``*.pth`` in it is checked), or no reachable pretrained
    weights where the script loads them (validate.py without ``--checkpoint``, with its default model
    ``VALIDATE_DEFAULT_MODEL`` when ``--model`` is not given; inference.py with ``--pretrained``)."""
    import argparse

    from .models.pretrained import check_pretrained

    validate = script == "validate.py"
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model", "-m", default=VALIDATE_DEFAULT_MODEL if validate else None)
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--pretrained", action="store_true")
    known, _ = parser.parse_known_args(list(args))
    if known.checkpoint:
        path = Path(known.checkpoint)
        if validate and path.is_dir():
            files = sorted({p for pattern in BULK_PATTERNS for p in path.glob(pattern)})
            if not files:
                raise FileNotFoundError(f"--checkpoint {path} is a folder without checkpoints ({', '.join(BULK_PATTERNS)})")
        elif not path.is_file():
            raise FileNotFoundError(f"--checkpoint {path} not found")
        else:
            files = [path]
        for file in files:
            _check_checkpoint(file)
    elif known.model and (validate or known.pretrained):
        check_pretrained(known.model)  # validate.py loads pretrained weights when no checkpoint is given


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
    """``python -m timm_xbn.launch SCRIPT ARGS``: 0 when the script returns, its own code when it exits.
    Runs under the project's one handler (``timm_xbn.utils.errors.command_errors``): a missing SCRIPT, a
    checkpoint validate.py could not load, or a missing file is one red line and exit 2, Ctrl-C exit 130,
    and any other exception keeps its traceback, as with ``python SCRIPT``."""
    import typer

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        typer.echo(USAGE + "\n\n" + __doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[-1].strip())
        return 0 if argv else 2
    with command_errors():
        if Path(argv[0]).name in CHECKED_SCRIPTS:
            _script(argv[0])
            check_script_args(Path(argv[0]).name, argv[1:])
        launch(argv[0], argv[1:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
