"""One flag per concept in every command and benchmark, and the old spellings that still work for one release.

``VOCABULARY`` says which flag names each concept the commands share (``tests/test_vocabulary.py`` walks every
command's and benchmark's options and fails on a second spelling); ``RENAMED`` lists, per command, the old
spellings that are rewritten to the new ones before parsing, with a one-line deprecation note, and hidden from
``--help``. ``full`` (AdaBN's statistics) is the old value name of ``norm``.
"""
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from typer.core import TyperCommand

__all__ = ["Concept", "VOCABULARY", "RENAMED", "VALUE_RENAMES", "XbnCommand", "renamed_flags", "translate_argv",
           "renames_table"]


@dataclass(frozen=True)
class Concept:
    """A meaning shared by several commands, its one flag (and short form), and the spellings it replaced."""

    meaning: str
    flag: str
    short: Optional[str] = None
    old: Tuple[str, ...] = ()


VOCABULARY: Tuple[Concept, ...] = (
    Concept("output folder (or file) of the results", "--output", "-o", ("--out",)),
    Concept("input size in pixels", "--img-size", None, ("--image-size", "--size")),
    Concept("images per batch", "--batch-size", "-b", ("--batch",)),
    Concept("random seed", "--seed"),
    Concept("data-loading processes", "--workers", "-j"),
    Concept("jobs run in parallel (processes)", "--jobs", None, ("-w",)),
    Concept("timm.create_model kwargs as a JSON object", "--model-kwargs"),
    Concept("images to fit the batch-free norms on (BFN calibration)", "--calibrate"),
    Concept("convert even where a batch-free norm normalizes one value per sample", "--force"),
    Concept("images to re-estimate BN statistics on", "--recalib-dir", None, ("--calib-dir",)),
    Concept("batches to re-estimate BN statistics on", "--recalib-batches", None, ("--calib-batches",)),
)

# Per command (as typed: "xbn-eval study", "xbn-convert", "benchmarks/cpu_amp.py"): old flag -> new flag.
# ``--workers`` of the study meant job processes; everywhere else it is the data loaders (``-j``).
RENAMED: Dict[str, Dict[str, str]] = {
    "xbn-convert": {"--out": "--output"},
    "xbn-hub pull": {"--out": "--output"},
    "xbn-eval adabn": {"--calib-dir": "--recalib-dir", "--calib-batches": "--recalib-batches"},
    "xbn-eval study": {"--image-size": "--img-size", "--workers": "--jobs", "-w": "--jobs"},
    "benchmarks/calibration.py": {"--out": "--output"},
    "benchmarks/corruptions.py": {"--size": "--img-size"},
    "benchmarks/cpu_amp.py": {"--batch": "--batch-size", "--size": "--img-size"},
    "benchmarks/device_check.py": {"--out": "--output"},
    "benchmarks/regenerate.py": {"--out": "--output"},
}

# Options whose value names a statistics method: old value -> new value.
VALUE_RENAMES: Dict[str, Dict[str, str]] = {
    option: {"full": "norm"} for option in ("--mode", "--adapt", "--method", "--reestimate")
}


def _note(old: str, new: str) -> None:
    print(f"note: {old} is deprecated, use {new} (the old spelling goes in the next release)", file=sys.stderr)


def translate_argv(args: Sequence[str], renames: Mapping[str, str],
                   values: Mapping[str, Mapping[str, str]] = VALUE_RENAMES,
                   note: Callable[[str, str], None] = _note) -> List[str]:
    """``args`` with each old flag (``--out X``, ``--out=X``, ``-w4``) and old method value (``--mode full``)
    replaced by its new spelling, and one ``note`` per replacement; nothing after ``--`` is touched."""
    out: List[str] = []
    value_of: Optional[Mapping[str, str]] = None  # the previous token was an option with renamed values
    for i, token in enumerate(args):
        if not isinstance(token, str):  # the API's callers (CliRunner in tests) may pass paths and numbers
            out.append(token)
            value_of = None
            continue
        if token == "--":
            return out + list(args[i:])
        if value_of is not None and token in value_of:
            note(f"the value {token!r}", repr(value_of[token]))
            out.append(value_of[token])
            value_of = None
            continue
        name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
        if name not in renames and not token.startswith("--") and token[:2] in renames and len(token) > 2:
            name, value, eq = token[:2], token[2:], ""  # a short flag glued to its value: -w4
            new = renames[name]
            note(name, new)
            out += [new, value]
            continue
        if name in renames:
            note(name, renames[name])
            name = renames[name]
            token = name + eq + value
        if eq and name in values and value in values[name]:
            note(f"{name}={value}", f"{name}={values[name][value]}")
            token = f"{name}={values[name][value]}"
        value_of = values.get(name) if not eq else None
        out.append(token)
    return out


def renamed_flags(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a typer command function with its name as typed (a key of ``RENAMED``), read by ``XbnCommand``."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.xbn_command = command  # type: ignore[attr-defined]  # copied by functools.wraps / typer's wrapper
        return fn

    return mark


class XbnCommand(TyperCommand):
    """A typer command that accepts the old spellings of its options (``RENAMED``) and of method values
    (``VALUE_RENAMES``), printing one deprecation line for each; they stay out of ``--help``."""

    def parse_args(self, ctx, args: List[str]) -> List[str]:
        command = getattr(self.callback, "xbn_command", None)
        return super().parse_args(ctx, translate_argv(args, RENAMED.get(command, {})))


def renames_table() -> str:
    """The renamed flags and values as a markdown table (docs/commands.md)."""
    rows = ["| command | old spelling | new spelling |", "|---|---|---|"]
    for command, renames in RENAMED.items():
        rows += [f"| `{command}` | `{old}` | `{new}` |" for old, new in renames.items()]
    for option, renames in VALUE_RENAMES.items():
        rows += [f"| any with `{option}` | `{option} {old}` | `{option} {new}` |" for old, new in renames.items()]
    return "\n".join(rows)
