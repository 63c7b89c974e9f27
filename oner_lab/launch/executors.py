"""Backend -> submitit executor: the one place that knows which executor each backend is."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from oner_lab.launch import cluster
from oner_lab.launch.cluster import LaunchError
from oner_lab.launch.job import TrainingJob
from oner_lab.launch.permissions import check_runs_dir
from oner_lab.spec import LauncherConfig, PlannedRun
from oner_lab.store_outage import DEFAULT_WINDOW_S
from oner_lab.tracking_ui import JobOptions

NO_TIMEOUT_MIN = 60 * 24 * 365
"""LocalExecutor kills a job after `timeout_min` (2 minutes unless set); `local.timeout_min: null` means never."""


@dataclass(frozen=True)
class Dispatch:
    """One run to launch: the plan entry, its MLflow run and its run directory."""

    planned: PlannedRun
    run_id: str
    run_dir: Path
    init_checkpoint: Path | None = None
    """A fine-tuning run's parent checkpoint (its parent run's last.pt, or the train.init_from path)."""
    options: JobOptions = field(default_factory=JobOptions)
    """The spec's `tracking.*` settings the job applies (system metrics, final weights)."""


def make_executor(launcher: LauncherConfig, runs_dir: Path, job_name: str = "oner") -> submitit.Executor:
    """debug: in this process, one run after another; local: one subprocess per run; slurm: one job
    array on the cluster profile's partition (cluster.py), one SLURM task per DDP rank.

    Job logs and pickles go to `<runs_dir>/submitit/<job id>/` (on SLURM, `runs_dir` must be on a
    file system the nodes share). Raises LaunchError for a backend that cannot run here, before
    anything is submitted or logged, and for a `runs_dir` (or its `submitit/`) that group or other
    users may write (launch/permissions.py).
    """
    folder = runs_dir / "submitit" / "%j"
    if launcher.backend == "debug":
        check_runs_dir(runs_dir)  # the CLI unpickles job results from there: nobody else may write it
        return submitit.DebugExecutor(folder)
    if launcher.backend == "local":
        check_runs_dir(runs_dir)
        executor = submitit.LocalExecutor(folder, max_num_timeout=0)
        executor.update_parameters(timeout_min=launcher.local.timeout_min or NO_TIMEOUT_MIN)
        return executor
    resources = cluster.resolve(launcher.slurm)
    cluster.check_cluster(resources)
    check_runs_dir(runs_dir)  # after every check that can refuse the job: a refused job writes nothing
    try:  # submitit's own requeue budget only covers a signal that lands before the job installs its handlers
        executor = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=resources.max_requeues)
    except RuntimeError as error:  # srun missing although sinfo answered
        raise LaunchError(f"launcher.backend: 'slurm' cannot submit from here: {error}") from None
    executor.update_parameters(**resources.executor_parameters(job_name))
    return executor


def submit(
    executor: submitit.Executor,
    launcher: LauncherConfig,
    runs: list[Dispatch],
    tracking_uri: str,
    *,
    owner_pid: int | None,
    outage_window_s: float = DEFAULT_WINDOW_S,
) -> list[submitit.Job]:
    """Submits one `TrainingJob` per run to `executor` (from `make_executor(launcher, ...)`); under
    `executor.batch()` SLURM gets them as one job array. Raises LaunchError when sbatch refuses them.

    `owner_pid`: the process whose exit stops local jobs after their next checkpoint (the CLI
    while it waits); None lets them run on after the CLI exits (`--no-wait`). Only local jobs
    watch it: they share this machine's process table. `outage_window_s`: how long a job trains on
    while the tracking store fails (store_outage.py).
    """
    jobs = [
        TrainingJob(
            run.planned,
            tracking_uri,
            run.run_id,
            run.run_dir,
            **job_options(launcher, owner_pid),
            init_checkpoint=run.init_checkpoint,
            outage_window_s=outage_window_s,
            options=run.options,
        )
        for run in runs
    ]
    return submit_jobs(executor, launcher, jobs)


def job_options(launcher: LauncherConfig, owner_pid: int | None) -> dict[str, Any]:
    """The backend's keyword arguments of a `TrainingJob` (slots and owner locally, requeues on SLURM)."""
    local = launcher.backend == "local"
    return {
        "max_parallel": launcher.local.max_parallel if local else None,
        "owner_pid": owner_pid if local else None,
        "max_requeues": cluster.resolve(launcher.slurm).max_requeues if launcher.backend == "slurm" else None,
    }


def submit_jobs(
    executor: submitit.Executor, launcher: LauncherConfig, jobs: Sequence[TrainingJob]
) -> list[submitit.Job]:
    """Submits built jobs (one `TrainingJob` per run, or a sweep's trial jobs) as one batch; LaunchError
    when the scheduler refuses them."""
    local = launcher.backend == "local"
    inherited = _stdio_to(executor.folder.parent / "controllers.log") if local else nullcontext()
    try:
        with inherited, executor.batch():
            submitted = [executor.submit(job) for job in jobs]
    except (FailedJobError, FailedSubmissionError) as error:  # sbatch refused: nothing was queued
        raise LaunchError(f"the scheduler refused the jobs: {str(error).strip()}") from None
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
