"""Waiting for submitted runs with a progress view (done / running / queued / failed), and stopping them."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import submitit
from mlflow import MlflowClient
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from submitit.core.utils import pickle_load

from oner_lab import tracking
from oner_lab.launch import interrupts, scheduler
from oner_lab.launch.executors import Dispatch
from oner_lab.launch.job import JobOutcome
from oner_lab.store_outage import cause_of, quiet_mlflow

POLL_S = 1.0
"""How often a job's own state (its result file, cheap) is looked at."""
STATUS_EVERY_S = 5.0
"""How often the view asks MLflow which runs are queued or running: a query of the whole store, which
each second cost the waiting CLI about a tenth of a core."""
SQUEUE_EVERY_S = 5.0
"""How often the queue is asked which SLURM jobs ended without an outcome (squeue is a call to slurmctld)."""
RESULT_GRACE_S = 15.0
"""How long a job that left the queue may take to show its outcome file (as submitit waits)."""
STOP_GRACE_S = 15.0
QUEUED, RUNNING = "queued", "running"
STYLES = {QUEUED: "dim", RUNNING: "cyan", tracking.FINISHED: "green", tracking.FAILED: "red", tracking.KILLED: "yellow"}


@dataclass
class RunRow:
    name: str
    status: str = QUEUED
    note: str = ""
    started: float | None = None
    ended: float | None = None


class ProgressView:
    """A live table on a terminal; elsewhere (CI logs, tests) one line per status change."""

    def __init__(self, names: Sequence[str], console: Console) -> None:
        self.rows = [RunRow(name) for name in names]
        self.console = console
        self.live = Live(self, console=console, refresh_per_second=2) if console.is_terminal else None

    def __enter__(self) -> ProgressView:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.stop()

    def set(self, index: int, status: str, note: str = "") -> None:
        row = self.rows[index]
        if (row.status, row.note) == (status, note):
            return
        now = time.monotonic()
        if status == RUNNING and row.started is None:
            row.started = now
        if status not in (QUEUED, RUNNING):
            row.ended = now
        row.status, row.note = status, note
        if self.live is None:
            self.console.print(
                f"[{self.summary()}] {row.name}: {status}" + (f" ({note})" if note else ""), highlight=False
            )

    def summary(self) -> str:
        counts = Counter(row.status for row in self.rows)
        done = counts[tracking.FINISHED] + counts[tracking.FAILED] + counts[tracking.KILLED]
        return (
            f"{done}/{len(self.rows)} done, {counts[RUNNING]} running, {counts[QUEUED]} queued, "
            f"{counts[tracking.FAILED]} failed"
        )

    def __rich__(self) -> Group:
        table = Table(box=None, pad_edge=False)
        for header in ("run", "status", "time", "note"):
            table.add_column(header)
        now = time.monotonic()
        for row in self.rows:
            seconds = None if row.started is None else (row.ended or now) - row.started
            table.add_row(
                row.name,
                f"[{STYLES[row.status]}]{row.status}[/]",
                "" if seconds is None else f"{seconds:.0f}s",
                row.note,
            )
        return Group(self.summary(), table)


def collect(job: submitit.Job, run: Dispatch, client: MlflowClient, experiment: str) -> JobOutcome:
    """The job's outcome. A job whose process died (or whose tracking failed) could not record how it
    ended, so its run is marked here."""
    try:
        outcome = _slurm_outcome(job) if isinstance(job, submitit.SlurmJob) else job.result()
    except Exception as error:  # noqa: BLE001 - submitit reports a dead process as one of several errors
        message = f"job {job.job_id} ended without an outcome (its log: {job.paths.stderr}): {error}"
        outcome = JobOutcome(run.planned.run_name, run.run_id, tracking.FAILED, error=message)
    if outcome.status != tracking.FINISHED and outcome.store_error is None:
        try:
            with quiet_mlflow():
                current = tracking.statuses(client, experiment, [run.run_id]).get(run.run_id)
            if current in (tracking.RUNNING, tracking.SCHEDULED):
                tracking.end_run(client, run.run_id, outcome.status, outcome.error)
        except Exception as error:  # noqa: BLE001 - the store failed: the CLI says so and exits 3
            store_error = (
                f"the tracking store {client._tracking_client.tracking_uri} could not be written ({cause_of(error)})"
            )
            outcome = JobOutcome(
                outcome.run_name, outcome.run_id, outcome.status, outcome.metrics, outcome.error, store_error
            )
    return outcome


def _slurm_outcome(job: submitit.Job) -> JobOutcome:
    """Rank 0's outcome (every rank of a DDP job returns one; rank 0 is the one that tracked the run).
    Read from its result file directly: `job.result()` would wait for accounting (`sacct`), which a
    cluster may not have, before deciding that a job gone from the queue has no result."""
    result = job.paths.result_pickle
    deadline = time.monotonic() + RESULT_GRACE_S
    while not result.exists() and time.monotonic() < deadline:  # a shared file system may show it late
        time.sleep(POLL_S)
    if not result.exists():
        raise RuntimeError(f"it left the SLURM queue without writing {result}")
    kind, value = pickle_load(result)
    if kind != "success":
        raise RuntimeError(str(value).strip().splitlines()[-1])
    return value


class SlurmQueue:
    """Which submitted SLURM jobs have ended: rank 0 wrote its outcome, or the job left the queue
    (cancelled, killed, node failure) - asked at most every SQUEUE_EVERY_S seconds."""

    def __init__(self) -> None:
        self.asked = float("-inf")
        self.gone: set[str] = set()

    def ended(self, job: submitit.Job) -> bool:
        return job.paths.result_pickle.exists() or job.job_id in self.gone

    def refresh(self, jobs: Sequence[submitit.Job]) -> None:
        if time.monotonic() - self.asked < SQUEUE_EVERY_S:
            return
        self.asked = time.monotonic()
        waiting = [job.job_id for job in jobs if not job.paths.result_pickle.exists()]
        try:
            states = scheduler.queue_states(waiting)
        except scheduler.SchedulerError:
            return  # the scheduler did not answer: nothing is known to have ended
        self.gone = {job_id for job_id in waiting if states.get(job_id) not in scheduler.ALIVE_STATES}


def _first_line(text: str | None) -> str:
    return "" if not text else text.strip().splitlines()[0][:120]


def wait_for(
    jobs: Sequence[submitit.Job],
    runs: Sequence[Dispatch],
    client: MlflowClient,
    experiment: str,
    console: Console,
    *,
    in_process: bool,
) -> list[JobOutcome]:
    """Waits for every job, showing progress; returns their outcomes in order.

    `in_process` (debug backend): asking a job whether it is done runs it, one after another.
    """
    view = ProgressView([run.planned.run_name for run in runs], console)
    outcomes: dict[int, JobOutcome] = {}
    index_of = {run.run_id: index for index, run in enumerate(runs)}
    queue = SlurmQueue() if any(isinstance(job, submitit.SlurmJob) for job in jobs) else None
    asked = float("-inf")
    with view:
        while len(outcomes) < len(jobs):
            if queue is not None:
                queue.refresh([job for index, job in enumerate(jobs) if index not in outcomes])
            if not in_process and time.monotonic() - asked >= STATUS_EVERY_S:
                asked = time.monotonic()
                try:  # a store outage is ridden out by the jobs themselves; the view just shows less meanwhile
                    with quiet_mlflow():
                        current = tracking.statuses(client, experiment, [run.run_id for run in runs])
                except Exception:  # noqa: BLE001 - MLflow wraps store failures in many types
                    current = {}
                for run_id, status in current.items():
                    if index_of[run_id] not in outcomes:
                        view.set(
                            index_of[run_id],
                            {tracking.SCHEDULED: QUEUED, tracking.RUNNING: RUNNING}.get(status, status),
                        )
            for index, job in enumerate(jobs):
                if index in outcomes:
                    continue
                if in_process:
                    interrupts.raise_if_requested()  # asked to stop during the last run: start no other
                    view.set(index, RUNNING)
                if queue.ended(job) if queue is not None else job.done():
                    outcome = collect(job, runs[index], client, experiment)
                    outcomes[index] = outcome
                    view.set(index, outcome.status, _first_line(outcome.error))
            if len(outcomes) < len(jobs):
                time.sleep(POLL_S)
    return [outcomes[index] for index in range(len(jobs))]


def stop(jobs: Sequence[submitit.Job], runs: Sequence[Dispatch], client: MlflowClient, experiment: str) -> list[str]:
    """Cancels unfinished jobs (local: their processes are interrupted, then killed), waits for them to
    go, and marks runs still SCHEDULED or RUNNING as KILLED; returns the names of the runs stopped."""
    if any(isinstance(job, submitit.SlurmJob) for job in jobs):
        _cancel_slurm(jobs)
    else:
        live = [job for job in jobs if job.state in ("RUNNING", "QUEUED")]
        for job in live:
            job.cancel(check=False)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(job.state == "RUNNING" for job in live) and time.monotonic() < deadline:
            time.sleep(0.2)
    current = tracking.statuses(client, experiment, [run.run_id for run in runs])
    stopped = []
    for run in runs:
        status = current.get(run.run_id)
        if status in (tracking.RUNNING, tracking.SCHEDULED):
            tracking.end_run(
                client, run.run_id, tracking.KILLED, "stopped by the user (Ctrl-C / SIGTERM); rerun to resume"
            )
        if status not in (tracking.FINISHED, tracking.FAILED):
            stopped.append(run.planned.run_name)
    return stopped


def _cancel_slurm(jobs: Sequence[submitit.Job]) -> None:
    """scancel: a running job checkpoints on the SIGTERM and marks its run KILLED; waits (bounded) for
    the jobs to leave the queue so the caller marks only runs nobody else will."""
    live = [job for job in jobs if not job.paths.result_pickle.exists()]
    for job in live:
        job.cancel(check=False)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        try:
            states = scheduler.queue_states([job.job_id for job in live])
        except scheduler.SchedulerError:
            return
        if not any(states.get(job.job_id) in scheduler.ALIVE_STATES for job in live):
            return
        time.sleep(0.5)
