"""A sweep whose study lives in PostgreSQL and whose runs on the MLflow server, its trials SLURM jobs
over two nodes (bash slurm/local-cluster.sh start --nodes 2; bash slurm/local-tracking.sh start).

The micro study of sweep_study.py with all four trials at once (`sweep.parallel: 4`), so the median
pruner may meet any number of finished trials: each trial ends COMPLETE or PRUNED. The driver gets
SIGKILL mid-study (no chance to cancel its jobs or end anything) and the same command run again must
account for every trial: four finished trials, one MLflow run each on the server, under the study's run.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.trial import TrialState
from sweep_study import start_driver, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.server, pytest.mark.slow]

TRIALS = 4
STEPS = 120
"""Long enough that all four trials train at once although their jobs start seconds apart (start-up,
cost count); the shared sweep spec's 40 steps let the first finish before the last began."""
LOG_EVERY = 5
"""sweep_study.SPEC's train.log_every: the steps a trial logs train/loss at."""
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def runs_of(client: MlflowClient, experiment: str) -> list[Run]:
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def wait_mid_study(client: MlflowClient, storage: str, study: str, driver, timeout_s: float = 240) -> None:  # noqa: ANN001
    """Returns once every trial is a running job that has logged a step and not the last one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before it could be killed"
        try:
            trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
        except KeyError:  # not created yet
            trials = []
        training = [t for t in trials if t.state == TrialState.RUNNING and "slurm_job" in t.user_attrs]
        steps = [
            [m.step for m in client.get_metric_history(t.user_attrs["mlflow_run_id"], "train/loss")] for t in training
        ]
        if len(training) == TRIALS and all(s and max(s) < STEPS for s in steps):
            return
        time.sleep(0.5)
    raise AssertionError(f"the {TRIALS} trials were not all training within {timeout_s}s")


def test_a_study_in_postgresql_over_two_nodes_survives_a_killed_driver(
    tmp_path: Path,
    tracking_server,
    two_slurm_nodes: list[str],  # noqa: ANN001
) -> None:
    if not tracking_server.optuna_storage:
        pytest.skip("ONER_TEST_OPTUNA_STORAGE is not set (bash slurm/local-tracking.sh optuna-uri)")
    name = f"sweep-pg-{uuid.uuid4().hex[:8]}"
    arguments = [
        "--set",
        "launcher.backend=slurm",
        "--set",
        "launcher.slurm.cluster=local",
        "--set",
        f"tracking.uri={tracking_server.uri}",
        "--set",
        f"tracking.experiment={name}",
        "--set",
        f"sweep.storage={tracking_server.optuna_storage}",
        "--set",
        f"sweep.study={name}",
        "--set",
        f"sweep.parallel={TRIALS}",
        "--set",
        f"launcher.runs_dir={tmp_path / 'runs'}",
        "--set",
        f"base.train.steps={STEPS}",
        "--set",
        f"base.train.checkpoint_every={STEPS}",
    ]
    spec = write_spec(tmp_path, tmp_path / "data_cache")
    client = MlflowClient(tracking_uri=tracking_server.uri)
    driver = start_driver(tmp_path, spec, *arguments)
    wait_mid_study(client, tracking_server.optuna_storage, name, driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)

    again = start_driver(tmp_path, spec, *arguments)
    assert again.wait(timeout=300) == 0, sorted(tmp_path.glob("driver-*.log"))[-1].read_text()[-3000:]

    trials = optuna.load_study(study_name=name, storage=tracking_server.optuna_storage).get_trials(deepcopy=False)
    assert [trial.number for trial in trials] == list(range(TRIALS)), "a trial was added or lost"
    assert all(trial.state in FINISHED for trial in trials), [trial.state for trial in trials]
    runs = runs_of(client, name)
    [parent] = [run for run in runs if "oner.sweep.trial" not in run.data.tags]
    children = {run.data.tags["oner.sweep.trial"]: run for run in runs if "oner.sweep.trial" in run.data.tags}
    assert sorted(children) == [str(n) for n in range(TRIALS)] and len(runs) == TRIALS + 1, (
        "not one MLflow run per trial"
    )
    assert parent.info.status == "FINISHED"
    nodes = set()
    for trial in trials:
        run = children[str(trial.number)]
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == ("FINISHED" if trial.state == TrialState.COMPLETE else "KILLED")
        steps = [metric.step for metric in client.get_metric_history(run.info.run_id, "train/loss")]
        assert len(steps) == len(set(steps)), f"trial {trial.number}: a step logged twice"
        last = STEPS if trial.state == TrialState.COMPLETE else max(steps)
        assert steps == list(range(LOG_EVERY, last + 1, LOG_EVERY)), f"trial {trial.number}: a step lost"
        nodes.add(run.data.tags["oner.slurm.nodes"])
    assert nodes >= set(two_slurm_nodes[:2]), f"the trials did not run on both nodes: {nodes}"
    states = [trial.state.name for trial in trials]
    print(
        f"\nsweep on PostgreSQL: driver SIGKILLed with {TRIALS} trials training, rerun: {states}, nodes {sorted(nodes)}"
    )
