"""The output folder of a run, checked before any model or data work.

Two things are settled up front, so that a bad location or a stale folder costs seconds, not a
training run: the folder can be created and written to, and it holds no checkpoints of another
run. A fresh run into a folder with checkpoints is refused rather than rotated or cleared: those
files are somebody's results (and often large), and ``--resume auto`` must never have to guess
which of two runs it continues.
"""
import tempfile
from pathlib import Path
from typing import Union

from ..utils.errors import UserError
from .checkpoint import checkpoint_files, find_resume_checkpoint

__all__ = ["check_writable", "resume_path"]


def check_writable(folder: Union[str, Path]) -> None:
    """Create ``folder`` (with its parents) and write a probe file there; ``ValueError`` in one line
    when it is an existing file, sits below a file, or cannot be written."""
    folder = Path(folder)
    if folder.is_file():
        raise UserError(f"output folder {folder} is an existing file; give --output / --experiment a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"cannot write to output folder {folder}: {err.strerror or err}") from None


def resume_path(folder: Union[str, Path], resume: str) -> str:
    """The checkpoint a run into experiment ``folder`` resumes from ('' = fresh), given ``--resume``.

    ``auto`` picks the newest state in ``folder`` (a damaged set of checkpoints is an error, not a
    silent fresh start). A fresh run, or a resume from a checkpoint elsewhere, into a folder that
    already holds checkpoints is a ``ValueError`` naming them.
    """
    folder = Path(folder)
    existing = checkpoint_files(folder)
    if resume == "auto":
        found = find_resume_checkpoint(folder)
        if found is None and existing:
            raise UserError(f"--resume auto: no readable checkpoint in {folder} (damaged: "
                            f"{', '.join(Path(p).name for p in existing)}); resume one by path or remove them")
        return found or ""
    if existing and not (resume and Path(resume).resolve().parent == folder.resolve()):
        shown = ", ".join(Path(p).name for p in existing[:4]) + (f" +{len(existing) - 4} more" if len(existing) > 4 else "")
        raise UserError(f"{folder} holds checkpoints of an earlier run ({shown}): continue it with --resume auto, "
                        "or train into a new folder with --experiment NAME (or remove those files)")
    return resume
