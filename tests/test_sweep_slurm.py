"""A sweep on the real SLURM test cluster (bash slurm/local-cluster.sh start): the micro study of
sweep_study.py, each trial a SLURM job (cluster profile `local`), two at a time, one pruned; the
driver gets SIGTERM mid-study (its jobs are cancelled, checkpoint and stop) and the same command
run again resumes the cancelled trials as new jobs into the same trials, MLflow runs and directories.

A trial of this study trains its 40 steps in about a second on a fast machine: less than a poll of
the store and the driver's cancellation take together (CI once saw the only running trial finish
between the test's decision and the driver's scancel, leaving nothing to resume). So the test holds
the trial's job with SIGSTOP (`hold_a_trial_mid_training`), as an overloaded node would, once its own
log shows a trained step; the driver's scancel continues it (SLURM sends SIGCONT before SIGTERM) and
it checkpoints and stops."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from mlflow_store import copy_store
from optuna.trial import TrialState
from sweep_study import (
    EVAL_EVERY,
    PRUNED_TRIAL,
    STEPS,
    client_of,
    hold_a_trial_mid_training,
    runs_in,
    start_driver,
    study_in,
    write_spec,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ON_SLURM = ["--set", "launcher.backend=slurm", "--set", "launcher.slurm.cluster=local"]


def test_a_study_on_slurm_interrupted_and_rerun_ends_with_four_finished_trials(
    tmp_path: Path, mlflow_template: Path, slurm_partition: str
) -> None:
    copy_store(mlflow_template, tmp_path)
    spec = write_spec(tmp_path, tmp_path / "data_cache")
    driver = start_driver(tmp_path, spec, *ON_SLURM)
    held, held_at, _ = hold_a_trial_mid_training(tmp_path, driver)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=90) == 130
    interrupted = study_in(tmp_path).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert held in {trial.number for trial in interrupted}, (
        f"trial {held}, held at step {held_at}, was not left RUNNING"
    )
    first_jobs = {trial.number: trial.user_attrs["slurm_job"] for trial in interrupted}
    stopped = {
        run.data.tags["oner.sweep.trial"]: run for run in runs_in(tmp_path) if "oner.sweep.trial" in run.data.tags
    }
    for trial in interrupted:
        assert stopped[str(trial.number)].info.status == "KILLED"

    restarted_ms = int(time.time() * 1000)
    again = start_driver(tmp_path, spec, *ON_SLURM)
    assert again.wait(timeout=300) == 0, tmp_path / "driver.log"

    trials = study_in(tmp_path).get_trials(deepcopy=False)
    assert [trial.number for trial in trials] == [0, 1, 2, 3]
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert trials[PRUNED_TRIAL].last_step == EVAL_EVERY
    runs = runs_in(tmp_path)
    [parent] = [run for run in runs if "oner.sweep.trial" not in run.data.tags]
    children = {run.data.tags["oner.sweep.trial"]: run for run in runs if "oner.sweep.trial" in run.data.tags}
    assert sorted(children) == ["0", "1", "2", "3"] and len(runs) == 5 and parent.info.status == "FINISHED"
    for trial in trials:
        run = children[str(trial.number)]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert (
            run.info.run_id == trial.user_attrs["mlflow_run_id"]
            and run.data.tags["oner.slurm.job_id"] == trial.user_attrs["slurm_job"]
        )
    client = client_of(tmp_path)
    for number, job in first_jobs.items():
        trial = trials[number]
        assert trial.user_attrs["slurm_job"] != job, "the interrupted trial was not resubmitted"
        history = client.get_metric_history(trial.user_attrs["mlflow_run_id"], "train/loss")
        steps = [metric.step for metric in history]
        assert len(steps) == len(set(steps)) and max(steps) <= STEPS
        assert any(metric.timestamp >= restarted_ms for metric in history), (
            "the resumed trial logged nothing after the restart"
        )
        assert Path(trial.user_attrs["run_dir"], "checkpoints", "last.pt").exists()
