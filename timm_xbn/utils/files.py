"""Atomic result files: every command writes through ``atomic_write``, so that a kill, a full disk or a
permission error never leaves half a file in place of an earlier valid one, nor a temporary file behind.
"""
import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

__all__ = ["OutputWriteError", "atomic_write", "write_text_atomic"]


class OutputWriteError(OSError):
    """A result file could not be written (disk full, permission, read-only file system): one line naming it."""

    def __init__(self, path: Union[str, Path], reason: str, code: int = errno.EIO):
        super().__init__(code, reason, str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.strerror}"


def _user_file_mode() -> int:
    """The mode a new file gets under the process's umask (``0o666 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err).splitlines()[0]


#: what torch.save's zip stream writer says when a write comes short (a full disk): "file write failed", or
#: "[enforce fail at inline_container.cc:NNN] unexpected pos" when the next record lands where it should not
_TORCH_WRITE_FAILURES = ("write failed", "unexpected pos")


def _torch_write_failure(err: RuntimeError) -> bool:
    return any(words in str(err) for words in _TORCH_WRITE_FAILURES)


@contextmanager
def atomic_write(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write to; rename it onto ``path`` when the block succeeds.

    The file ends with the mode any new file gets under the user's umask, whatever made the temporary file
    (``tempfile`` and some writers create it 0600, and the rename would keep that).

    On any failure the temporary file is removed and ``path`` keeps its earlier content; an ``OSError``
    (or the ``RuntimeError`` / ``SafetensorError`` of torch.save's / safetensors' writer) becomes an ``OutputWriteError`` naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.chmod(tmp, _user_file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OutputWriteError):
            raise
        if isinstance(err, OSError):
            raise OutputWriteError(path, _reason(err), err.errno or errno.EIO) from None
        if isinstance(err, RuntimeError) and _torch_write_failure(err):
            raise OutputWriteError(path, "write failed (disk full?)") from None
        if type(err).__name__ == "SafetensorError" and "I/O error: " in str(err):  # safetensors' writer
            raise OutputWriteError(path, str(err).split("I/O error: ", 1)[1].split(" (os error")[0]) from None
        raise


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    """Write ``text`` to ``path`` through ``atomic_write``."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
