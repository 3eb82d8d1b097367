"""Stop a long run on the first Ctrl-C (SIGINT) or SIGTERM without losing its finished work; end at once on the second.

``interruptible()`` turns the first signal into ``Interrupted`` (a ``KeyboardInterrupt``, so notebooks and
``finally`` blocks treat it as one) raised in the main thread, or, with ``raise_now=False``, into a flag that a
loop checks at its next safe point (e.g. after saving a checkpoint). The second signal ends the process at
once with exit code 130 (128 + SIGINT, what shells report for Ctrl-C).

For a ``ProcessPoolExecutor``: ``worker_init`` makes a worker ignore SIGINT (the terminal sends Ctrl-C to the
whole process group; the parent decides what stops) and end on SIGTERM, cleaning up the job it runs when the
job is wrapped in ``call_in_worker``; ``stop_pool`` cancels the queued jobs, stops the workers and waits for them.
"""
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Iterator, Optional, TypeVar

__all__ = ["EXIT_CODE", "Interrupted", "StopRequest", "interruptible", "worker_init", "call_in_worker", "stop_pool"]

EXIT_CODE = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT / SIGTERM; ``str()`` is the one line to print (what was kept, how to resume)."""

    def __init__(self, message: str = "interrupted"):
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "interrupted"


class StopRequest:
    """Whether a stop was asked for (truthy after the first SIGINT / SIGTERM) and by which signal."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def interruptible(raise_now: bool = True) -> Iterator[StopRequest]:
    """Handle SIGINT and SIGTERM for the block: the first raises ``Interrupted`` in the main thread
    (``raise_now``) or only sets the yielded ``StopRequest``; the second ends the process with
    ``EXIT_CODE`` at once. The earlier handlers are restored after the block. Outside the main
    thread (where Python cannot install handlers) the request never fires and signals act as before."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        if request:
            os._exit(EXIT_CODE)  # the second signal: no clean-up, no waiting
        request.signum = signum
        if raise_now:
            raise Interrupted()

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


_busy = False  # a worker is inside ``call_in_worker``


def _worker_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    if _busy:
        raise Interrupted()  # unwinds the job: its ``finally`` blocks remove temporary files
    os._exit(EXIT_CODE)


def worker_init() -> None:
    """``ProcessPoolExecutor`` initializer: ignore SIGINT, end on SIGTERM (see ``call_in_worker``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)


def call_in_worker(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a pool worker; a SIGTERM meanwhile unwinds it and ends the worker with ``EXIT_CODE``."""
    global _busy
    _busy = True
    try:
        return fn(*args)
    except Interrupted:
        os._exit(EXIT_CODE)
    finally:
        _busy = False


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the pool's queued jobs, send SIGTERM to its workers and wait until they and the pool have ended."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()
    pool.shutdown(wait=True)
