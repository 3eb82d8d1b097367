"""Waiting for a process event itself (its exit, a file it writes), never for a number of seconds: a busy
machine makes everything slower, and a test must not fail because of that (issue 36)."""
import os
import select
import subprocess
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited process waiting to be reaped is not alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until_gone(pid: int) -> None:
    """Block until process ``pid`` (any process, not only a child) has exited: a pidfd becomes readable at
    the exit itself. The processes the tests wait on end by themselves after bounded work."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def wait_for_file(path: Path, writer: subprocess.Popen) -> None:
    """Block until ``path`` exists or ``writer`` (the process that would write it) has ended."""
    while not path.exists() and writer.poll() is None:
        time.sleep(0.01)
