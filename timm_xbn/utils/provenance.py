"""Where a committed table or figure came from: the command, the commit and the machine, kept in the file.

Tables and plots under ``docs/`` must say which command wrote them, at which commit, on which machine, so
that a reader can regenerate them (``python -m benchmarks.regenerate``) and tell a stale one apart. The record
also names what decides the CPU's rounding (``timm_xbn.utils.portable.kernel_record``: torch's kernel level,
the oneDNN and MKL caps, the thread count, the CPU model, portable mode on or off): numbers made in portable
mode are bit-identical on another machine, others only within their intervals.
``stamp`` writes that record into a file in the form its format allows: a first line for text
(``#`` comment for ``.csv`` / ``.txt``, a sentence for ``.md``), a ``provenance`` field for ``.json``
and a ``provenance`` text chunk for ``.png``. ``read_provenance`` reads it back.
"""
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .files import atomic_write, write_text_atomic
from .portable import cpu_model, kernel_record

__all__ = ["Provenance", "provenance", "stamp", "read_provenance", "current_command", "script_command"]

Provenance = dict
_TEXT_PREFIX = {".csv": "# ", ".txt": "# ", ".md": ""}
_LEAD = "Written by "


def current_command(argv: Optional[Sequence[str]] = None) -> str:
    """This process's command line as a user would type it (``python path/to/script.py ...``)."""
    argv = list(sys.argv if argv is None else argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:  # run with ``python -m``
        return shlex.join(["python", "-m", spec.name.removesuffix(".__main__"), *argv[1:]])
    return shlex.join(["python", *argv])


def script_command(script: Union[str, Path], argv: Optional[Sequence[str]] = None) -> str:
    """``python <script> <argv>`` with the script's path relative to the working directory when it is inside
    it (``argv`` defaults to this process's arguments): the command of a script whose ``main(argv)`` was called."""
    path = Path(script).resolve()
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join(["python", str(path), *(sys.argv[1:] if argv is None else argv)])


def _git_commit(root: Path) -> str:
    """Short commit of the checkout holding ``root``, ``+dirty`` when tracked files changed; ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine() -> str:
    """The machine in one line: CPU (or GPU), cores, OS, Python, torch."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{device}, {cores} cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def provenance(command: Optional[str] = None, kernels: Optional[dict] = None) -> Provenance:
    """``{"command", "commit", "machine", **kernels}`` of the running process: ``command`` defaults to its
    command line, ``kernels`` to its ``kernel_record()`` (give a child's when the child did the computing)."""
    return {"command": command or current_command(), "commit": _git_commit(Path(__file__).resolve().parent),
            "machine": machine(), **(kernel_record() if kernels is None else kernels)}


_KERNELS = re.compile(r"; kernels (?P<capability>\S+), oneDNN cap (?P<isa_cap>\S+), MKL branch (?P<mkl_branch>\S+), "
                      r"(?P<threads>\d+) threads?, (?P<mode>portable|native) mode, CPU (?P<cpu>.*)$")


def _sentence(prov: Provenance) -> str:
    text = f"{_LEAD}`{prov['command']}` at commit {prov['commit']} on {prov['machine']}"
    if "capability" in prov:  # records written before portable mode existed have no kernel fields
        text += (f"; kernels {prov['capability']}, oneDNN cap {prov['isa_cap']}, MKL branch {prov['mkl_branch']}, "
                 f"{prov['threads']} thread{'s' * (prov['threads'] != 1)}, "
                 f"{'portable' if prov['portable'] else 'native'} mode, CPU {prov['cpu']}")
    return text


def stamp(path: Union[str, Path], prov: Provenance) -> Path:
    """Write ``prov`` into ``path`` (replacing a previous record, atomically); the format follows the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.loads(path.read_text())
        data = {"provenance": prov, **{k: v for k, v in data.items() if k != "provenance"}}
        write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    elif suffix == ".png":
        from PIL import Image, PngImagePlugin

        with Image.open(path) as image:
            image.load()
            info = PngImagePlugin.PngInfo()
            for key, value in image.text.items():
                if key != "provenance":
                    info.add_text(key, value)
            info.add_text("provenance", json.dumps(prov))
            with atomic_write(path) as tmp:
                image.save(tmp, format="PNG", pnginfo=info)
    elif suffix in _TEXT_PREFIX:
        prefix = _TEXT_PREFIX[suffix]
        lines = path.read_text().splitlines(keepends=True)
        if lines and lines[0].startswith(prefix + _LEAD):
            lines = lines[1:]
        write_text_atomic(path, prefix + _sentence(prov) + ".\n" + "".join(lines))
    else:
        raise ValueError(f"cannot stamp {path}: no provenance format for {suffix!r} files")
    return path


def read_provenance(path: Union[str, Path]) -> Optional[Provenance]:
    """The record ``stamp`` wrote into ``path``, or None."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.loads(path.read_text())
        return data.get("provenance")
    if suffix == ".png":
        from PIL import Image

        with Image.open(path) as image:
            text = image.text.get("provenance")
        return json.loads(text) if text else None
    first = path.read_text().split("\n", 1)[0]
    prefix = _TEXT_PREFIX.get(suffix, "") + _LEAD
    if not first.startswith(prefix + "`"):
        return None
    command, rest = first[len(prefix) + 1:].split("` at commit ", 1)
    commit, machine_ = rest.split(" on ", 1)
    machine_ = machine_.removesuffix(".")
    record = {"command": command, "commit": commit, "machine": machine_}
    kernels = _KERNELS.search(machine_)
    if kernels:
        found = kernels.groupdict()
        record.update(machine=machine_[:kernels.start()], capability=found["capability"], isa_cap=found["isa_cap"],
                      mkl_branch=found["mkl_branch"], threads=int(found["threads"]),
                      portable=found["mode"] == "portable", cpu=found["cpu"])
    return record
