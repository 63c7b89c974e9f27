"""Process start-up without the cyclic garbage collector.

Importing torch, timm, torchvision and MLflow creates millions of long-lived objects, and the
collector walks them again and again while they load: 1.2 of 5.7 CPU-seconds of a job's imports on
the 2-core test machine (`python benchmarks/startup_time.py`: 5.68 -> 4.44). Every run starts a process per rank and
per requeue, so a sweep or an ablation pays it many times over. A job process (submitit's entry
point) therefore imports with the collector paused and, once the heavy imports are done, freezes
what they created (`gc.freeze`: long-lived, never scanned again) and turns the collector back on.
Any other process that imports oner_lab (the CLI, a notebook, pytest) keeps its collector untouched.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

JOB_ENTRY = "submitit.core._submit"
"""The module submitit runs a job with (`python -u -m submitit.core._submit <folder>`), locally and on SLURM."""

_paused = False
paused_at_import = False
"""Whether this process imported oner_lab with the collector paused (a job process)."""


def entry_module() -> str | None:
    """The module this interpreter was started to run (`python -m NAME`), else None."""
    argv = list(getattr(sys, "orig_argv", []))
    return argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None


def pause_in_job_process() -> None:
    """Called on the package's first import: pauses the collector in a job process until `resume()`."""
    global _paused, paused_at_import
    if entry_module() == JOB_ENTRY and gc.isenabled():
        gc.disable()
        _paused = paused_at_import = True


def resume() -> None:
    """Freezes what was imported so far and turns the collector back on, if `pause_in_job_process` paused it."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False


@contextmanager
def imports_without_gc() -> Iterator[None]:
    """Heavy imports inside the block run with the collector paused; what they created is frozen after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def report() -> dict[str, object]:
    """This process's collector state (what a job process's start-up left): for tests and benchmarks."""
    return {"paused_at_import": paused_at_import, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
