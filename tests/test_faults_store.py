"""Faults of the tracking store and of concurrent invocations, injected into real SQLite files and real
processes (docs/reliability.md lists each promise and its test here).

- a store that is read-only (chattr +i), deleted, or EXCLUSIVE-locked by another process, and a server
  that does not answer: jobs train on, hold their metrics, give up after `tracking.outage_window_s` at a
  checkpoint; the CLI exits 3 with one paragraph; a rerun ends the orphaned run and resumes it;
- a lost store: the rerun resumes from the checkpoint on disk into a run tagged as recovered; a moved
  project folder still resumes;
- two invocations of one spec at once, in an empty and in a used folder;
- owners survive PID reuse.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
from faults_store_helpers import (
    client_of,
    closed_port,
    forget_cached_stores,
    history,
    hold_exclusive_lock,
    output,
    read_only,
    run_slowed,
    runs_of,
    start_cli,
    steps_of,
    wait_for_steps,
    wait_slowed,
)
from mlflow import MlflowClient
from mlflow_store import copy_store
from sqlalchemy import event
from sqlalchemy.engine import Engine

from oner_lab import checkpoint, tracking
from oner_lab.launch.owner import LEASE_S, Owner, is_alive, this_process
from oner_lab.store_outage import EXIT_STORE_LOST, Outage, StoreUnavailable

KEYS = ("train/loss", "train/lr")
STEPS = int(os.environ.get("ONER_FAULT_TEST_STEPS", "200"))
"""Training steps of the end-to-end runs: enough for a fault to land mid-run at CI speed (a loaded
machine may set fewer)."""


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


def new_run(uri: str) -> tuple[MlflowClient, str]:
    client = tracking.connect(uri)
    experiment = tracking.experiment_id(client, "faults")
    return client, client.create_run(experiment).info.run_id


def logged(client: MlflowClient, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


# --- the logger against a failing store ------------------------------------------------------------


def test_a_read_only_store_holds_metrics_then_gives_up_after_the_window_and_nothing_is_lost(
    mlflow_template: Path, tmp_path: Path
) -> None:
    uri = copy_store(mlflow_template, tmp_path)
    client, run_id = new_run(uri)
    spill = tmp_path / "unlogged_metrics.jsonl"
    logger = tracking.MlflowRunLogger(client, run_id, flush_every_s=0, outage_window_s=1.0, spill=spill)
    logger.log_metrics({"train/loss": 1.0}, 1)
    with read_only(tmp_path / "mlflow.db"):
        started = time.monotonic()
        step = 1
        while not logger.should_stop():
            step += 1
            logger.log_metrics({"train/loss": float(step)}, step)  # never raises: training goes on
            assert time.monotonic() - started < 30, "the logger never gave up"
            time.sleep(0.05)
        assert time.monotonic() - started >= 1.0
        lost = logger.lost
        assert isinstance(lost, StoreUnavailable)
        assert uri in str(lost) and ("readonly" in lost.cause or "I/O" in lost.cause), lost.cause
        logger.flush()
        assert spill.is_file() and len(spill.read_text().splitlines()) == step - 1
        with pytest.raises(StoreUnavailable):
            logger.close()
    assert logged(client, run_id) == [1]
    again = tracking.MlflowRunLogger(client, run_id, flush_every_s=0, spill=spill)  # the resumed job
    again.close()
    assert logged(client, run_id) == list(range(1, step + 1))
    assert not spill.exists()


def test_a_deleted_store_file_is_noticed_not_written_into_the_void(mlflow_template: Path, tmp_path: Path) -> None:
    uri = copy_store(mlflow_template, tmp_path)
    client, run_id = new_run(uri)
    logger = tracking.MlflowRunLogger(client, run_id, flush_every_s=0, outage_window_s=0.5)
    logger.log_metrics({"train/loss": 1.0}, 1)
    (tmp_path / "mlflow.db").unlink()  # MLflow's pooled connection would still write to the unlinked file
    logger.log_metrics({"train/loss": 2.0}, 2)
    time.sleep(0.6)
    logger.log_metrics({"train/loss": 3.0}, 3)
    assert logger.should_stop()
    assert "deleted or replaced" in logger.outage.cause and str(tmp_path / "mlflow.db") in logger.outage.cause


def test_an_exclusive_lock_does_not_hold_training_and_loses_no_metric(mlflow_template: Path, tmp_path: Path) -> None:
    uri = copy_store(mlflow_template, tmp_path)
    client, run_id = new_run(uri)
    logger = tracking.MlflowRunLogger(client, run_id, flush_every_s=0, outage_window_s=600)
    holder = hold_exclusive_lock(tmp_path / "mlflow.db", 4.0)
    started = time.monotonic()
    slowest = 0.0
    for step in range(1, 41):
        before = time.monotonic()
        logger.log_metrics({key: float(step) for key in KEYS}, step)
        slowest = max(slowest, time.monotonic() - before)
        time.sleep(0.05)
    assert holder.poll() is None, "the lock was released before training went through it"
    assert slowest < 1.0, f"a metric call waited {slowest:.1f}s on the lock (MLflow's busy timeout is 20 s)"
    assert time.monotonic() - started < 4.0
    holder.wait(timeout=30)
    logger.close()
    for key in KEYS:
        assert logged(client, run_id, key) == list(range(1, 41))


def test_a_lock_taken_as_a_flush_begins_does_not_hold_the_flush(mlflow_template: Path, tmp_path: Path) -> None:
    """The lock lands inside the flush, after anything it could have checked first and before MLflow's
    write (CI once saw a run stand still for the whole 8 s a lock was held, from such a race)."""
    uri = copy_store(mlflow_template, tmp_path)
    client, run_id = new_run(uri)
    logger = tracking.MlflowRunLogger(client, run_id, flush_every_s=3600, outage_window_s=600)
    logger.log_metrics({key: 1.0 for key in KEYS}, 1)
    holders: list = []

    def lock_as_the_write_begins(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if not holders and statement.lstrip().upper().startswith("PRAGMA BUSY_TIMEOUT"):
            holders.append(hold_exclusive_lock(tmp_path / "mlflow.db", 4.0))  # returns once held

    event.listen(Engine, "before_cursor_execute", lock_as_the_write_begins)
    try:
        started = time.monotonic()
        logger.flush()
        took = time.monotonic() - started
    finally:
        event.remove(Engine, "before_cursor_execute", lock_as_the_write_begins)
    assert holders, "the flush opened no SQLite session"
    assert took < 1.0, f"the flush waited {took:.1f}s on the lock (MLflow's busy timeout is 20 s)"
    assert holders[0].poll() is None, "the lock was released before the flush went through it"
    holders[0].wait(timeout=30)
    assert logged(client, run_id) == []  # held by the logger, not lost
    logger.close()
    for key in KEYS:
        assert logged(client, run_id, key) == [1]


def test_an_unreachable_server_is_named_with_its_cause() -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(tracking.TrackingError, match=uri):
        tracking.connect(uri)
    client = MlflowClient(tracking_uri=uri)
    outage = Outage(uri, window_s=0.5)
    started = time.monotonic()
    with tracking._fail_fast_http(), pytest.raises(StoreUnavailable) as raised:
        outage.insist(lambda: client.set_tag("0" * 32, "k", "v"))
    assert time.monotonic() - started < 30
    assert uri in str(raised.value) and raised.value.cause
    assert "rerun the same command" in str(raised.value)


# --- owners --------------------------------------------------------------------------------------


def test_an_owner_is_its_pid_and_start_time_so_a_reused_pid_is_not_taken_for_it() -> None:
    me = this_process()
    assert is_alive(me, None)
    assert me.started, "no process start time: PID reuse could not be told apart"
    assert not is_alive(Owner(me.host, me.pid, me.started + "0"), None)  # same PID, another process
    assert Owner.from_tag(me.to_tag()) == me
    dead = Owner(me.host, 2**22 + 12345, "x")
    assert not is_alive(dead, None)
    remote = Owner("some-other-host", me.pid, me.started)
    assert is_alive(remote, time.time() - 5)
    assert not is_alive(remote, time.time() - LEASE_S - 1)
    assert not is_alive(remote, None)
    assert socket.gethostname() == me.host


# --- the CLI -------------------------------------------------------------------------------------


def debug_args(data_cache: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--set",
        "launcher.backend=debug",
        "--only",
        "variant=itc",
        "--set",
        f"base.data.cache_dir={data_cache}",
        "--set",
        f"base.train.steps={steps}",
        "--set",
        "base.train.checkpoint_every=10",
        *extra,
    ]


def checkpoint_step(run_dir: Path) -> int:
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    return 0 if state is None else int(state["step"])


@pytest.mark.slow
def test_read_only_store_mid_run_exits_3_then_the_rerun_ends_the_orphan_and_resumes_without_gaps(
    mlflow_template: Path, tmp_path: Path, data_cache: Path
) -> None:
    copy_store(mlflow_template, tmp_path)
    args = debug_args(data_cache, STEPS, "--set", "tracking.outage_window_s=2")
    cli = start_cli(tmp_path, *args)
    run_id = wait_for_steps(tmp_path, cli, at_least=5)
    with read_only(tmp_path / "mlflow.db"):
        code = wait_slowed(cli)  # still training when the 2 s window closes, however fast the machine
        text = output(cli)
        assert code == EXIT_STORE_LOST, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "mlflow.db") in errors[0] and "rerun the same command" in errors[0], text
    assert "Traceback" not in text, text
    (run,) = runs_of(tmp_path)
    assert run.info.status == "RUNNING"  # the store could not be told; the run directory says how it ended
    run_dir = Path(run.data.tags["oner.run_dir"])
    stopped_at = checkpoint_step(run_dir)
    assert 0 < stopped_at < STEPS
    assert (run_dir / ".pending_end.json").is_file() and (run_dir / "unlogged_metrics.jsonl").is_file()

    again = start_cli(tmp_path, *args, flush_s="5")
    assert again.wait(timeout=600) == 0, output(again)
    assert "no live owner: marked KILLED" in output(again)
    (run,) = runs_of(tmp_path)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    for key in KEYS:
        assert steps_of(tmp_path, run_id, key) == list(range(1, STEPS + 1)), key  # every step exactly once


@pytest.mark.slow
def test_a_store_locked_for_a_while_does_not_stop_training_and_loses_no_metric(
    mlflow_template: Path, tmp_path: Path, data_cache: Path
) -> None:
    copy_store(mlflow_template, tmp_path)
    cli = start_cli(tmp_path, *debug_args(data_cache, STEPS), flush_s="0.2")
    run_id = wait_for_steps(tmp_path, cli, at_least=3)
    locked_from = time.time() * 1000
    holder = hold_exclusive_lock(tmp_path / "mlflow.db", 8.0)
    run_slowed(cli, during=holder)  # still training all through the lock, however fast the machine
    holder.wait(timeout=60)
    locked_to = time.time() * 1000
    assert cli.wait(timeout=600) == 0, output(cli)
    (run,) = runs_of(tmp_path)
    assert run.info.status == "FINISHED"
    for key in KEYS:
        assert steps_of(tmp_path, run_id, key) == list(range(1, STEPS + 1)), key
    during = [m.step for m in history(tmp_path, run_id) if locked_from + 1000 < m.timestamp < locked_to - 1000]
    assert len(during) >= 2, f"training stood still while the store was locked ({during})"


@pytest.mark.slow
def test_a_store_deleted_mid_run_exits_3_and_the_rerun_recovers_from_the_checkpoint(
    mlflow_template: Path, tmp_path: Path, data_cache: Path
) -> None:
    copy_store(mlflow_template, tmp_path)
    args = debug_args(data_cache, STEPS, "--set", "tracking.outage_window_s=1")
    cli = start_cli(tmp_path, *args)
    old_id = wait_for_steps(tmp_path, cli, at_least=12)
    (tmp_path / "mlflow.db").unlink()
    forget_cached_stores()
    assert cli.wait(timeout=300) == EXIT_STORE_LOST, output(cli)
    assert "deleted or replaced" in output(cli)
    run_dir = next(path for path in (tmp_path / "runs").iterdir() if (path / "checkpoints").is_dir())
    stopped_at = checkpoint_step(run_dir)
    assert stopped_at >= 10

    again = start_cli(tmp_path, *args)
    assert again.wait(timeout=600) == 0, output(again)
    assert "Recovered itc/seed0" in output(again) and str(run_dir / "checkpoints" / "last.pt") in output(again)
    (run,) = runs_of(tmp_path)  # the new store
    assert run.info.run_id != old_id and run.info.status == "FINISHED"
    assert run.data.tags["oner.recovered_from"] == str(run_dir / "checkpoints" / "last.pt")
    steps = steps_of(tmp_path, run.info.run_id)
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
    assert steps[0] <= stopped_at + 1, "steps between the deletion and the stop were lost"
    assert steps[0] > 1, "the run trained again from step 0"


@pytest.mark.slow
def test_a_deleted_store_resumes_from_the_checkpoint_and_a_moved_folder_resumes(
    mlflow_template: Path, tmp_path: Path, data_cache: Path
) -> None:
    first = tmp_path / "first"
    first.mkdir()
    copy_store(mlflow_template, first)
    args = debug_args(data_cache, STEPS)
    cli = start_cli(first, *args)
    run_id = wait_for_steps(first, cli, at_least=25)
    cli.send_signal(signal.SIGKILL)
    cli.wait(timeout=30)
    (run,) = runs_of(first)
    assert run.data.tags["oner.run_dir_rel"] == run.data.tags["oner.config_hash"]
    killed_at = checkpoint_step(first / "runs" / run.data.tags["oner.config_hash"])
    assert killed_at >= 20

    moved = tmp_path / "moved"
    shutil.move(first, moved)  # the whole project folder: store, runs/
    again = start_cli(moved, *args)
    assert again.wait(timeout=600) == 0, output(again)
    (run,) = runs_of(moved)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert " resume " in output(again)
    folders = sorted(path.name for path in (moved / "runs").iterdir() if path.name != "submitit")
    assert folders == [run.data.tags["oner.config_hash"]]  # resumed in place, not trained anew in <hash>-<time>
    steps = steps_of(moved, run_id)
    assert steps == sorted(set(steps)) and steps[-1] == STEPS

    (moved / "mlflow.db").unlink()
    forget_cached_stores()
    done_at = checkpoint_step(moved / "runs" / run.data.tags["oner.config_hash"])
    again = start_cli(moved, *args)
    assert again.wait(timeout=600) == 0, output(again)
    assert "Recovered itc/seed0" in output(again)
    (recovered,) = runs_of(moved)
    assert recovered.data.tags["oner.recovered_from"].endswith("checkpoints/last.pt")
    assert done_at == STEPS and steps_of(moved, recovered.info.run_id) == []  # nothing retrained
    assert "eval/shapes/tr_r1" in recovered.data.metrics


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["empty", "used"])
def test_two_invocations_at_once_train_each_run_once_and_name_the_owner(
    mlflow_template: Path, tmp_path: Path, data_cache: Path, folder: str
) -> None:
    """Started together: one creates the store (no migration race), plans and trains; the other finds
    the run owned, names the owner and exits 0. The trainer is then stopped (it would train on)."""
    if folder == "used":
        copy_store(mlflow_template, tmp_path)
    args = debug_args(data_cache, 100_000)
    clis = start_cli(tmp_path, *args, flush_s="1"), start_cli(tmp_path, *args, flush_s="1")
    deadline = time.monotonic() + 300
    while all(cli.poll() is None for cli in clis):
        assert time.monotonic() < deadline, [output(cli) for cli in clis]
        time.sleep(0.5)
    waited = next(cli for cli in clis if cli.poll() is not None)
    trainer = clis[1 - clis.index(waited)]
    assert waited.returncode == 0, output(waited)
    assert (
        f"Being trained by another invocation, left alone: itc/seed0 (PID {trainer.pid} on {socket.gethostname()})"
        in " ".join(output(waited).split())
    ), output(waited)
    wait_for_steps(tmp_path, trainer, at_least=1)
    trainer.send_signal(signal.SIGTERM)
    assert trainer.wait(timeout=120) == 130, output(trainer)
    assert "Traceback" not in output(waited)
    for cli in clis:
        assert "alembic" not in output(cli).lower() and "IntegrityError" not in output(cli), output(cli)
    (run,) = runs_of(tmp_path)
    assert run.info.status == "KILLED"
    # stopped at a step boundary after a checkpoint, not wherever the signal landed (an MLflow call)
    assert "after writing a checkpoint: interrupted (SIGTERM)" in run.data.tags["oner.error"], run.data.tags
    steps = steps_of(tmp_path, run.info.run_id)
    assert steps == sorted(set(steps))


@pytest.mark.slow
def test_a_second_invocation_leaves_a_run_in_training_alone(
    mlflow_template: Path, tmp_path: Path, data_cache: Path
) -> None:
    copy_store(mlflow_template, tmp_path)
    args = debug_args(data_cache, 100_000)  # trains until stopped below
    first = start_cli(tmp_path, *args)
    run_id = wait_for_steps(tmp_path, first, at_least=3)
    second = start_cli(tmp_path, *args)
    assert second.wait(timeout=300) == 0, output(second)
    assert f"itc/seed0 (PID {first.pid} on {socket.gethostname()})" in output(second)
    assert " owned " in output(second) and " resume " not in output(second)  # not re-planned under its owner
    assert first.poll() is None and client_of(tmp_path).get_run(run_id).info.status == "RUNNING"  # not SCHEDULED
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 130, output(first)
    (run,) = runs_of(tmp_path)
    assert run.info.run_id == run_id and run.info.status == "KILLED"
    steps = steps_of(tmp_path, run_id)
    assert steps == sorted(set(steps))


def test_a_running_run_whose_owner_died_is_reconciled(mlflow_template: Path, tmp_path: Path) -> None:
    """A RUNNING run whose owner and worker are dead processes is ended (KILLED, named) before it is resumed."""
    from oner_lab.launch import claims

    uri = copy_store(mlflow_template, tmp_path)
    client, run_id = new_run(uri)
    me = this_process()
    gone = Owner(me.host, me.pid, me.started + "-earlier")  # this PID, but an earlier process
    client.set_tag(run_id, tracking.TAG_OWNER, gone.to_tag())
    client.set_tag(run_id, tracking.TAG_HASH, "abc")
    tracking.set_status(client, run_id, tracking.RUNNING)
    alive_id = client.create_run(tracking.experiment_id(client, "faults")).info.run_id
    client.set_tag(alive_id, tracking.TAG_WORKER, me.to_tag())
    client.set_tag(alive_id, tracking.TAG_HASH, "def")
    tracking.set_status(client, alive_id, tracking.RUNNING)
    existing = tracking.runs_by_hash(client, "faults")
    updated, notes = claims.reconcile(client, existing, frozenset(), lambda found: tmp_path / "none")
    assert updated["abc"].status == tracking.KILLED and updated["def"].status == tracking.RUNNING
    assert len(notes) == 1 and "no live owner" in notes[0]
    assert f"PID {me.pid}" in client.get_run(run_id).data.tags["oner.error"]
    assert os.getpid() == me.pid


# --- data checked before anything is dispatched ---------------------------------------------------


def corpus_with_a_captionless_sample(root: Path) -> str:
    """Real webdataset shards (samples.py) plus one shard holding a sample without its caption."""
    from oner_lab.data.sample_corpora import paired
    from oner_lab.data.shards import write_shards

    samples = list(paired("cc3m", 12, 32))
    del samples[5]["txt"]
    (root / "wds").mkdir()
    write_shards(root / "wds", samples, 6)
    return str(root / "wds" / "shard-{000000..000001}.tar")


def cli_error(workdir: Path, capsys: pytest.CaptureFixture[str], *sets: str) -> str:
    """Runs the CLI on the smoke spec in `workdir`; asserts exit 2 before any MLflow run exists; returns stderr."""
    from faults_store_helpers import SMOKE

    from oner_lab.run import main

    arguments = [str(SMOKE), "--set", "launcher.backend=debug", "--only", "variant=itc"]
    for item in sets:
        arguments += ["--set", item]
    os.chdir(workdir)
    assert main(arguments) == 2
    assert not (workdir / "mlflow.db").exists() and not (workdir / "runs").exists()
    return capsys.readouterr().err


def test_on_corrupt_fail_fails_on_an_index_a_skip_run_cached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from oner_lab.data import CorruptSampleError, prepare
    from oner_lab.data.sources import TarSource
    from oner_lab.spec.config import DataConfig

    pattern = corpus_with_a_captionless_sample(tmp_path)
    cache = tmp_path / "cache"
    skipping = DataConfig(source={"kind": "webdataset", "urls": pattern}, cache_dir=str(cache), workers=1)
    assert prepare(skipping, 32, 16, []).train.num_samples == 11  # the index is cached, the sample left out
    assert len(list(cache.glob("tarindex-*"))) == 1

    with pytest.raises(CorruptSampleError, match=r"shard-000000\.tar: sample 'cc3m0000005': missing \.txt caption"):
        TarSource(pattern, cache, "fail")  # the job's own path, even past validation
    error = cli_error(
        tmp_path,
        capsys,
        "base.data.source.kind=webdataset",
        f"base.data.source.urls={pattern}",
        f"base.data.cache_dir={cache}",
        "base.data.on_corrupt=fail",
    )
    assert "data.source.urls" in error and "sample 'cc3m0000005': missing .txt caption" in error, error


def test_a_truncated_tar_is_refused_before_any_run_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from oner_lab.data.sample_corpora import write_paired

    shards = write_paired(tmp_path, "cc3m", 8, 4, 32)
    whole = shards[1].read_bytes()
    shards[1].write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    error = cli_error(
        tmp_path,
        capsys,
        "base.data.source.kind=webdataset",
        f"base.data.source.urls={tmp_path / 'cc3m' / '*.tar'}",
        f"base.data.cache_dir={tmp_path / 'cache'}",
    )
    assert f"{shards[1]}: truncated" in error or f"{shards[1]}: unreadable tar stream" in error, error
    assert not (tmp_path / "cache").exists()  # validation wrote nothing


def test_a_header_only_csv_is_refused_before_any_run_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "train.tsv"
    csv.write_text("filepath\ttitle\n")
    error = cli_error(
        tmp_path,
        capsys,
        "base.data.source.kind=csv",
        f"base.data.source.urls={csv}",
        f"base.data.cache_dir={tmp_path / 'cache'}",
    )
    assert f"{csv}: a header but no data row" in error, error
