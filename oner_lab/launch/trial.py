"""One sweep trial as a job: a `TrainingJob` that reports its metric to the Optuna study and ends its trial.

Inside the job (any backend), every evaluation of the study's metric is reported to the trial;
when the pruner says so, training stops at that step after a checkpoint (through `RunControl`,
as a preemption would), the trial ends PRUNED and its MLflow run KILLED with tag
`oner.sweep.state: PRUNED`. A finished run ends the trial COMPLETE with the final metric, a
failed one FAIL. A run stopped for any other reason (the sweep driver killed, a SLURM requeue)
leaves the trial RUNNING: the next driver resumes it into the same trial, run and directory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from oner_lab import study as studies
from oner_lab import tracking
from oner_lab.contract import Interrupted, RunControl, RunLogger
from oner_lab.launch.job import JobOutcome, TrainingJob
from oner_lab.spec.models import PrunerConfig


@dataclass(frozen=True)
class TrialRef:
    """Where a job finds its trial: the study's storage and name, the trial, the metric, the pruner."""

    storage: str
    study: str
    number: int
    trial_id: int
    metric: str
    pruner: PrunerConfig

    def open(self) -> tuple[optuna.Study, optuna.trial.Trial]:
        study = optuna.load_study(
            study_name=self.study, storage=studies.open_storage(self.storage), pruner=studies.make_pruner(self.pruner)
        )
        return study, optuna.trial.Trial(study, self.trial_id)

    def reported_steps(self, study: optuna.Study) -> set[int]:
        """The steps this trial already reported (a resumed trial repeats the steps since its checkpoint)."""
        frozen = next(trial for trial in study.get_trials(deepcopy=False) if trial.number == self.number)
        return set(frozen.intermediate_values)


class TrialReporter:
    """A `RunLogger` around the run's MLflow logger that reports the metric to the trial at each
    evaluation and asks the pruner; `pruned_at` is the step it said stop."""

    def __init__(self, inner: RunLogger, trial: optuna.trial.Trial, metric: str, reported: set[int]) -> None:
        self.inner = inner
        self.trial = trial
        self.metric = metric
        self.reported = reported
        self.pruned_at: int | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.inner.log_metrics(metrics, step)
        if self.metric in metrics and step not in self.reported:
            self.trial.report(float(metrics[self.metric]), step)
            self.reported.add(step)
            if self.trial.should_prune():
                self.pruned_at = step

    def log_params(self, params: Mapping[str, str]) -> None:
        """Passes the training loop's cost params on to the run's logger."""
        inner = getattr(self.inner, "log_params", None)
        if inner is not None:
            inner(params)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)

    def flush(self) -> None:
        self.inner.flush()


class PruneOrStop:
    """`RunControl`: the backend's own stop (owner gone, SLURM signal) or the pruner's, agreed by every
    DDP rank (only rank 0 reports to the study)."""

    def __init__(self, control: RunControl, pruned: Callable[[], bool]) -> None:
        self.control = control
        self.pruned = pruned
        self.agreed_pruned = False

    def should_stop(self) -> bool:
        import torch.distributed as dist

        stop = self.control.should_stop()
        pruned = self.pruned()
        if dist.is_initialized() and dist.get_world_size() > 1:
            import torch

            from oner_lab.distributed import collective_device

            flag = torch.tensor([int(pruned)], device=collective_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            pruned = bool(flag.item())
        self.agreed_pruned = pruned
        return stop or pruned


class TrialJob(TrainingJob):
    """A `TrainingJob` (same backends, locks, requeues) whose run is trial `trial.number` of a study."""

    def __init__(self, *args: Any, trial: TrialRef, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trial = trial
        self._reporter: TrialReporter | None = None
        self._opened: tuple[optuna.Study, optuna.trial.Trial] | None = None

    def _train(
        self, control: RunControl, client: MlflowClient | None, on_interrupt: Callable[[Interrupted], JobOutcome]
    ) -> JobOutcome:
        self._opened = self.trial.open() if client is not None else None  # rank 0 talks to the study
        guard = PruneOrStop(control, lambda: self._reporter is not None and self._reporter.pruned_at is not None)

        def interrupted(stop: Interrupted) -> JobOutcome:
            return self._pruned(stop, client) if guard.agreed_pruned else on_interrupt(stop)

        outcome = super()._train(guard, client, interrupted)
        if client is not None and outcome.status in (tracking.FINISHED, tracking.FAILED):
            outcome = self._tell(outcome, client)
        return outcome

    def _logger(self, client: MlflowClient | None) -> AbstractContextManager[RunLogger | None]:
        return self._reporting(super()._logger(client))

    @contextmanager
    def _reporting(self, inner: AbstractContextManager[RunLogger | None]) -> Iterator[RunLogger | None]:
        with inner as logger:
            if logger is None or self._opened is None:
                yield logger
                return
            study, trial = self._opened
            self._reporter = TrialReporter(logger, trial, self.trial.metric, self.trial.reported_steps(study))
            yield self._reporter

    def _pruned(self, stop: Interrupted, client: MlflowClient | None) -> JobOutcome:
        reason = f"pruned at step {stop.step} (checkpoint written): {self.trial.metric} below the median of the completed trials"
        if client is not None and self._opened is not None:
            self._opened[0].tell(self.trial.number, state=TrialState.PRUNED, skip_if_finished=True)
            tracking.set_tags(client, self.run_id, {tracking.TAG_TRIAL_STATE: TrialState.PRUNED.name})
        return self._record(tracking.KILLED, reason, client)

    def _tell(self, outcome: JobOutcome, client: MlflowClient) -> JobOutcome:
        """Ends the trial: COMPLETE with the final metric, or FAIL (a failed run, a metric missing or NaN)."""
        assert self._opened is not None
        study = self._opened[0]
        value = outcome.metrics.get(self.trial.metric)
        if outcome.status == tracking.FINISHED and value is not None and math.isfinite(value):
            study.tell(self.trial.number, value, skip_if_finished=True)
            tracking.set_tags(client, self.run_id, {tracking.TAG_TRIAL_STATE: TrialState.COMPLETE.name})
            return outcome
        study.tell(self.trial.number, state=TrialState.FAIL, skip_if_finished=True)
        tracking.set_tags(client, self.run_id, {tracking.TAG_TRIAL_STATE: TrialState.FAIL.name})
        if outcome.status == tracking.FINISHED:
            error = f"{self.trial.metric} is {value} at the end of training"
            tracking.end_run(client, self.run_id, tracking.FAILED, error)
            return JobOutcome(outcome.run_name, outcome.run_id, tracking.FAILED, outcome.metrics, error)
        return outcome
