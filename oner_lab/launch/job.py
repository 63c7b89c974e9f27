"""The job every backend runs: open the run's MLflow run, call `train.run`, record how it ended.

It is a submitit `Checkpointable`, so a preempted or timed-out job is requeued as itself and
`train.run` resumes from the run directory's last checkpoint. It never raises for a failed
run (that would stop a debug executor's whole sweep): it marks the MLflow run FAILED and
returns a `JobOutcome` saying so.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import submitit
from mlflow import MlflowClient

from oner_lab import tracking
from oner_lab.hooks import Interrupted
from oner_lab.spec import PlannedRun

POLL_S = 0.5


@dataclass(frozen=True)
class JobOutcome:
    """How one run ended: FINISHED (with its final metrics), FAILED (with the error) or KILLED."""

    run_name: str
    run_id: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class OwnerControl:
    """`RunControl` that stops training (after a checkpoint) once the launching process is gone.

    A local job outlives a CLI killed with SIGKILL; without this it would go on training
    while a rerun resumes the same run directory.
    """

    def __init__(self, owner_pid: int | None) -> None:
        self.owner_pid = owner_pid

    def should_stop(self) -> bool:
        if self.owner_pid is None:
            return False
        try:
            os.kill(self.owner_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by someone else (the pid was reused)
            return False
        return False


@contextmanager
def hold_lock(candidates: list[Path], control: OwnerControl) -> Iterator[bool]:
    """Holds an exclusive lock on one of `candidates` (waiting for one to free up); yields False
    instead if the owner disappears while waiting. Locks vanish with their process, even on SIGKILL."""
    candidates[0].parent.mkdir(parents=True, exist_ok=True)
    while True:
        for path in candidates:
            handle = path.open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield True
            finally:
                handle.close()
            return
        if control.should_stop():
            yield False
            return
        time.sleep(POLL_S)


class TrainingJob(submitit.helpers.Checkpointable):
    """One planned run, as submitted to an executor.

    `max_parallel` (local backend) caps how many jobs train at once through lock files in
    `<runs_dir>/.slots` (`runs_dir` being the run directory's parent): jobs beyond it wait for
    a free slot, also after the CLI has exited (`--no-wait`). A per-run lock keeps two
    processes from training one run directory. `owner_pid`: see `OwnerControl`.
    """

    def __init__(
        self,
        planned: PlannedRun,
        tracking_uri: str,
        run_id: str,
        run_dir: Path,
        *,
        max_parallel: int | None = None,
        owner_pid: int | None = None,
    ) -> None:
        self.planned = planned
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.run_dir = Path(run_dir)
        self.max_parallel = max_parallel
        self.owner_pid = owner_pid

    def __call__(self) -> JobOutcome:
        try:
            return self._run()
        except Exception as error:  # noqa: BLE001 - tracking itself failed; the CLI records what it can
            message = f"{type(error).__name__}: {error}"
            return JobOutcome(self.planned.run_name, self.run_id, tracking.FAILED, error=message)

    def _run(self) -> JobOutcome:
        control = OwnerControl(self.owner_pid)
        waits = [[self.run_dir / ".lock"]]
        if self.max_parallel:
            waits.insert(0, [self.run_dir.parent / ".slots" / f"slot{k}.lock" for k in range(self.max_parallel)])
        with ExitStack() as held:
            for candidates in waits:
                if not held.enter_context(hold_lock(candidates, control)):
                    return self._end(tracking.KILLED, "the launching command ended before this run started; rerun it")
            return self._train(control)

    def _train(self, control: OwnerControl) -> JobOutcome:
        from oner_lab import train  # only once a slot is held: a waiting job stays ~170 MB instead of ~800 MB

        client = tracking.connect(self.tracking_uri)
        tracking.set_status(client, self.run_id, tracking.RUNNING)
        try:
            with tracking.MlflowRunLogger(client, self.run_id) as logger:
                metrics = train.run(self.planned.config, self.run_dir, logger=logger, control=control)
        except Interrupted as stop:
            return self._end(tracking.KILLED, f"{stop}: the launching command ended; rerun it to resume", client)
        except Exception as error:  # noqa: BLE001 - any failure of one run is recorded, the sweep goes on
            return self._end(tracking.FAILED, error, client)
        except KeyboardInterrupt:
            self._end(tracking.KILLED, "interrupted (Ctrl-C / SIGINT); rerun to resume", client)
            raise
        tracking.end_run(client, self.run_id, tracking.FINISHED)
        return JobOutcome(self.planned.run_name, self.run_id, tracking.FINISHED, metrics=dict(metrics))

    def _end(self, status: str, error: BaseException | str, client: MlflowClient | None = None) -> JobOutcome:
        client = client or tracking.connect(self.tracking_uri)
        tracking.end_run(client, self.run_id, status, error)
        message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
        return JobOutcome(self.planned.run_name, self.run_id, status, error=message)
