"""SIGTERM / SIGINT while a run trains in this process: the CLI's (debug backend) or a local job's.

Raised at once, the interrupt lands wherever the main thread happens to be, often inside an MLflow or
SQLite call, whose broken session then fails the run's last writes: the run ended FAILED and the CLI
exit 1 instead of KILLED and 130. So while a run trains the first signal is a stop request, answered
at the next step after a checkpoint (as a preemption is, through `OwnerControl`); a second signal
raises at once. Outside training (planning, data preparation) the first signal raises at once. A local
job installs the handlers itself, so it stops this way on the CLI's cancel (SIGINT) even when it was
started with SIGINT ignored (a background shell's children are).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_training = 0
_requested: str | None = None


def handle(signum: int, frame: FrameType | None) -> None:
    """Signal handler: a stop request while a run trains in this process, else KeyboardInterrupt."""
    global _requested
    name = signal.Signals(signum).name
    if _training and _requested is None:
        _requested = name
        print(
            f"[oner] {name}: stopping after the next step's checkpoint (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        return
    raise KeyboardInterrupt(name)


@contextmanager
def installed() -> Iterator[None]:
    """`handle` for SIGTERM and SIGINT inside the block (the previous handlers after it), no request
    pending. Off the main thread, where Python cannot install handlers, the block runs without them."""
    global _requested
    _requested = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def training() -> Iterator[None]:
    """Marks the block as in-process training: the first signal in it becomes a stop request."""
    global _training
    _training += 1
    try:
        yield
    finally:
        _training -= 1


def requested() -> str | None:
    """The name of the signal that asked this process to stop (None: none did)."""
    return _requested


def raise_if_requested() -> None:
    """KeyboardInterrupt when a stop was requested: between runs, the next one is not started."""
    if _requested is not None:
        raise KeyboardInterrupt(_requested)
