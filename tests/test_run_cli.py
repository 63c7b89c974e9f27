"""`python -m oner_lab.run`: bad input stops before anything is logged; real runs of experiments/smoke.yaml
(debug and local backends) skip, rerun, fail and resume into the same MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow_store import copy_store, subprocess_env

from oner_lab import checkpoint
from oner_lab.run import main

SMOKE = Path(__file__).resolve().parent.parent / "experiments" / "smoke.yaml"
EXPERIMENT = "oner-smoke"


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated shapes dataset for every run here (generation is deterministic)."""
    return tmp_path_factory.mktemp("data_cache")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI runs in tmp_path: mlflow.db, mlruns/ and runs/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def runs_of(directory: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return (
        []
        if experiment is None
        else client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    )


def steps_of(directory: Path, run_id: str, key: str = "train/loss") -> list[int]:
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")
    return [metric.step for metric in client.get_metric_history(run_id, key)]


BAD_INPUTS = [
    (["--profile", "nope"], "--profile"),
    (["--set", "base.train.lrr=1"], "base.train.lrr"),
    (["--set", "base.train.lr=fast"], "base.train.lr"),
    (["--set", "launcher.backend=cluster"], "launcher.backend"),
    (["--set", "grid.seed=[0,0]"], "grid.seed"),
    (["--set", "nokey"], "--set"),
    (["--only", "variant=onr"], "--only variant"),
    (["--only", "seed=7"], "--only seed"),
    (["--only", "foo"], "--only"),
    (["--set", "base.model.width=32", "--set", "base.model.num_heads=3"], "model.width"),  # refused by train.validate
    (["--set", "launcher.backend=slurm", "--set", "launcher.slurm.cluster=a10"], "launcher.slurm.cluster"),
    (["--set", "tracking.uri=sqlite:////no/such/dir/mlflow.db"], "tracking.uri"),
    (["--set", "tracking.uri=http://127.0.0.1:1"], "tracking.uri"),
]


@pytest.mark.parametrize(("arguments", "key"), BAD_INPUTS, ids=[key + str(i) for i, (_, key) in enumerate(BAD_INPUTS)])
def test_bad_input_exits_2_naming_the_key_and_logs_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], key: str
) -> None:
    assert main([str(SMOKE), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and key in error, error
    assert str(SMOKE) in error or "--only" in error  # the file, except for a malformed --only read before it
    assert len(error.strip().splitlines()) == 1
    assert [path for path in workdir.rglob("*") if path.is_file()] == []  # no store, no job, no checkpoint


def test_a_config_error_names_the_run_and_the_spec_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(SMOKE), "--set", "grid.variants.oner.train.min_lr=1.0"]) == 2
    error = capsys.readouterr().err
    assert f"{SMOKE}: run oner/seed0: train.min_lr" in error


def test_malformed_yaml_exits_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = workdir / "broken.yaml"
    spec.write_text("name: broken\ngrid:\n  variants: [oner\n")
    assert main([str(spec)]) == 2
    assert str(spec) in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists()


def test_debug_backend_end_to_end_skip_and_force(
    workdir: Path, data_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(SMOKE), "--set", "launcher.backend=debug", "--set", f"base.data.cache_dir={data_cache}"]

    assert main([*args, "--dry-run"]) == 0
    assert "run" in capsys.readouterr().out
    assert not (workdir / "mlflow.db").exists()  # a dry run creates no store

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Paper (CC3M, ViT-B/16" in out and "+ CMC (OneR)" in out
    first = runs_of(workdir)
    assert sorted(run.info.run_name for run in first) == ["itc/seed0", "oner/seed0"]
    for run in first:
        assert run.info.status == "FINISHED"
        for key in (
            "eval/shapes/tr_r1",
            "eval/shapes/tr_r5",
            "eval/shapes/ir_r1",
            "eval/shapes/ir_r5",
            "eval/shapes_cls/top1",
        ):
            assert key in run.data.metrics
        assert run.data.tags["oner.run_dir"] == str(workdir / "runs" / run.data.tags["oner.config_hash"])
        assert sorted(set(steps_of(workdir, run.info.run_id))) == steps_of(workdir, run.info.run_id) == [1, 2, 3, 4, 5]

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "All 2 runs already FINISHED" in out and out.count(" skip ") == 2
    assert [run.info.run_id for run in runs_of(workdir)] == [run.info.run_id for run in first]

    assert main([*args, "--force", "--only", "variant=oner"]) == 0
    capsys.readouterr()
    after = runs_of(workdir)
    assert len(after) == 3
    rerun = after[-1]
    old_oner = next(run for run in first if run.info.run_name == "oner/seed0")
    assert rerun.info.run_name == "oner/seed0" and rerun.info.status == "FINISHED"
    assert rerun.data.tags["oner.config_hash"] == old_oner.data.tags["oner.config_hash"]
    assert rerun.data.tags["oner.run_dir"] != old_oner.data.tags["oner.run_dir"]  # a fresh directory: trained anew
    assert steps_of(workdir, rerun.info.run_id) == [1, 2, 3, 4, 5]


def test_local_runs_two_at_a_time_split_the_cpus_and_report_where_their_time_went(
    workdir: Path, data_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`local.max_parallel: 2` (the built-in ablation's setting): both runs train at once, each on half
    the CPUs while the other trains (all of them once alone), and each logs its wall time per phase
    (oner_lab/phases.py)."""
    args = [str(SMOKE), "--set", f"base.data.cache_dir={data_cache}", "--set", "launcher.local.max_parallel=2"]
    # 200 steps train for 10-15 s each: 40 (about 2.5 s) was less than the spread of the two jobs'
    # startups (6-7 s each), and CI once saw the second start its first step 50 ms after the first's last.
    assert main([*args, "--set", "base.train.steps=200", "--set", "base.train.log_every=1"]) == 0
    capsys.readouterr()
    runs = runs_of(workdir)
    assert sorted(run.info.run_name for run in runs) == ["itc/seed0", "oner/seed0"]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    spans = []
    for run in runs:
        metrics = run.data.metrics
        assert run.info.status == "FINISHED"
        threads = {m.value for m in client.get_metric_history(run.info.run_id, "train/threads")}
        cpus = len(os.sched_getaffinity(0))
        assert max(1, cpus // 2) in threads and threads <= {max(1, cpus // 2), cpus}, threads  # alone: all
        phases = {key: value for key, value in metrics.items() if key.startswith("time/") and key != "time/session_s"}
        assert {"time/startup_s", "time/data_s", "time/steps_s", "time/eval_s", "time/checkpoint_s"} <= set(phases)
        assert all(value >= 0 for value in phases.values())
        within_session = sum(value for key, value in phases.items() if key != "time/startup_s")
        assert 0.8 * metrics["time/session_s"] <= within_session <= metrics["time/session_s"], phases
        stamps = [m.timestamp for m in client.get_metric_history(run.info.run_id, "train/loss")]
        spans.append((min(stamps), max(stamps), metrics["time/startup_s"], metrics["time/steps_s"]))
    (first_start, first_end, *_), (second_start, *_) = sorted(spans)
    assert second_start < first_end, f"max_parallel=2 but the runs trained one after the other: {sorted(spans)}"


def test_a_failing_run_is_failed_with_its_error_and_the_others_go_on(
    workdir: Path, data_cache: Path, mlflow_template: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy_store(mlflow_template, workdir)
    args = [str(SMOKE), "--set", "launcher.backend=debug", "--set", f"base.data.cache_dir={data_cache}"]
    assert main([*args, "--set", "grid.variants.itc.train.lr=1e30"]) == 1
    assert "itc/seed0 FAILED" in capsys.readouterr().out
    status = {run.info.run_name: run for run in runs_of(workdir)}
    assert status["itc/seed0"].info.status == "FAILED"
    assert "NonFiniteLossError" in status["itc/seed0"].data.tags["oner.error"]
    assert status["oner/seed0"].info.status == "FINISHED"


def start_cli(directory: Path, *arguments: str, live_metrics: bool = True) -> subprocess.Popen:
    """The CLI in a subprocess. `live_metrics`: its runs write metrics to MLflow on every call (slower),
    so the test sees progress at once."""
    log = (directory / f"cli-{time.monotonic_ns()}.log").open("w")
    env = {**subprocess_env(), "ONER_MLFLOW_FLUSH_S": "0"} if live_metrics else subprocess_env()
    return subprocess.Popen(
        [sys.executable, "-m", "oner_lab.run", str(SMOKE), *arguments],
        cwd=directory,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_for_logged_steps(
    directory: Path, run_name: str | None, process: subprocess.Popen, timeout_s: float = 240
) -> str:
    """Polls MLflow until `run_name` (None: any run) has flushed some training steps; returns its run id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the CLI ended before it could be interrupted"
        if (directory / "mlflow.db").exists():
            for run in runs_of(directory):
                if run_name in (None, run.info.run_name) and steps_of(directory, run.info.run_id):
                    return run.info.run_id
        time.sleep(0.5)
    raise AssertionError(f"{run_name} logged no step within {timeout_s}s")


def checkpoint_step(run_dir: Path) -> int:
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    return 0 if state is None else state["step"]


@pytest.mark.slow
def test_killed_debug_run_resumes_into_the_same_mlflow_run_without_duplicate_steps(
    mlflow_template: Path, tmp_path: Path, data_cache: Path
) -> None:
    copy_store(mlflow_template, tmp_path)
    args = [
        "--set",
        "launcher.backend=debug",
        "--only",
        "variant=itc",
        "--set",
        f"base.data.cache_dir={data_cache}",
        "--set",
        "base.train.steps=120",
        "--set",
        "base.train.checkpoint_every=50",
    ]
    cli = start_cli(tmp_path, *args)
    run_id = wait_for_logged_steps(tmp_path, "itc/seed0", cli)
    run_dir = Path(runs_of(tmp_path)[0].data.tags["oner.run_dir"])
    deadline = time.monotonic() + 120
    # kill once a checkpoint exists and MLflow already holds steps after it: the resume repeats those
    while not 0 < checkpoint_step(run_dir) < max(steps_of(tmp_path, run_id)):
        assert time.monotonic() < deadline and cli.poll() is None
        time.sleep(0.1)
    cli.send_signal(signal.SIGKILL)
    cli.wait(timeout=30)
    before = steps_of(tmp_path, run_id)
    assert max(before) < 120, "the run finished before it was killed"
    assert max(before) > checkpoint_step(run_dir), "no step to repeat: the resume would not test deduplication"

    again = start_cli(tmp_path, *args, live_metrics=False)
    assert again.wait(timeout=600) == 0
    runs = runs_of(tmp_path)
    assert [run.info.run_id for run in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    steps = steps_of(tmp_path, run_id)
    assert len(steps) == len(set(steps)), "a step was logged twice"
    assert set(before) <= set(steps) and max(steps) == 120


@pytest.mark.slow
def test_sigterm_stops_local_runs_and_a_rerun_resumes_them(
    mlflow_template: Path, tmp_path: Path, data_cache: Path
) -> None:
    copy_store(mlflow_template, tmp_path)
    args = [
        "--set",
        f"base.data.cache_dir={data_cache}",
        "--set",
        "base.train.steps=100",
        "--set",
        "base.train.checkpoint_every=20",
        "--set",
        "launcher.local.max_parallel=1",
    ]
    cli = start_cli(tmp_path, *args)
    # one slot: either variant may take it first; the other waits queued
    itc = wait_for_logged_steps(tmp_path, None, cli)
    cli.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=60) == 130
    controllers = [int(folder.name) for folder in (tmp_path / "runs" / "submitit").iterdir() if folder.name.isdigit()]
    assert controllers
    time.sleep(2)
    for pid in controllers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    stopped = {run.info.run_name: run for run in runs_of(tmp_path)}
    assert {run.info.status for run in stopped.values()} == {"KILLED"}
    count = len(steps_of(tmp_path, itc))
    time.sleep(2)
    assert len(steps_of(tmp_path, itc)) == count, "a stopped run is still logging"

    restart = time.time() * 1000
    again = start_cli(tmp_path, *args, live_metrics=False)
    assert again.wait(timeout=600) == 0
    runs = {run.info.run_name: run for run in runs_of(tmp_path)}
    assert {name: run.info.run_id for name, run in runs.items()} == {
        name: run.info.run_id for name, run in stopped.items()
    }
    spans = []
    for run in runs.values():
        assert run.info.status == "FINISHED"
        steps = steps_of(tmp_path, run.info.run_id)
        assert len(steps) == len(set(steps)) and max(steps) == 100
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        stamps = [
            m.timestamp for m in client.get_metric_history(run.info.run_id, "train/loss") if m.timestamp >= restart
        ]
        spans.append((min(stamps), max(stamps)))
    (first_start, first_end), (second_start, second_end) = sorted(spans)
    assert first_end <= second_start, "max_parallel=1 but the two runs trained at the same time"


@pytest.mark.slow
def test_local_run_stops_itself_when_the_cli_is_killed(mlflow_template: Path, tmp_path: Path, data_cache: Path) -> None:
    """A SIGKILLed CLI cannot stop its local jobs; they notice and stop after a checkpoint, so no orphan
    goes on training while a rerun resumes the same run directory."""
    copy_store(mlflow_template, tmp_path)
    cli = start_cli(
        tmp_path,
        "--only",
        "variant=itc",
        "--set",
        f"base.data.cache_dir={data_cache}",
        "--set",
        "base.train.steps=100000",
        "--set",
        "base.train.checkpoint_every=100000",
    )
    run_id = wait_for_logged_steps(tmp_path, "itc/seed0", cli)
    cli.send_signal(signal.SIGKILL)
    cli.wait(timeout=30)
    deadline = time.monotonic() + 120
    while (run := runs_of(tmp_path)[0]).info.status == "RUNNING":
        assert time.monotonic() < deadline, "the orphaned job went on training"
        time.sleep(0.5)
    assert run.info.run_id == run_id and run.info.status == "KILLED"
    assert "the launching command ended" in run.data.tags["oner.error"]
    stopped_at = checkpoint_step(Path(run.data.tags["oner.run_dir"]))
    assert 0 < stopped_at < 100000  # it wrote a checkpoint when it stopped
    assert max(steps_of(tmp_path, run_id)) == stopped_at
