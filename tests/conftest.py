"""Shared test fixtures.

SLURM: tests marked `slurm` run against a real scheduler (start one with
`bash slurm/local-cluster.sh start`). Without one they are skipped with the reason shown,
unless ONER_REQUIRE_SLURM=1 (set by .ci/run), where a missing cluster is a failure. Tests
that need two nodes (`bash slurm/local-cluster.sh start --nodes 2`) ask for `two_slurm_nodes`;
ONER_REQUIRE_SLURM_NODES=2 makes a smaller cluster a failure there.

Server: tests marked `server` write to a real MLflow tracking server (on PostgreSQL:
`bash slurm/local-tracking.sh start`) whose URI is in ONER_TEST_TRACKING_URI; without it they are
skipped, unless ONER_REQUIRE_SERVER=1 (set by .ci/run). ONER_TEST_OPTUNA_STORAGE names the
PostgreSQL database for Optuna studies (`bash slurm/local-tracking.sh optuna-uri`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow_store import mlflow_template  # noqa: F401  (a session fixture every MLflow test shares)

SLURM_PARTITION = "a100"
USABLE_NODE_STATES = ("idle", "mixed", "allocated")
SINFO_TIMEOUT_S = 10


def _slurm_unavailable_reason(partition: str) -> str | None:
    """Why partition cannot run jobs now, or None when it has a node that answers."""
    command = ["sinfo", "-h", "-p", partition, "-o", "%T"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=SINFO_TIMEOUT_S)
    except FileNotFoundError:
        return "sinfo not found: no SLURM client installed"
    except subprocess.TimeoutExpired:
        return f"`{' '.join(command)}` did not answer within {SINFO_TIMEOUT_S}s"
    if done.returncode != 0:
        return f"`{' '.join(command)}` exited {done.returncode}: {done.stderr.strip()}"
    states = done.stdout.split()
    if not any(state in USABLE_NODE_STATES for state in states):
        return f"partition {partition!r} has no node in {USABLE_NODE_STATES} (states: {states or 'none'})"
    return None


@pytest.fixture(scope="session")
def slurm_partition() -> str:
    """Name of a SLURM partition that answers; skips (or fails under ONER_REQUIRE_SLURM=1) otherwise."""
    reason = _slurm_unavailable_reason(SLURM_PARTITION)
    if reason is not None:
        message = f"no SLURM cluster: {reason}; start one with `bash slurm/local-cluster.sh start`"
        if os.environ.get("ONER_REQUIRE_SLURM") == "1":
            pytest.fail(f"{message} (ONER_REQUIRE_SLURM=1)", pytrace=False)
        pytest.skip(message)
    return SLURM_PARTITION


@pytest.fixture(autouse=True)
def _require_slurm_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """Gives every `slurm`-marked test the cluster check, even when it does not ask for the partition."""
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_partition")


def _usable_nodes(partition: str) -> list[str]:
    command = ["sinfo", "-h", "-N", "-p", partition, "-o", "%N %T"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SINFO_TIMEOUT_S)
    return sorted(
        {
            line.split()[0]
            for line in done.stdout.splitlines()
            if line.split()[1:2] and line.split()[1] in USABLE_NODE_STATES
        }
    )


@pytest.fixture(scope="session")
def two_slurm_nodes(slurm_partition: str) -> list[str]:
    """The names of at least two usable nodes of the partition; skips (or fails under
    ONER_REQUIRE_SLURM_NODES=2) on a one-node cluster."""
    nodes = _usable_nodes(slurm_partition)
    if len(nodes) < 2:
        message = (
            f"partition {slurm_partition!r} has {len(nodes)} usable node(s) ({nodes}); start two with "
            "`bash slurm/local-cluster.sh start --nodes 2`"
        )
        if int(os.environ.get("ONER_REQUIRE_SLURM_NODES", "1")) >= 2:
            pytest.fail(f"{message} (ONER_REQUIRE_SLURM_NODES={os.environ['ONER_REQUIRE_SLURM_NODES']})", pytrace=False)
        pytest.skip(message)
    return nodes


@dataclass(frozen=True)
class TrackingServer:
    """The MLflow server the `server` tests write to (each test in experiments of its own)."""

    uri: str
    optuna_storage: str | None


@pytest.fixture(scope="session")
def tracking_server() -> TrackingServer:
    """ONER_TEST_TRACKING_URI, checked by one read; skips (fails under ONER_REQUIRE_SERVER=1) without it."""
    from oner_lab import tracking

    uri = os.environ.get("ONER_TEST_TRACKING_URI")
    reason = None if uri else "ONER_TEST_TRACKING_URI is not set"
    if uri:
        try:
            tracking.connect(uri)
        except tracking.TrackingError as error:
            reason = str(error)
    if reason is not None:
        message = (
            f"no MLflow tracking server: {reason}; start one with `bash slurm/local-tracking.sh start` "
            "and export ONER_TEST_TRACKING_URI=$(bash slurm/local-tracking.sh uri)"
        )
        if os.environ.get("ONER_REQUIRE_SERVER") == "1":
            pytest.fail(f"{message} (ONER_REQUIRE_SERVER=1)", pytrace=False)
        pytest.skip(message)
    assert uri is not None
    return TrackingServer(uri, os.environ.get("ONER_TEST_OPTUNA_STORAGE"))


@pytest.fixture(autouse=True)
def _require_server_for_marked_tests(request: pytest.FixtureRequest) -> None:
    """Gives every `server`-marked test the server check."""
    if request.node.get_closest_marker("server") is not None:
        request.getfixturevalue("tracking_server")


@pytest.fixture(scope="session")
def preemption(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path, slurm_partition: str):  # noqa: ANN201, F811
    """The preemption scenarios (tests/slurm_scenarios.py), run once for test_slurm_launch and
    test_slurm_multinode; the two-node ones where the partition has two usable nodes. Jobs inherit
    ONER_MLFLOW_FLUSH_S=0 (every metric written at once) and ONER_PROGRESS_S=0 (a progress line per
    step in each job's log, which the interruptions are timed from)."""
    import slurm_scenarios

    from oner_lab.train import PROGRESS_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONER_MLFLOW_FLUSH_S", "0")
        patch.setenv(PROGRESS_ENV, "0")
        return slurm_scenarios.run_scenarios(
            tmp_path_factory.mktemp("preemption"), mlflow_template, two_nodes=len(_usable_nodes(slurm_partition)) >= 2
        )


@pytest.fixture(scope="session")
def kernel() -> str:
    """The `python3` Jupyter kernel the notebooks name, installed into this environment if missing."""
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix"], check=True)
    return "python3"
