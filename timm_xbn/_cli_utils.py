"""Small helpers shared by the CLI commands."""
import functools
import json
from typing import Any, Callable, Dict, Optional, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, NotADirectoryError)


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
