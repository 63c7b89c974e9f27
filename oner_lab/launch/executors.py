"""Backend -> submitit executor: the one place that knows which executor each backend is."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import submitit

from oner_lab.launch.job import TrainingJob
from oner_lab.spec import LauncherConfig, PlannedRun

NO_TIMEOUT_MIN = 60 * 24 * 365
"""LocalExecutor kills a job after `timeout_min` (2 minutes unless set); `local.timeout_min: null` means never."""


class LaunchError(RuntimeError):
    """A backend that cannot launch here; raised before anything is submitted."""


@dataclass(frozen=True)
class Dispatch:
    """One run to launch: the plan entry, its MLflow run and its run directory."""

    planned: PlannedRun
    run_id: str
    run_dir: Path


def make_executor(launcher: LauncherConfig, runs_dir: Path) -> submitit.Executor:
    """debug: in this process, one run after another; local: one subprocess per run.

    Job logs and pickles go to `<runs_dir>/submitit/<job id>/`. Raises LaunchError for a backend
    that cannot run here, before anything is submitted or logged.
    """
    folder = runs_dir / "submitit" / "%j"
    if launcher.backend == "debug":
        return submitit.DebugExecutor(folder)
    if launcher.backend == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=0)
        executor.update_parameters(timeout_min=launcher.local.timeout_min or NO_TIMEOUT_MIN)
        return executor
    raise LaunchError(
        f"launcher.backend: {launcher.backend!r} is not implemented yet (it comes with the SLURM issue); "
        "allowed now: debug, local"
    )


def submit(
    executor: submitit.Executor, launcher: LauncherConfig, runs: list[Dispatch], tracking_uri: str, *, owner_pid: int | None
) -> list[submitit.Job]:
    """Submits one `TrainingJob` per run to `executor` (from `make_executor(launcher, ...)`).

    `owner_pid`: the process whose exit stops local jobs after their next checkpoint (the CLI
    while it waits); None lets them run on after the CLI exits (`--no-wait`). Only local jobs
    watch it: they share this machine's process table.
    """
    local = launcher.backend == "local"
    jobs = [
        TrainingJob(
            run.planned,
            tracking_uri,
            run.run_id,
            run.run_dir,
            max_parallel=launcher.local.max_parallel if local else None,
            owner_pid=owner_pid if local else None,
        )
        for run in runs
    ]
    inherited = _stdio_to(executor.folder.parent / "controllers.log") if local else nullcontext()
    with inherited, executor.batch():
        submitted = [executor.submit(job) for job in jobs]
    return submitted


@contextmanager
def _stdio_to(log: Path) -> Iterator[None]:
    """Points this process's stdout/stderr at `log` while local jobs start, so their controller
    processes (which inherit them) neither print interrupt tracebacks into the CLI's output nor
    hold a pipe open (`run ... --no-wait | tee`) until every run ends. Job logs are unaffected."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
