"""Sweeps (docs/sweep.md): bad sweep sections refused before any trial starts; a real 4-trial study on
the local backend, two at a time, one trial pruned, the driver SIGKILLed mid-study and run again;
the table CLI and analysis/sweep.ipynb on the study it leaves."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import papermill
import pytest
from held_processes import signal_all
from mlflow_store import copy_store
from optuna.trial import TrialState
from sweep_study import (
    EVAL_EVERY,
    EXPERIMENT,
    LEARNING_RATES,
    PRUNED_TRIAL,
    STEPS,
    STUDY,
    client_of,
    hold_a_trial_mid_training,
    runs_in,
    start_driver,
    study_in,
    write_spec,
)

from oner_lab import study as studies
from oner_lab import table
from oner_lab.launch.sweep import DeferredInterrupts
from oner_lab.run import main
from oner_lab.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent

BAD_SWEEPS = [
    (
        "sweep.space={train.lrr: {type: float, low: 1.0e-4, high: 1.0e-2}}",
        "sweep.space.train.lrr",
        "did you mean 'train.lr'",
    ),
    ("sweep.space={train.lr: {type: float, low: 1.0e-2, high: 1.0e-4}}", "sweep.space.train.lr.low", "at most 0.0001"),
    (
        "sweep.space={train.lr: {type: float, low: 0, high: 1.0e-2, log: true}}",
        "sweep.space.train.lr.low",
        "a number > 0",
    ),
    ("sweep.space={train.steps: {type: float, low: 10, high: 20}}", "sweep.space.train.steps.type", "type: int"),
    (
        "sweep.space={model.head: {type: categorical, choices: [shared, two]}}",
        "sweep.space.model.head.choices.1",
        "per_modality",
    ),
    ("sweep.space={train.lr: {type: uniform, low: 1, high: 2}}", "sweep.space.train.lr", "'categorical'"),
    ("sweep.metric=eval/shapes/top1", "sweep.metric", "eval/shapes/rsum"),
    ("sweep.metric=eval/coco/rsum", "sweep.metric", "eval/shapes/tr_r1"),
    ("sweep.enqueue=[{train.lr: 5}]", "sweep.enqueue.0.train.lr", "[1e-09, 0.1]"),
    ("sweep.enqueue=[{train.wd: 0.1}]", "sweep.enqueue.0.train.wd", "one of: train.lr"),
    ("sweep.storage=sqlite:///mlflow.db", "sweep.storage", "alembic_version"),
    ("sweep.storage=optuna.db", "sweep.storage", "journal:<file>"),
    ("base.eval.every_steps=null", "sweep.pruner.type", "base.eval.every_steps"),
    ("grid.seed=[0,1]", "grid", "exactly one grid point"),
    ("sweep.direction=up", "sweep.direction", "maximize, minimize"),
]


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


@pytest.mark.parametrize(("override", "key", "allowed"), BAD_SWEEPS, ids=[key for _, key, _ in BAD_SWEEPS])
def test_a_bad_sweep_exits_2_naming_the_key_before_anything_is_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    override: str,
    key: str,
    allowed: str,
) -> None:
    spec = write_spec(tmp_path, tmp_path / "data_cache")
    monkeypatch.chdir(tmp_path)
    assert main([str(spec), "--set", override]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {spec}: {key}:") and allowed in error and len(error.strip().splitlines()) == 1, (
        error
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sweep.yaml"]  # no store, no study, no job


def test_force_and_no_wait_are_refused_for_a_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, tmp_path / "data_cache")
    monkeypatch.chdir(tmp_path)
    for flag in ("--force", "--no-wait"):
        assert main([str(spec), flag]) == 2
        assert "do not apply to a sweep" in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_shipped_sweep_spec_loads_with_its_slurm_profile() -> None:
    spec = load_spec(ROOT / "experiments" / "sweep.yaml", profile="slurm")
    assert (
        spec.sweep is not None and spec.sweep.storage == "journal:optuna.journal" and spec.launcher.backend == "slurm"
    )
    studies.check_sweep_run(spec, spec.base)


@dataclass(frozen=True)
class KilledStudy:
    directory: Path
    spec: Path
    resumed: dict[int, tuple[str, str]]
    """Trials left RUNNING by the killed driver -> (MLflow run id, run directory) before the restart."""
    restarted_ms: int


@pytest.fixture(scope="module")
def killed_study(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path, data_cache: Path) -> KilledStudy:
    """The micro study on the local backend: driver SIGKILLed once a trial completed and another is
    training (held there, `hold_a_trial_mid_training`), then the same command run again to the end."""
    directory = tmp_path_factory.mktemp("sweep_local")
    copy_store(mlflow_template, directory)
    spec = write_spec(directory, data_cache)
    driver = start_driver(directory, spec)
    _, _, held = hold_a_trial_mid_training(directory, driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    signal_all(held, signal.SIGCONT)  # the held job goes on, finds its driver gone and stops
    deadline = time.monotonic() + 60  # its jobs notice and stop after a checkpoint
    while any(run.info.status == "RUNNING" for run in runs_in(directory) if "oner.sweep.trial" in run.data.tags):
        assert time.monotonic() < deadline, "a trial of the killed driver went on training"
        time.sleep(0.5)
    left = study_in(directory).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    resumed = {trial.number: (trial.user_attrs["mlflow_run_id"], trial.user_attrs["run_dir"]) for trial in left}
    restarted_ms = int(time.time() * 1000)
    again = start_driver(directory, spec)
    assert again.wait(timeout=300) == 0, directory / "driver.log"
    return KilledStudy(directory, spec, resumed, restarted_ms)


@pytest.mark.slow
def test_a_killed_study_ends_with_four_finished_trials_one_pruned(killed_study: KilledStudy) -> None:
    trials = study_in(killed_study.directory).get_trials(deepcopy=False)
    assert [trial.number for trial in trials] == [0, 1, 2, 3]  # no trial lost, none asked twice
    assert [trial.params["train.lr"] for trial in trials] == LEARNING_RATES  # the enqueued ones, in order
    states = {trial.number: trial.state for trial in trials}
    assert states == {
        0: TrialState.COMPLETE,
        1: TrialState.COMPLETE,
        2: TrialState.COMPLETE,
        PRUNED_TRIAL: TrialState.PRUNED,
    }
    pruned = trials[PRUNED_TRIAL]
    assert pruned.last_step == EVAL_EVERY and list(pruned.intermediate_values) == [EVAL_EVERY]
    for trial in trials[:3]:
        assert (
            sorted(trial.intermediate_values) == [EVAL_EVERY, STEPS] and trial.value == trial.intermediate_values[STEPS]
        )


@pytest.mark.slow
def test_every_trial_is_one_mlflow_run_nested_under_the_study_run(killed_study: KilledStudy) -> None:
    runs = runs_in(killed_study.directory)
    [parent] = [run for run in runs if "oner.sweep.trial" not in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1 == 4
    by_trial = {int(run.data.tags["oner.sweep.trial"]): run for run in children}
    assert sorted(by_trial) == [0, 1, 2, 3]
    trials = {trial.number: trial for trial in study_in(killed_study.directory).get_trials(deepcopy=False)}
    for number, run in by_trial.items():
        assert run.data.tags["oner.sweep.study"] == STUDY and run.data.params["train.lr"] == repr(
            LEARNING_RATES[number]
        )
        assert run.data.tags["oner.sweep.state"] == trials[number].state.name
        assert run.info.status == ("KILLED" if number == PRUNED_TRIAL else "FINISHED")
        assert run.info.run_id == trials[number].user_attrs["mlflow_run_id"]
    assert "pruned at step 20" in by_trial[PRUNED_TRIAL].data.tags["oner.error"]
    best = max(trials.values(), key=lambda trial: trial.value if trial.state == TrialState.COMPLETE else -1)
    assert parent.info.status == "FINISHED" and parent.data.tags["oner.sweep.study"] == STUDY
    assert parent.data.tags["oner.sweep.best.trial"] == str(best.number)
    assert parent.data.tags["oner.sweep.best.train.lr"] == repr(best.params["train.lr"])
    assert parent.data.metrics["sweep/best_value"] == best.value
    completed = by_trial[0].data.metrics
    config = load_spec(killed_study.spec).base
    assert {key for key in completed if key.startswith("eval/")} == set(studies.eval_metrics(config))


@pytest.mark.slow
def test_trials_left_running_resume_into_the_same_trial_run_and_directory(killed_study: KilledStudy) -> None:
    assert killed_study.resumed, "the driver was killed with no trial running: nothing was resumed"
    client = client_of(killed_study.directory)
    trials = {trial.number: trial for trial in study_in(killed_study.directory).get_trials(deepcopy=False)}
    trained_before_kill = 0
    for number, (run_id, run_dir) in killed_study.resumed.items():
        assert (trials[number].user_attrs["mlflow_run_id"], trials[number].user_attrs["run_dir"]) == (run_id, run_dir)
        history = client.get_metric_history(run_id, "train/loss")
        steps = [metric.step for metric in history]
        assert len(steps) == len(set(steps)), "a step was logged twice"
        before = [m.step for m in history if m.timestamp < killed_study.restarted_ms]
        after = [m.step for m in history if m.timestamp >= killed_study.restarted_ms]
        assert after, f"resumed trial {number} logged nothing after the restart"
        if before:  # a trial that had trained goes on from its checkpoint, not from step 0
            trained_before_kill += 1
            assert max(before) < min(after), f"resumed trial {number} did not continue its run"
        assert Path(run_dir, "checkpoints", "last.pt").exists()
    assert trained_before_kill, "no resumed trial had trained before the kill (hold_a_trial_mid_training holds one)"


@pytest.mark.slow
def test_rerunning_a_finished_study_starts_no_trial_and_dry_run_reports_it(
    killed_study: KilledStudy, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(killed_study.directory)
    assert main([str(killed_study.spec), "--dry-run"]) == 0
    assert "It holds 3 COMPLETE, 1 PRUNED; 0 more to finish." in capsys.readouterr().out
    assert main([str(killed_study.spec)]) == 0
    assert "done: 3 complete, 1 pruned" in capsys.readouterr().out
    assert len(study_in(killed_study.directory).trials) == 4


@pytest.mark.slow
def test_table_prints_the_best_trials_and_importances(
    killed_study: KilledStudy, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(killed_study.directory)
    assert table.main([str(killed_study.spec)]) == 0
    out = capsys.readouterr().out
    assert f"Study {STUDY}: best 3 of 4 trials by eval/shapes/rsum (maximize)" in out
    assert "3 COMPLETE, 1 PRUNED" in out and "Parameter importances" in out and "train.lr" in out
    rows = [line for line in out.splitlines() if "COMPLETE" in line and "│" in line]
    values = [float(line.split("│")[3]) for line in rows]
    assert len(values) == 3 and values == sorted(values, reverse=True)


def test_table_of_a_sweep_that_never_ran_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, tmp_path / "data_cache")
    monkeypatch.chdir(tmp_path)
    assert table.main([str(spec)]) == 0
    assert "No study yet" in capsys.readouterr().out and not (tmp_path / "optuna.db").exists()


@pytest.mark.slow
def test_sweep_notebook(killed_study: KilledStudy, tmp_path: Path, kernel: str) -> None:
    out, executed = tmp_path / "out", tmp_path / "sweep.out.ipynb"
    uri = f"sqlite:///{killed_study.directory / 'mlflow.db'}"
    papermill.execute_notebook(
        str(ROOT / "analysis" / "sweep.ipynb"),
        str(executed),
        kernel_name=kernel,
        cwd=str(ROOT / "analysis"),
        progress_bar=False,
        parameters={
            "tracking_uri": uri,
            "experiment": EXPERIMENT,
            "storage": f"sqlite:///{killed_study.directory / 'optuna.db'}",
            "study_name": STUDY,
            "output_dir": str(out),
        },
    )
    assert {path.name for path in out.glob("*.png")} == {
        "sweep_history.png",
        "sweep_parallel.png",
        "sweep_intermediate.png",
    }
    text = "\n".join(
        o.get("text", "") for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", [])
    )
    assert f"Study {STUDY!r}: 4 trials (3 COMPLETE, 1 PRUNED)" in text
    client = client_of(killed_study.directory)
    training = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert not client.search_runs([training], "tags.`oner.analysis` = 'sweep'")  # outputs never sit among training runs
    [run] = client.search_runs(
        [client.get_experiment_by_name(f"{EXPERIMENT}/analysis").experiment_id], "tags.`oner.analysis` = 'sweep'"
    )
    assert {item.path for item in client.list_artifacts(run.info.run_id, "analysis")} == {
        "analysis/sweep_history.png",
        "analysis/sweep_parallel.png",
        "analysis/sweep_intermediate.png",
    }


def test_an_interrupt_while_a_trial_is_being_started_waits_until_it_is_tracked(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """SIGTERM between asking for a trial and recording its job is held until the section ends, and the
    user is told once why the driver has not stopped yet."""
    interrupts = DeferredInterrupts()
    previous = signal.signal(signal.SIGTERM, interrupts.handle)
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("submitted")  # still reached: the signal is held
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("tracked")
        with pytest.raises(KeyboardInterrupt):  # outside a section it interrupts at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert steps == ["submitted", "tracked"] and interrupts.pending is None
    assert capfd.readouterr().err.count("SIGTERM: stopping once the trial being submitted is recorded") == 1
