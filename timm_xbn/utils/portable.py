"""Portable mode: CPU kernels pinned to what every current x86-64 server has, so that a seeded run gives the
same bits on any such machine.

torch picks its CPU kernels by the machine it runs on: ATen's vectorized kernels (AVX-512 / AVX2 / default),
oneDNN's convolutions (up to AMX) and MKL's GEMMs (its own dispatch, per vendor). Each choice rounds
differently, and a few hundred SGD steps turn those roundings into different networks: a committed table then
depends on the CPU its author's session got. Portable mode caps ATen and oneDNN at AVX2, puts MKL on the
conditional-numerical-reproducibility branch meant for Intel and non-Intel CPUs alike (``COMPATIBLE``; its
other fixed branches exist on Intel CPUs only) and runs one thread. The libraries read these settings once,
when they start, so they must be in the environment before torch is imported: ``ensure_portable``
re-executes the running command with them (``os.execve``).

Measured with ``cpu_fingerprint.py``-style runs (docs/tta.md, "Numbers that hold on another machine"): the AVX2 caps
alone leave MKL on its AVX-512 branch; ``torch.use_deterministic_algorithms`` and flushing denormals do not
change the bits on CPU, so the mode leaves them alone. Native speed stays the default for users.
"""
import os
import platform
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch

from .errors import UserError

__all__ = ["PINS", "PORTABLE_ENV", "PortableModeError", "cpu_model", "is_pinned", "is_portable", "ensure_portable",
           "portable_env", "kernel_record", "ensure_portable_or_exit", "mode_note"]

#: read by the libraries when they start: set before torch is imported
PINS: Dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
#: the pins and one thread for everything a job starts (OpenMP and MKL pools)
PORTABLE_ENV: Dict[str, str] = {**PINS, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports under the pins
_REEXECUTED = "TIMM_XBN_PORTABLE_REEXEC"  # set in the re-executed process: never re-execute twice


class PortableModeError(UserError):
    """Portable mode cannot be entered here (bad input for a command: one red line, exit code 2)."""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def is_pinned() -> bool:
    """True when this process started with the pins and torch's kernels run at AVX2."""
    return all(os.environ.get(k) == v for k, v in PINS.items()) and \
        torch.backends.cpu.get_cpu_capability() == _CAPABILITY


def is_portable() -> bool:
    """Pinned and one torch thread: the state every committed result is made in."""
    return is_pinned() and torch.get_num_threads() == 1


def portable_env(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``base`` (default: this process's environment) with the portable settings, for a child process."""
    return {**(os.environ if base is None else base), **PORTABLE_ENV}


def ensure_portable(flag: str = "--portable", threads: int = 1) -> None:
    """Enter portable mode: re-execute this process with ``PORTABLE_ENV`` when it is not pinned, then use one
    torch thread. The re-execution happens only when the process's own command line holds ``flag`` (so it
    runs that same command again); a caller without it, e.g. a notebook, gets ``PortableModeError`` saying how.
    ``threads`` is the count the caller asked for: anything but 1 is refused (it changes the rounding)."""
    if threads != 1:
        raise PortableModeError(f"portable mode runs one thread per job, not {threads}")
    if not is_pinned():
        capability = torch.backends.cpu.get_cpu_capability()
        if capability not in (_CAPABILITY, "AVX512"):  # e.g. DEFAULT: this CPU lacks AVX2
            raise PortableModeError(f"portable mode needs AVX2, and torch reports {capability} kernels on this CPU "
                                    f"({cpu_model()}): run without --portable")
        if flag in sys.orig_argv[1:] and not os.environ.get(_REEXECUTED):
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**portable_env(), _REEXECUTED: "1"})
        settings = " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items())
        raise PortableModeError(f"portable mode must be set before torch starts: run `{settings} python ...`, "
                                f"or give the command {flag}")
    torch.set_num_threads(1)


def kernel_record(threads: Optional[int] = None) -> dict:
    """What decides this process's CPU rounding, for provenance records: torch's kernel level, the oneDNN and
    MKL caps, the thread count (``threads``, default torch's), the CPU model and whether portable mode is on."""
    threads = torch.get_num_threads() if threads is None else threads
    return {"capability": torch.backends.cpu.get_cpu_capability(),
            "isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA", "none"), "mkl_branch": os.environ.get("MKL_CBWR", "auto"),
            "threads": threads, "cpu": cpu_model(), "portable": is_pinned() and threads == 1}


def ensure_portable_or_exit(flag: str = "--portable", threads: int = 1) -> None:
    """``ensure_portable`` for a script: its refusal as one line ``error: ...`` on stderr and exit code 2."""
    try:
        ensure_portable(flag, threads)
    except PortableModeError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def mode_note() -> str:
    """One sentence for a generated page: which mode made its numbers, and what another machine may show."""
    record = kernel_record()
    if record["portable"]:
        return (f"Portable mode (torch kernels {record['capability']}, oneDNN cap {record['isa_cap']}, MKL branch "
                f"{record['mkl_branch']}, 1 thread): the same numbers on any x86-64 CPU with the same torch; "
                f"`python -m benchmarks.regenerate --check` compares.")
    return (f"Native kernels ({record['capability']}, {record['threads']} thread{'s' * (record['threads'] != 1)}) on "
            f"{record['cpu']}: another CPU gives other numbers, within the intervals only.")
