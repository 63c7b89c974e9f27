"""Shared test fixtures.

SLURM: tests marked `slurm` run against a real scheduler (start one with
`bash slurm/local-cluster.sh start`). Without one they are skipped with the reason shown,
unless ONER_REQUIRE_SLURM=1 (set by .ci/run), where a missing cluster is a failure.
"""

from __future__ import annotations

import os
import subprocess

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
