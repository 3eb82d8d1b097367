"""Small helpers shared by the CLI commands."""
import functools
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, TypeVar

import typer

from .utils.errors import SYSTEM_ERRNOS, USER_ERRORS

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn user errors into a one-line red message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            typer.secho(f"error: {message}", fg="red", err=True)
            raise typer.Exit(2) from None
        except OSError as err:
            if err.errno not in SYSTEM_ERRNOS:
                raise
            typer.secho(f"error: {err.strerror}: {err.filename or ''}".rstrip(": "), fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def parse_json_kwargs(text: Optional[str], option: str = "--model-kwargs") -> Dict[str, Any]:
    """Parse a JSON object given on the command line, e.g. ``'{"num_classes": 10}'``."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{option} must be a JSON object, e.g. '{{\"num_classes\": 10}}': {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def check_checkpoint_file(path: Path, option: str = "--checkpoint") -> None:
    """Fail early, naming the file, unless ``path`` looks like a safetensors file or a torch checkpoint
    (zip archive or pickle), so that e.g. a text file is not reported by torch's loader as "101"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        head = f.read(16)
    safetensors = len(head) > 8 and head[8:9] == b"{"  # little-endian header size, then the JSON header
    torch_file = head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")  # torch.save zip / legacy pickle
    if not (safetensors or torch_file):
        raise ValueError(f"{option} {path} is neither a .safetensors file nor a torch checkpoint "
                         f"(it starts with {head[:12]!r})")


@contextmanager
def reword(replacements: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a ``ValueError`` from the Python API with its argument names replaced by the CLI's flags,
    e.g. ``{"blocks=": "--blocks "}``."""
    try:
        yield
    except ValueError as err:
        message = str(err)
        for old, new in replacements.items():
            message = message.replace(old, new)
        raise ValueError(message) from None
