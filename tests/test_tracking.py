"""oner_lab.tracking against a real MLflow store on SQLite."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow_store import copy_store, subprocess_env
from sqlalchemy.exc import OperationalError

from oner_lab import tracking
from oner_lab.spec import Spec, expand


@pytest.fixture
def store(mlflow_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, MlflowClient]:
    """A fresh store in tmp_path, with cwd there too (MLflow puts artifacts under ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    uri = copy_store(mlflow_template, tmp_path)
    return uri, tracking.connect(uri)


def make_spec() -> Spec:
    spec = Spec(
        name="tracking-test",
        base={"train": {"lr": 3e-4, "steps": 7}},
        grid={"variants": {"oner": None, "itc": {"objective": {"variant": "itc"}}}, "seed": [0, 1]},
        source_file=Path("experiments/tracking-test.yaml"),
        profile="tiny",
    )
    return spec


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_create_run_records_params_tags_config_and_is_found_by_hash(
    store: tuple[str, MlflowClient], tmp_path: Path
) -> None:
    _, client = store
    spec = make_spec()
    planned = expand(spec)[2]  # itc/seed0
    run_id = tracking.create_run(client, spec.experiment_name, planned, spec, tmp_path / "runs" / planned.config_hash)

    run = client.get_run(run_id)
    assert run.info.run_name == "itc/seed0"
    assert run.info.status == "SCHEDULED"
    assert client.get_experiment(run.info.experiment_id).name == "tracking-test"
    params = run.data.params
    assert params["train.lr"] == "0.0003"
    assert params["train.steps"] == "7"
    assert params["objective.variant"] == "itc"
    assert params["data.crop_scale"] == json.dumps(list(planned.config.data.crop_scale))  # lists as JSON
    assert params["model.width"] == "null"
    assert len(params) == len(tracking.flatten(planned.config.model_dump(mode="json")))
    assert params["train.device"] == "auto" and params["data.workers"] == "4"  # operational: logged, not hashed
    tags = run.data.tags
    assert tags["oner.variant"] == "itc"
    assert tags["oner.seed"] == "0"
    assert tags["oner.config_hash"] == planned.config_hash
    assert tags["oner.config_hash_scheme"] == "2"
    assert tags["oner.spec"] == "experiments/tracking-test.yaml"
    assert tags["oner.profile"] == "tiny"
    assert tags["oner.run_dir"] == str(tmp_path / "runs" / planned.config_hash)
    assert "tracking-test" in tags["mlflow.note.content"] and "tiny" in tags["mlflow.note.content"]
    commit, dirty = tracking.git_state()
    if commit is not None:
        assert tags["mlflow.source.git.commit"] == commit
        assert tags["oner.git_dirty"] == str(dirty).lower()
    logged = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path)))
    assert yaml.safe_load(logged.read_text()) == planned.config.model_dump(mode="json")

    found = tracking.runs_by_hash(client, spec.experiment_name)
    assert set(found) == {planned.config_hash}
    assert found[planned.config_hash].run_id == run_id
    assert found[planned.config_hash].status == "SCHEDULED"
    assert tracking.runs_by_hash(client, "no-such-experiment") == {}


def test_latest_run_per_hash_wins(store: tuple[str, MlflowClient], tmp_path: Path) -> None:
    _, client = store
    spec = make_spec()
    planned = expand(spec)[0]
    first = tracking.create_run(client, spec.experiment_name, planned, spec, tmp_path / "a")
    tracking.end_run(client, first, tracking.FINISHED)
    second = tracking.create_run(client, spec.experiment_name, planned, spec, tmp_path / "b")
    latest = tracking.runs_by_hash(client, spec.experiment_name)[planned.config_hash]
    assert (latest.run_id, latest.status, latest.run_dir) == (second, "SCHEDULED", str(tmp_path / "b"))


def test_failed_run_has_error_tag_and_resuming_clears_it(store: tuple[str, MlflowClient], tmp_path: Path) -> None:
    _, client = store
    spec = make_spec()
    planned = expand(spec)[0]
    run_id = tracking.create_run(client, spec.experiment_name, planned, spec, tmp_path)
    try:
        raise ValueError("loss is nan at step 12")
    except ValueError as error:
        tracking.end_run(client, run_id, tracking.FAILED, error)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    error_tag = run.data.tags["oner.error"]
    assert error_tag.startswith("ValueError: loss is nan at step 12")
    assert "Traceback" in error_tag and "test_failed_run_has_error_tag" in error_tag

    tracking.set_status(client, run_id, tracking.RUNNING)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert "oner.error" not in run.data.tags


def test_logger_buffers_until_interval_then_flushes_everything(store: tuple[str, MlflowClient], tmp_path: Path) -> None:
    _, client = store
    spec = make_spec()
    run_id = tracking.create_run(client, spec.experiment_name, expand(spec)[0], spec, tmp_path)
    now = [0.0]
    logger = tracking.MlflowRunLogger(client, run_id, flush_every_s=5.0, clock=lambda: now[0])
    for step in range(0, 40, 10):
        logger.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 0.1}, step)
        now[0] += 1.0
    assert client.get_metric_history(run_id, "train/loss") == []  # 3 s since the logger opened: buffered
    now[0] = 5.0
    logger.log_metrics({"train/loss": 0.5, "train/lr": 0.1}, 40)  # 5 s: flush
    assert [step for step, _ in history(client, run_id, "train/loss")] == [0, 10, 20, 30, 40]
    logger.log_metrics({"eval/shapes/tr_r1": 12.5}, 50)
    logger.close()
    assert history(client, run_id, "eval/shapes/tr_r1") == [(50, 12.5)]
    assert history(client, run_id, "train/lr") == [(step, 0.1) for step in range(0, 50, 10)]


def test_logger_flushes_more_than_one_batch(store: tuple[str, MlflowClient], tmp_path: Path) -> None:
    _, client = store
    spec = make_spec()
    run_id = tracking.create_run(client, spec.experiment_name, expand(spec)[0], spec, tmp_path)
    with tracking.MlflowRunLogger(client, run_id, flush_every_s=3600) as logger:
        for step in range(1500):  # 3000 values: more than MLflow's 1000 per log_batch
            logger.log_metrics({"a": step, "b": -step}, step)
    assert [step for step, _ in history(client, run_id, "a")] == list(range(1500))
    assert len(client.get_metric_history(run_id, "b")) == 1500


def test_resumed_logger_drops_steps_mlflow_already_has(store: tuple[str, MlflowClient], tmp_path: Path) -> None:
    _, client = store
    spec = make_spec()
    run_id = tracking.create_run(client, spec.experiment_name, expand(spec)[0], spec, tmp_path)
    with tracking.MlflowRunLogger(client, run_id) as first:
        for step in range(0, 60, 10):
            first.log_metrics({"train/loss": 1.0, "train/lr": 0.5}, step)
        first.log_metrics({"eval/shapes/tr_r1": 3.0}, 30)
    # the process dies after step 50; the last checkpoint was at step 30, so steps 30..50 come again
    with tracking.MlflowRunLogger(client, run_id) as resumed:
        for step in range(30, 80, 10):
            resumed.log_metrics({"train/loss": 2.0, "train/lr": 0.5}, step)
        resumed.log_metrics({"eval/shapes/tr_r1": 4.0}, 30)
        resumed.log_metrics({"eval/shapes/tr_r1": 5.0}, 70)
    loss = history(client, run_id, "train/loss")
    assert [step for step, _ in loss] == [0, 10, 20, 30, 40, 50, 60, 70]
    assert dict(loss)[50] == 1.0 and dict(loss)[60] == 2.0  # first writes kept, new steps added
    assert history(client, run_id, "eval/shapes/tr_r1") == [(30, 3.0), (70, 5.0)]


def test_logger_logs_files_and_directories_as_artifacts(store: tuple[str, MlflowClient], tmp_path: Path) -> None:
    _, client = store
    spec = make_spec()
    run_id = tracking.create_run(client, spec.experiment_name, expand(spec)[0], spec, tmp_path)
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    table = tmp_path / "retrieval.csv"
    table.write_text("k,r\n1,0.5\n")
    with tracking.MlflowRunLogger(client, run_id) as logger:
        logger.log_artifact(tokenizer, "tokenizer")
        logger.log_artifact(table, "eval")
    listed = {item.path for item in client.list_artifacts(run_id, "tokenizer")} | {
        item.path for item in client.list_artifacts(run_id, "eval")
    }
    assert listed == {"tokenizer/tokenizer.json", "eval/retrieval.csv"}


@pytest.mark.parametrize(
    "uri",
    ["sqlite:////no/such/dir/mlflow.db", "http://127.0.0.1:1", "notascheme://x"],
)
def test_connect_refuses_a_store_it_cannot_open(uri: str) -> None:
    with pytest.raises(tracking.TrackingError, match="cannot be opened"):
        tracking.connect(uri)


def test_relative_sqlite_uri_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking.resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert tracking.resolve_uri("http://host:5000") == "http://host:5000"


WRITER = textwrap.dedent(
    """
    import sys
    from mlflow import MlflowClient
    from oner_lab.tracking import MlflowRunLogger
    uri, run_id = sys.argv[1], sys.argv[2]
    client = MlflowClient(tracking_uri=uri)
    with MlflowRunLogger(client, run_id, flush_every_s=0.0) as logger:  # a write on every call
        for step in range(150):
            logger.log_metrics({"train/loss": step * 0.5, "train/lr": 1e-3, "train/loss_itc": 1.0}, step)
    """
)


def test_concurrent_writers_lose_no_metric(store: tuple[str, MlflowClient], tmp_path: Path) -> None:
    uri, client = store
    spec = make_spec()
    runs = [tracking.create_run(client, spec.experiment_name, planned, spec, tmp_path) for planned in expand(spec)]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, run_id], stderr=subprocess.PIPE, text=True, env=subprocess_env()
        )
        for run_id in runs
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=300)
        assert writer.returncode == 0, stderr
    for run_id in runs:
        for key in ("train/loss", "train/lr", "train/loss_itc"):
            assert [step for step, _ in history(client, run_id, key)] == list(range(150)), key
        assert dict(history(client, run_id, "train/loss"))[149] == 74.5


def test_retry_locked_retries_sqlite_lock_errors_only() -> None:
    attempts: list[int] = []

    def locked_twice() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise OperationalError("INSERT INTO metrics ...", {}, sqlite3.OperationalError("database is locked"))
        return "written"

    assert tracking.retry_locked(locked_twice) == "written"
    assert len(attempts) == 3

    def broken() -> None:
        attempts.append(1)
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("no such table: metrics"))

    attempts.clear()
    with pytest.raises(OperationalError, match="no such table"):
        tracking.retry_locked(broken)
    assert len(attempts) == 1
