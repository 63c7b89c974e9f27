"""The sweep driver: a spec's Optuna study run as trial jobs on the spec's backend.

`sweep.parallel` trials run at once; each is a `TrialJob` (trial.py) in its own MLflow run, nested
under the study's run, and in `<runs_dir>/<study>/trial-<number>`. The study's storage holds the
truth: a trial counts once its job ended it COMPLETE or PRUNED, and the driver stops when
`sweep.trials` have. Trials left RUNNING by a driver that died are resumed by the next one into
the same trial, MLflow run and run directory (from their last checkpoint); on SLURM a trial whose
job is still queued or running is waited for instead.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
import submitit
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError
from rich.console import Console

from oner_lab import study as studies
from oner_lab import tracking, train
from oner_lab.launch import scheduler
from oner_lab.launch.executors import Dispatch, job_options, submit_jobs
from oner_lab.launch.trial import TrialJob, TrialRef
from oner_lab.launch.wait import SlurmQueue, collect, stop
from oner_lab.spec import PlannedRun, Spec, SpecError, config_hash

POLL_S = 1.0
ATTR_RUN_ID, ATTR_RUN_DIR, ATTR_SLURM_JOB = "mlflow_run_id", "run_dir", "slurm_job"
"""Optuna user attributes of a trial: how a later driver finds its MLflow run, directory and SLURM job."""


@dataclass
class ActiveTrial:
    number: int
    dispatch: Dispatch
    job: submitit.Job
    adopted: bool = False
    """Submitted by an earlier driver (its SLURM job outlived it): resumed, not failed, if it ends RUNNING."""


def run_study(spec: Spec, planned: PlannedRun, executor: submitit.Executor | None, uri: str, console: Console) -> int:
    """Runs (or, with `executor` None, describes) the spec's study; the CLI's exit code."""
    try:
        studies.check_sweep_run(spec, planned.config)
        storage = studies.storage_url(spec)
    except SpecError as error:
        return _fail(error)
    name = studies.study_name(spec)
    if executor is None:  # --dry-run: read only
        console.print(_describe(spec, storage, name))
        return 0
    try:
        client = tracking.connect(uri)
        study = studies.open_study(spec, storage)
    except (tracking.TrackingError, studies.StudyError) as error:
        return _fail(f"{spec.source_file}: {error}")
    return Driver(spec, planned, executor, client, uri, study, storage, console).run()


class Driver:
    """One invocation's hold on a study: resumes its RUNNING trials, starts new ones, waits, records."""

    def __init__(
        self,
        spec: Spec,
        planned: PlannedRun,
        executor: submitit.Executor,
        client: MlflowClient,
        uri: str,
        study: optuna.Study,
        storage: str,
        console: Console,
    ) -> None:
        assert spec.sweep is not None
        self.spec, self.sweep, self.planned = spec, spec.sweep, planned
        self.executor, self.client, self.uri, self.study, self.storage = executor, client, uri, study, storage
        self.console = console
        self.name = studies.study_name(spec)
        self.experiment = spec.experiment_name
        local = spec.launcher.local.model_copy(update={"max_parallel": self.sweep.parallel})
        self.launcher = spec.launcher.model_copy(update={"local": local})  # local slots = trials at once
        self.runs_dir = Path(spec.launcher.runs_dir).resolve()
        self.slurm = spec.launcher.backend == "slurm"
        self.queue = SlurmQueue() if self.slurm else None
        self.active: dict[int, ActiveTrial] = {}
        self.parent_run_id = ""
        self.interrupts = DeferredInterrupts()

    def run(self) -> int:
        note = (
            f"Optuna study `{self.name}` of spec `{self.spec.name}` ({self.spec.source_file}): "
            f"{self.sweep.direction} {self.sweep.metric} over {self.sweep.trials} trials; storage {self.storage}."
        )
        self.parent_run_id = tracking.study_run(self.client, self.experiment, self.name, note)
        previous = {signum: signal.signal(signum, self.interrupts.handle) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._take_over_running()
            code = self._loop()
        except KeyboardInterrupt:
            active = list(self.active.values())
            stopped = stop([a.job for a in active], [a.dispatch for a in active], self.client, self.experiment)
            tracking.end_run(
                self.client, self.parent_run_id, tracking.KILLED, "the sweep driver was interrupted; rerun to continue"
            )
            self.console.print(
                f"Interrupted: stopped {', '.join(stopped) or 'nothing'}. Run the same command again to continue the study "
                "(its running trials resume from their checkpoints)."
            )
            return 130
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        status = tracking.FINISHED if code == 0 else tracking.FAILED
        tracking.end_run(self.client, self.parent_run_id, status, None if code == 0 else "too many trials failed")
        return code

    # --- the loop ------------------------------------------------------------------------
    def _loop(self) -> int:
        trials = self.study.get_trials(deepcopy=False)
        self.console.print(
            f"Study {self.name!r} ({self.storage}): {studies.finished_count(trials)}/{self.sweep.trials} finished, "
            f"{len(self.active)} resumed or still running; {self.sweep.parallel} at a time on the {self.launcher.backend} backend."
        )
        while True:
            self._reap()
            trials = self.study.get_trials(deepcopy=False)
            finished = studies.finished_count(trials)
            failed = sum(trial.state == TrialState.FAIL for trial in trials)
            if failed >= self.sweep.trials and not self.active:
                self.console.print(f"[red]{failed} trials failed[/] (as many as sweep.trials): the study stops here.")
                return 1
            if finished >= self.sweep.trials and not self.active:
                self._summary(trials)
                return 0
            while failed < self.sweep.trials and len(self.active) < self.sweep.parallel:
                if finished + len(self.active) >= self.sweep.trials:
                    break
                with self.interrupts.deferred():  # a trial asked is submitted and tracked, or not asked at all
                    started = self._start_new()
                if not started:
                    failed += 1
            time.sleep(0 if self.launcher.backend == "debug" else POLL_S)

    def _take_over_running(self) -> None:
        """Trials an earlier driver left RUNNING: wait for those whose SLURM job is alive, resume the rest."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        alive = self._alive_jobs([t.user_attrs[ATTR_SLURM_JOB] for t in running if ATTR_SLURM_JOB in t.user_attrs])
        for frozen in running:
            job_id = frozen.user_attrs.get(ATTR_SLURM_JOB)
            if job_id in alive and ATTR_RUN_ID in frozen.user_attrs:
                dispatch = self._dispatch(frozen.number, frozen.params, frozen.user_attrs)
                job = submitit.SlurmJob(self.runs_dir / "submitit" / "%j", job_id)
                self.active[frozen.number] = ActiveTrial(frozen.number, dispatch, job, adopted=True)
                self.console.print(f"trial {frozen.number}: still running as SLURM job {job_id}; waiting for it")
            else:
                with self.interrupts.deferred():
                    self._resume(frozen)

    def _alive_jobs(self, job_ids: list[str]) -> set[str]:
        if not self.slurm or not job_ids:
            return set()
        try:
            states = scheduler.queue_states(job_ids)
        except scheduler.SchedulerError:
            return set()
        return {job_id for job_id in job_ids if states.get(job_id) in scheduler.ALIVE_STATES}

    def _resume(self, frozen: FrozenTrial) -> None:
        dispatch = self._dispatch(frozen.number, frozen.params, frozen.user_attrs, trial_id=frozen._trial_id)
        self.console.print(f"trial {frozen.number}: resuming ({_params_text(frozen.params)})")
        self._submit(frozen.number, frozen._trial_id, dispatch)  # Optuna has no public trial-id accessor

    def _start_new(self) -> bool:
        """Asks the sampler for a trial and submits it; False when its config is refused (trial FAIL)."""
        trial = self.study.ask()
        params = studies.suggest(trial, self.sweep)
        try:
            dispatch = self._dispatch(trial.number, params, {}, trial_id=trial._trial_id)
        except (ValidationError, SpecError) as error:
            self.study.tell(trial, state=TrialState.FAIL)
            reason = (
                str(error).strip().splitlines()[0]
                if not isinstance(error, ValidationError)
                else _pydantic_reason(error)
            )
            self.console.print(
                f"[red]trial {trial.number} FAIL[/] ({_params_text(params)}): its config is refused: {reason}"
            )
            return False
        self.console.print(f"trial {trial.number}: started ({_params_text(params)})")
        self._submit(trial.number, trial._trial_id, dispatch)
        return True

    def _dispatch(
        self, number: int, params: dict[str, Any], attrs: dict[str, Any], trial_id: int | None = None
    ) -> Dispatch:
        """The trial's run: its config, MLflow run (created, or re-opened from `attrs`) and directory."""
        config = studies.trial_config(self.planned.config, params)
        train.validate(config)
        planned = PlannedRun(self.planned.variant, self.planned.seed, {"trial": number}, config, config_hash(config))
        if ATTR_RUN_ID in attrs:
            run_dir = Path(attrs[ATTR_RUN_DIR])
            return Dispatch(planned, attrs[ATTR_RUN_ID], run_dir)
        run_dir = self.runs_dir / self.name / f"trial-{number:04d}"
        run_id = tracking.create_trial_run(self.client, self.spec, planned, run_dir, self.parent_run_id, number, params)
        assert trial_id is not None
        trial = optuna.trial.Trial(self.study, trial_id)
        trial.set_user_attr(ATTR_RUN_ID, run_id)
        trial.set_user_attr(ATTR_RUN_DIR, str(run_dir))
        return Dispatch(planned, run_id, run_dir)

    def _submit(self, number: int, trial_id: int, dispatch: Dispatch) -> None:
        tracking.set_status(self.client, dispatch.run_id, tracking.SCHEDULED)
        ref = TrialRef(self.storage, self.name, number, trial_id, self.sweep.metric, self.sweep.pruner)
        options = job_options(self.launcher, owner_pid=os.getpid())
        job = TrialJob(dispatch.planned, self.uri, dispatch.run_id, dispatch.run_dir, trial=ref, **options)
        [submitted] = submit_jobs(self.executor, self.launcher, [job])
        if self.slurm:
            tracking.set_tags(self.client, dispatch.run_id, {tracking.TAG_SLURM_JOB: submitted.job_id})
            optuna.trial.Trial(self.study, trial_id).set_user_attr(ATTR_SLURM_JOB, submitted.job_id)
        self.active[number] = ActiveTrial(number, dispatch, submitted)

    def _reap(self) -> None:
        """Trials whose job ended: report them; one its job left RUNNING is FAIL (or resumed, if adopted)."""
        if self.queue is not None:
            self.queue.refresh([active.job for active in self.active.values()])
        for number, active in list(self.active.items()):
            ended = self.queue.ended(active.job) if self.queue is not None else active.job.done()
            if not ended:
                continue
            del self.active[number]
            outcome = collect(active.job, active.dispatch, self.client, self.experiment)
            frozen = self._trial(number)
            if frozen.state == TrialState.RUNNING and active.adopted:
                self._resume(frozen)
                continue
            if frozen.state == TrialState.RUNNING:
                self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
                tracking.set_tags(self.client, active.dispatch.run_id, {tracking.TAG_TRIAL_STATE: TrialState.FAIL.name})
                frozen = self._trial(number)
            self._report(frozen, outcome.error)

    def _trial(self, number: int) -> FrozenTrial:
        return next(trial for trial in self.study.get_trials(deepcopy=False) if trial.number == number)

    def _report(self, frozen: FrozenTrial, error: str | None) -> None:
        trials = self.study.get_trials(deepcopy=False)
        finished = studies.finished_count(trials)
        state = frozen.state.name
        detail = {
            TrialState.COMPLETE: f"{self.sweep.metric} = {frozen.value:.4g}",
            TrialState.PRUNED: f"at step {frozen.last_step}",
        }.get(frozen.state, (error or "").strip().splitlines()[0][:160] if error else "")
        style = {TrialState.COMPLETE: "green", TrialState.PRUNED: "yellow"}.get(frozen.state, "red")
        self.console.print(
            f"[{style}]trial {frozen.number} {state}[/] {detail} [{finished}/{self.sweep.trials} finished]"
        )
        if any(trial.state == TrialState.COMPLETE for trial in trials):
            best = self.study.best_trial
            assert best.value is not None
            tracking.log_best_trial(self.client, self.parent_run_id, best.number, best.value, best.params, finished)

    def _summary(self, trials: list[FrozenTrial]) -> None:
        counts = {
            state: sum(trial.state == state for trial in trials) for state in (TrialState.COMPLETE, TrialState.PRUNED)
        }
        line = f"Study {self.name!r} done: {counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned"
        if counts[TrialState.COMPLETE]:
            best = self.study.best_trial
            line += f"; best trial {best.number}: {self.sweep.metric} = {best.value:.4g} ({_params_text(best.params)})"
        self.console.print(line)


def _describe(spec: Spec, storage: str, name: str) -> str:
    """What a run would do, read without creating the storage."""
    sweep = spec.sweep
    assert sweep is not None
    head = f"Sweep {name!r}: {sweep.direction} {sweep.metric}, {sweep.trials} trials, {sweep.parallel} at a time; storage {storage}."
    try:
        study = studies.load_study(spec, storage)
    except studies.StudyError as error:
        return f"{head} {error}"
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(trial.state == state for trial in trials) for state in TrialState}
    left = max(0, sweep.trials - studies.finished_count(trials))
    held = ", ".join(f"{count} {state}" for state, count in counts.items() if count)
    return f"{head} It holds {held or 'no trial'}; {left} more to finish."


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in params.items()
    )


def _pydantic_reason(error: ValidationError) -> str:
    problem = error.errors(include_url=False)[0]
    return f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"


def _fail(message: object) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


class DeferredInterrupts:
    """SIGTERM/SIGINT as KeyboardInterrupt, held back inside `deferred()` sections.

    Between asking Optuna for a trial and recording its submitted job, an interrupt would leave a
    RUNNING trial whose job nobody stops (on SLURM: a second job on the same run directory after a
    rerun). Signals are held in Python rather than masked, because a masked signal would be
    inherited by the local jobs started inside the section."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            if self.pending is None:  # said once: a slow or locked store can hold the section for minutes
                # os.write, not print: a handler's print re-entering a buffered stderr raises RuntimeError
                os.write(
                    2,
                    f"[oner] {signal.Signals(signum).name}: stopping once the trial being submitted is recorded "
                    "in the stores (this waits for them if they are slow or locked)\n".encode(),
                )
            self.pending = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise KeyboardInterrupt(signal.Signals(signum).name)
