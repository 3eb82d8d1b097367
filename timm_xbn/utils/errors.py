"""User errors and the one handler every command line runs its work under.

A *user error* is bad input the user can fix: the project's own ``UserError``, a missing file or folder,
an output that cannot be written, or an ``OSError`` of the machine (disk full, permissions, read-only).
The command lines print it as one red line ``error: ...`` and exit 2. Anything else is a bug in
timm-xbn and keeps its traceback (exit 1). ``XBN_DEBUG=1`` shows the traceback of user errors and
interrupts too. Ctrl-C prints one line and exits 130.
"""
import errno
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator, Optional

from .files import OutputWriteError
from .interrupts import EXIT_CODE, Interrupted

__all__ = [
    "UserError", "USER_ERRORS", "SYSTEM_ERRNOS", "INTERRUPTED", "INTERRUPTED_RESUMES", "DEBUG_VARIABLE",
    "command_errors", "user_message",
]


class UserError(ValueError):
    """Bad input from the user (an option, a file's content, a model name): one red line and exit 2 on the
    command line. A ``ValueError``, so callers that catch ``ValueError`` keep working."""


USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, OutputWriteError)
#: OSErrors of the machine rather than the code (disk full, permissions, read-only): one line naming the file.
SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR}
INTERRUPTED = "interrupted"
#: the interrupt line of a command whose rerun picks up where it stopped
INTERRUPTED_RESUMES = "interrupted; rerun the same command to resume"
DEBUG_VARIABLE = "XBN_DEBUG"


def user_message(err: BaseException) -> Optional[str]:
    """The line a command prints for ``err`` (without ``error:``), or ``None`` when ``err`` is a bug."""
    if isinstance(err, USER_ERRORS):
        return str(err)
    if isinstance(err, OSError) and err.errno in SYSTEM_ERRNOS:
        return f"{err.strerror}: {err.filename or ''}".rstrip(": ")
    return None


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip() not in ("", "0")


def _red_line(text: str) -> None:
    import typer  # the CLI's colours; imported here so the ground floor stays import-light

    typer.secho(text, fg="red", err=True)


@contextmanager
def command_errors(resumes: bool = False) -> Iterator[None]:
    """Run a command line's work: a user error becomes one red line and ``SystemExit(2)``, Ctrl-C one line
    (``INTERRUPTED``, or ``INTERRUPTED_RESUMES`` when ``resumes``) and ``SystemExit(130)``; every other
    exception propagates with its traceback."""
    try:
        yield
    except KeyboardInterrupt as stopped:
        if _debug():
            traceback.print_exc()
        said = str(stopped) if isinstance(stopped, Interrupted) else ""  # the run's own line: what it kept
        _red_line(said or (INTERRUPTED_RESUMES if resumes else INTERRUPTED))
        raise SystemExit(EXIT_CODE) from None
    except Exception as err:
        message = user_message(err)
        if message is None:
            raise
        if _debug():
            traceback.print_exc()
        sys.stderr.flush()
        _red_line(f"error: {message}")
        raise SystemExit(2) from None
