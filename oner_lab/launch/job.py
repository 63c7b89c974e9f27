"""The job every backend runs: open the run's MLflow run, call `train.run`, record how it ended.

It is a submitit `Checkpointable`, so a preempted or timed-out job is requeued as itself and
`train.run` resumes from the run directory's last checkpoint. It never raises for a failed
run (that would stop a debug executor's whole sweep): it marks the MLflow run FAILED and
returns a `JobOutcome` saying so. On SLURM (preemption.py) a job that is requeued exits
without an outcome instead: it has not ended, it will start again.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import cloudpickle
import submitit
from mlflow import MlflowClient

from oner_lab import startup, tracking, tracking_ui
from oner_lab.contract import Interrupted, RunControl, RunLogger
from oner_lab.launch import interrupts, owner, scheduler
from oner_lab.launch.preemption import (
    TERM,
    Next,
    SignalStop,
    SlurmTask,
    decide,
    over_budget_message,
)
from oner_lab.spec import PlannedRun
from oner_lab.store_outage import DEFAULT_WINDOW_S, Outage, StoreUnavailable

POLL_S = 0.5
PENDING_END = ".pending_end.json"
"""How a run ended when the store could not be told: the next invocation records it (run.py)."""
UNLOGGED = "unlogged_metrics.jsonl"


@dataclass(frozen=True)
class JobOutcome:
    """How one run ended: FINISHED (with its final metrics), FAILED (with the error) or KILLED."""

    run_name: str
    run_id: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    store_error: str | None = None
    """Set when the tracking store failed past its outage window: the paragraph the CLI prints (exit 3)."""


class OwnerControl:
    """`RunControl` that stops training (after a checkpoint) once the launching process is gone.

    A local job outlives a CLI killed with SIGKILL; without this it would go on training
    while a rerun resumes the same run directory. A run training in the CLI's own process (debug
    backend) stops the same way when the CLI is asked to (`interrupts`).
    """

    def __init__(self, owner_pid: int | None) -> None:
        self.owner_pid = owner_pid

    def should_stop(self) -> bool:
        if interrupts.requested() is not None:  # training in the CLI's own process, which was asked to stop
            return True
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
def hold_lock(candidates: list[Path], control: OwnerControl) -> Iterator[Path | None]:
    """Holds an exclusive lock on one of `candidates` (waiting for one to free up) and yields its path;
    yields None instead if the owner disappears while waiting. Locks vanish with their process, even on
    SIGKILL."""
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
                yield path
            finally:
                handle.close()
            return
        if control.should_stop():
            yield None
            return
        time.sleep(POLL_S)


def counted_restarts(task: SlurmTask) -> int:
    """The requeues of this job so far, for the run's tag: SLURM_RESTART_COUNT, or the controller's count when
    that is higher (a CI run once saw a requeued job start with the variable unset). Logged on every start."""
    counted = task.restarts
    try:
        counted = max(counted, scheduler.restarts(task.raw_job_id))
    except scheduler.SchedulerError as error:
        print(
            f"[oner] could not ask SLURM for the job's requeues ({error}); using SLURM_RESTART_COUNT", file=sys.stderr
        )
    print(
        f"[oner] SLURM job {task.job_id} on {task.nodes}, rank {task.rank} of {task.world_size}: start after "
        f"{counted} requeue(s) (SLURM_RESTART_COUNT={os.environ.get('SLURM_RESTART_COUNT', 'unset')})",
        file=sys.stderr,
        flush=True,
    )
    return counted


class TrainingJob(submitit.helpers.Checkpointable):
    """One planned run, as submitted to an executor.

    `max_parallel` (local backend) caps how many jobs train at once through lock files in
    `<runs_dir>/.slots` (`runs_dir` being the run directory's parent): jobs beyond it wait for
    a free slot, also after the CLI has exited (`--no-wait`). A per-run lock keeps two
    processes from training one run directory. `owner_pid`: see `OwnerControl`.
    `max_requeues` (SLURM backend): the job runs as one DDP rank per SLURM task, checkpoints and
    requeues on SIGUSR2/SIGTERM (preemption.py), and ends FAILED past that many requeues.
    `init_checkpoint`: a fine-tuning run's parent checkpoint, passed to `train.run`.
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
        max_requeues: int | None = None,
        init_checkpoint: Path | None = None,
        outage_window_s: float = DEFAULT_WINDOW_S,
        options: tracking_ui.JobOptions | None = None,
    ) -> None:
        self._planned: PlannedRun | None = planned
        self._planned_pickle: bytes | None = None
        self.run_name = planned.run_name
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.run_dir = Path(run_dir)
        self.max_parallel = max_parallel
        self.owner_pid = owner_pid
        self.max_requeues = max_requeues
        self.init_checkpoint = init_checkpoint
        self.outage_window_s = outage_window_s
        self._tracker: tracking.MlflowRunLogger | None = None
        self._slot: tuple[list[Path], Path] | None = None  # (every slot, the one held) while a local run trains
        self.options = options or tracking_ui.JobOptions()

    @property
    def planned(self) -> PlannedRun:
        """The run's grid point and config. A job process unpickles it only here, once it trains: the
        config holds unit instances (`data.source`), and importing their modules imports the data
        package and torch: 10.5-11.4 CPU-s and 804 MB per waiting job instead of 3.3-3.8 CPU-s and 170 MB."""
        if self._planned is None:
            assert self._planned_pickle is not None
            self._planned = pickle.loads(self._planned_pickle)
        return self._planned

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        if state["_planned"] is not None:
            state["_planned_pickle"] = cloudpickle.dumps(state["_planned"])
            state["_planned"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        if "planned" in state:  # a job pickled before the plan was deferred (a requeue across an upgrade)
            planned = state.pop("planned")
            state.update(_planned=planned, _planned_pickle=None, run_name=planned.run_name)  # type: ignore[attr-defined]
        self.__dict__.update(state)

    def __call__(self) -> JobOutcome:
        from oner_lab.store_outage import quiet_store_tracebacks

        startup.resume()  # unpickling this job imported MLflow and submitit with the collector paused
        quiet_store_tracebacks()
        try:
            return self._run() if self.max_requeues is None else self._run_on_slurm()
        except Exception as error:  # noqa: BLE001 - tracking itself failed; the CLI records what it can
            message = f"{type(error).__name__}: {error}"
            return JobOutcome(self.run_name, self.run_id, tracking.FAILED, error=message)

    def _run(self) -> JobOutcome:
        control = OwnerControl(self.owner_pid)
        waits = [[self.run_dir / ".lock"]]
        if self.max_parallel:
            waits.insert(0, [self.run_dir.parent / ".slots" / f"slot{k}.lock" for k in range(self.max_parallel)])
        with ExitStack() as held:
            for candidates in waits:
                path = held.enter_context(hold_lock(candidates, control))
                if path is None:
                    return self._end(tracking.KILLED, "the launching command ended before this run started; rerun it")
                if len(candidates) > 1:  # a slot among max_parallel: the runs training now share the CPUs
                    self._slot = (candidates, path)
            client = tracking.connect(self.tracking_uri)

            def stopped(stop: Interrupted) -> JobOutcome:
                asked = interrupts.requested()
                why = f"interrupted ({asked})" if asked else "the launching command ended"
                return self._record(tracking.KILLED, f"{stop}: {why}; rerun it to resume", client)

            with interrupts.installed(), interrupts.training():
                return self._train(control, client, stopped)

    def _run_on_slurm(self) -> JobOutcome:
        """One rank of the run's SLURM job; only rank 0 writes to MLflow (train.run logs on rank 0 only)."""
        assert self.max_requeues is not None
        task = SlurmTask.from_env()
        stop = SignalStop()
        stop.install()
        os.environ.setdefault("MASTER_PORT", str(rendezvous_port(os.environ.get("SLURM_JOB_ID", "0"))))
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        client = tracking.connect(self.tracking_uri) if task.is_main else None
        if client is not None:
            tags = {
                tracking.TAG_SLURM_JOB: task.job_id,
                tracking.TAG_SLURM_REQUEUES: str(counted_restarts(task)),
                tracking.TAG_SLURM_NODES: task.nodes,
                tracking.TAG_WORLD_SIZE: str(task.world_size),
            }
            tracking.set_tags(client, self.run_id, tags)
        if task.restarts > self.max_requeues:
            reason = over_budget_message(f"SLURM requeued the job {task.restarts} times", self.max_requeues, None)
            return self._record(tracking.FAILED, reason, client)
        on_interrupt = lambda interrupted: self._after_signal(task, stop, interrupted, client)  # noqa: E731
        if client is None:
            return self._train(stop, None, on_interrupt)
        with hold_lock([self.run_dir / ".lock"], OwnerControl(None)):
            return self._train(stop, client, on_interrupt)

    def _after_signal(
        self, task: SlurmTask, stop: SignalStop, interrupted: Interrupted, client: MlflowClient | None
    ) -> JobOutcome:
        """After the checkpoint a signal asked for: requeue (exit without an outcome), or end the run."""
        assert self.max_requeues is not None
        requeued = stop.agreed == TERM and task.is_main and scheduler.restarts(task.raw_job_id) > task.restarts
        from oner_lab.distributed import main_rank_says  # torch is loaded by now: training ran

        requeued = main_rank_says(requeued)  # every rank takes rank 0's branch (one scheduler query)
        next_step = decide(stop.agreed, task.restarts, self.max_requeues, requeued)
        event = f"{stop.signal_name} at step {interrupted.step} (checkpoint written)"
        if next_step is Next.OVER_BUDGET:
            cause = f"{stop.signal_name} after {task.restarts} requeue{'s' if task.restarts != 1 else ''}"
            return self._record(
                tracking.FAILED, over_budget_message(cause, self.max_requeues, interrupted.step), client
            )
        if next_step is Next.CANCELLED:
            reason = (
                f"stopped by SLURM without a requeue (scancel, or the time limit): {event}; rerun the spec to resume"
            )
            return self._record(tracking.KILLED, reason, client)
        if client is not None:
            tracking.set_tags(client, self.run_id, {tracking.TAG_SLURM_EVENT: f"{event}: {next_step.value}"})
            tracking.set_status(client, self.run_id, tracking.SCHEDULED)
            if next_step is Next.REQUEUE:
                scheduler.requeue(task.raw_job_id)
        _barrier()  # no rank leaves before rank 0 has requeued (a site may kill the job when one task exits)
        raise SystemExit(f"[oner] {event}: {next_step.value}; the job resumes from the checkpoint when it restarts")

    def _train(
        self, control: RunControl, client: MlflowClient | None, on_interrupt: Callable[[Interrupted], JobOutcome]
    ) -> JobOutcome:
        """`train.run` with the run's MLflow logger (`client` None: a DDP rank > 0, which logs nothing)."""
        started = time.perf_counter()  # start-up on the critical path: importing torch and the run's setup
        with startup.imports_without_gc():  # torch, timm, torchvision: startup.py
            from oner_lab import (
                train,  # only once a slot is held: a waiting job stays ~170 MB instead of ~800 MB
            )
        from oner_lab.phases import PhaseClock

        clock = PhaseClock()
        if self._slot is not None and self.planned.config.train.threads is None:
            from oner_lab.launch.cpu_share import CpuShare

            control = CpuShare(control, *self._slot)

        if client is not None:
            tracking.set_status(client, self.run_id, tracking.RUNNING)
        if self.max_requeues is None:  # one process: it may stop alone (DDP ranks stop together via SignalStop)
            if client is not None:
                tracking.set_tags(client, self.run_id, {tracking.TAG_WORKER: owner.this_process().to_tag()})
            control = _StopOnStoreLoss(control, lambda: self._tracker)
        try:
            with self._logger(client) as logger, self._system_metrics():
                clock.add("startup", time.perf_counter() - started)
                metrics = train.run(
                    self.planned.config,
                    self.run_dir,
                    logger=logger,
                    control=control,
                    init_checkpoint=self.init_checkpoint,
                    clock=clock,
                )
        except Interrupted as stop:
            return on_interrupt(stop)
        except StoreUnavailable as lost:
            return self._record(tracking.KILLED, lost, client, store_lost=True)
        except Exception as error:  # noqa: BLE001 - any failure of one run is recorded, the sweep goes on
            return self._record(tracking.FAILED, error, client)
        except KeyboardInterrupt:
            self._record(tracking.KILLED, "interrupted (Ctrl-C / SIGINT); rerun to resume", client)
            raise
        if client is not None:
            if self.options.log_weights:
                try:  # a store failing here loses the weights artifact only: the run still ends FINISHED
                    tracking_ui.log_final_weights(client, self.run_id, self.run_dir)
                except Exception as error:  # noqa: BLE001
                    print(
                        f"[oner] warning: the final weights of {self.run_name} were not logged: {error}",
                        flush=True,
                    )
            try:
                Outage(self.tracking_uri, self.outage_window_s).insist(
                    lambda: tracking.end_run(client, self.run_id, tracking.FINISHED)
                )
            except StoreUnavailable as lost:
                self._leave_pending(tracking.FINISHED, None)
                return JobOutcome(self.run_name, self.run_id, tracking.FINISHED, dict(metrics), store_error=str(lost))
        return JobOutcome(self.run_name, self.run_id, tracking.FINISHED, metrics=dict(metrics))

    def _system_metrics(self) -> AbstractContextManager[object]:
        """MLflow system metrics of this run while it trains, sampled by one process per node."""
        options = getattr(self, "options", tracking_ui.JobOptions())  # a job pickled before options existed
        try:
            from oner_lab import system_metrics  # MLflow's monitor needs psutil
        except ImportError as error:
            if options.system_metrics:
                print(f"[oner] system metrics not recorded: {error} (pip install psutil)", file=sys.stderr)
            return nullcontext()
        return system_metrics.node_metrics(self.tracking_uri, self.run_id, options)

    def _logger(self, client: MlflowClient | None) -> AbstractContextManager[RunLogger | None]:
        """What `train.run` logs through: the run's MLflow logger on rank 0, nothing on other ranks.
        A sweep trial (trial.py) wraps it to report its metric to Optuna."""
        if client is None:
            return _no_logger()
        self._tracker = tracking.MlflowRunLogger(
            client, self.run_id, outage_window_s=self.outage_window_s, spill=self.run_dir / UNLOGGED
        )
        if self.max_requeues is None:
            self._tracker.beat({tracking.TAG_WORKER: owner.this_process().to_tag()})
        return self._tracker

    def _end(self, status: str, error: BaseException | str) -> JobOutcome:
        """Ends the MLflow run before training started (a fresh connection)."""
        return self._record(status, error, tracking.connect(self.tracking_uri))

    def _record(
        self, status: str, error: BaseException | str, client: MlflowClient | None, *, store_lost: bool = False
    ) -> JobOutcome:
        """The outcome; also ends the MLflow run with it when `client` is given (rank 0). A store that
        cannot take it gets it later: it is left in the run directory for the next invocation."""
        message = (
            f"{type(error).__name__}: {error}" if isinstance(error, BaseException) and not store_lost else str(error)
        )
        store_error = str(error) if store_lost else None
        if client is not None:
            try:
                Outage(self.tracking_uri, 0 if store_lost else self.outage_window_s).insist(
                    lambda: tracking.end_run(client, self.run_id, status, error)
                )
            except StoreUnavailable as lost:
                self._leave_pending(status, message)
                store_error = store_error or str(lost)
        return JobOutcome(self.run_name, self.run_id, status, error=message, store_error=store_error)

    def _leave_pending(self, status: str, error: str | None) -> None:
        """Writes how the run ended to `<run_dir>/.pending_end.json` (read by the next invocation)."""
        import json

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / PENDING_END).write_text(json.dumps({"run_id": self.run_id, "status": status, "error": error}))


class _StopOnStoreLoss:
    """`RunControl` that also stops (after a checkpoint) once the run's store failed past its window."""

    def __init__(self, inner: RunControl, tracker: Callable[[], tracking.MlflowRunLogger | None]) -> None:
        self.inner = inner
        self.tracker = tracker

    def should_stop(self) -> bool:
        found = self.tracker()
        return self.inner.should_stop() or (found is not None and found.should_stop())


def rendezvous_port(slurm_job_id: str) -> int:
    """The rank-0 rendezvous port of a job: the same on every rank (one SLURM job id) and below Linux's
    ephemeral range (32768-60999), where submitit's random pick could meet a port srun or slurmstepd
    already holds on the first node (EADDRINUSE, then the other ranks time out)."""
    digits = "".join(ch for ch in slurm_job_id if ch.isdigit()) or "0"
    return 20000 + int(digits) % 12000


@contextmanager
def _no_logger() -> Iterator[None]:
    yield None


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
