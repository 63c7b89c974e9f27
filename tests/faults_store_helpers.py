"""Real faults for the tracking-store tests: an immutable (read-only) SQLite file, a process holding an
EXCLUSIVE lock on it, the CLI as a subprocess, and readers of what MLflow holds."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from held_processes import run_a_slice, signal_all
from mlflow import MlflowClient
from mlflow_store import subprocess_env

SMOKE = Path(__file__).resolve().parent.parent / "experiments" / "smoke.yaml"
EXPERIMENT = "oner-smoke"

HOLD_EXCLUSIVE = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Makes `path` immutable (`chattr +i`): as root, file modes are ignored, this is not."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here ({done.stderr.strip()}): cannot make the store read-only as root")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def hold_exclusive_lock(database: Path, seconds: float) -> subprocess.Popen:
    """Another process holding SQLite's EXCLUSIVE lock on `database` for `seconds`; returns once held."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_EXCLUSIVE, str(database), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_cli(directory: Path, *arguments: str, spec: Path = SMOKE, flush_s: str = "0") -> subprocess.Popen:
    """`python -m oner_lab.run` in `directory`, its output in a log file there (read with `output`)."""
    log = (directory / f"cli-{time.monotonic_ns()}.log").open("w")
    env = {**subprocess_env(), "ONER_MLFLOW_FLUSH_S": flush_s}
    process = subprocess.Popen(
        [sys.executable, "-m", "oner_lab.run", str(spec), *arguments],
        cwd=directory,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    process.log_path = Path(log.name)  # type: ignore[attr-defined]
    return process


def output(process: subprocess.Popen) -> str:
    return process.log_path.read_text()  # type: ignore[attr-defined]


def client_of(directory: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")


def runs_of(directory: Path) -> list:
    client = client_of(directory)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return (
        []
        if experiment is None
        else client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    )


def history(directory: Path, run_id: str, key: str = "train/loss") -> list:
    return client_of(directory).get_metric_history(run_id, key)


def steps_of(directory: Path, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(metric.step for metric in history(directory, run_id, key))


def wait_for_steps(directory: Path, process: subprocess.Popen, at_least: int = 1, timeout_s: float = 300) -> str:
    """Polls MLflow until the spec's first run has logged `at_least` training steps; returns its run id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the CLI ended early:\n{output(process)}"
        if (directory / "mlflow.db").exists():
            try:
                for run in runs_of(directory):
                    if len(steps_of(directory, run.info.run_id)) >= at_least:
                        return run.info.run_id
            except Exception:  # noqa: BLE001 - the store may be mid-creation
                pass
        time.sleep(0.3)
    raise AssertionError(f"no run logged {at_least} steps within {timeout_s}s:\n{output(process)}")


def forget_cached_stores() -> None:
    """Drops MLflow's per-URI store cache in this (test) process: its pooled SQLite connections would go
    on reading a deleted store file instead of the one a rerun creates at the same path."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()
    for engine in SqlAlchemyStore._engine_map.values():  # engines are cached per database URI as well
        engine.dispose()
    SqlAlchemyStore._engine_map.clear()


def run_slowed(
    process: subprocess.Popen,
    during: subprocess.Popen | None = None,
    run_s: float = 0.05,
    pause_s: float = 0.2,
    timeout_s: float = 300,
) -> None:
    """Lets `process` run `run_s` at a time with pauses of `pause_s` (SIGSTOP, SIGCONT) until it ends or,
    with `during`, until that process ends: its clock goes on while it trains at a fifth of its speed. A
    fault that lasts a wall-clock time (a tracking outage window, a lock held for 8 s) must find the run
    still training; on a fast machine the built-in run's 200 steps take about 2 s (86 steps/s seen in CI)."""
    deadline = time.monotonic() + timeout_s
    try:
        while (
            process.poll() is None and (during is None or during.poll() is None) and run_a_slice([process.pid], run_s)
        ):
            assert time.monotonic() < deadline, f"still running after {timeout_s}s"
            time.sleep(pause_s)
    finally:
        if process.poll() is None:
            signal_all([process.pid], signal.SIGCONT)


def wait_slowed(process: subprocess.Popen, **slowed: float) -> int:
    """`run_slowed` until `process` ends; returns its exit code."""
    run_slowed(process, **slowed)
    return process.wait(timeout=60)
