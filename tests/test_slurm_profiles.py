"""Cluster profiles and what `sinfo` prints, checked without a cluster (the checks against a running
one are in test_slurm_launch.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from oner_lab.launch import LaunchError, resolve_slurm
from oner_lab.launch.cluster import REPO_PROFILES, load_profile
from oner_lab.launch.preemption import TERM, USR2, Next, decide
from oner_lab.launch.scheduler import gpus_in, minutes
from oner_lab.spec import SlurmConfig


@pytest.mark.parametrize("path", sorted(REPO_PROFILES.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_profile_is_valid(path: Path) -> None:
    profile, found = load_profile(path.stem)
    assert found == path
    assert profile.time_limit_min * 60 > profile.signal_lead_s


def test_the_a100_profile_asks_one_rank_per_gpu() -> None:
    resources = resolve_slurm(SlurmConfig(cluster="a100", nodes=4))
    assert (resources.gpus_per_node, resources.tasks_per_node, resources.world_size) == (8, 8, 32)
    parameters = resources.executor_parameters("oner-ablation")
    assert parameters["gpus_per_node"] == parameters["tasks_per_node"] == 8
    assert parameters["slurm_signal_delay_s"] == 300 and parameters["timeout_min"] == 1440
    assert parameters["slurm_additional_parameters"] == {"requeue": True}
    # srun of SLURM 22.05-23.02 does not inherit --cpus-per-task; a GPU job must not fall back to the CPU
    assert "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK" in parameters["slurm_setup"]
    assert "export ONER_EXPECT_GPUS=1" in parameters["slurm_setup"]
    cpu_only = resolve_slurm(SlurmConfig(cluster="local")).executor_parameters("smoke")
    assert "export ONER_EXPECT_GPUS=1" not in cpu_only["slurm_setup"]


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ("infinite", None),
        ("UNLIMITED", None),
        ("30", 30),
        ("30:00", 30),
        ("2:00:00", 120),
        ("1-00:00:00", 1440),
        ("2-12", 3600),
        ("1-02:30", 1590),
        ("0:10:30", 11),
    ],
)
def test_sinfo_time_limits_in_minutes(limit: str, expected: int | None) -> None:
    assert minutes(limit) == expected


@pytest.mark.parametrize(
    ("gres", "expected"),
    [
        ("(null)", 0),
        ("gpu:8", 8),
        ("gpu:a100:8(S:0-1)", 8),
        ("gpu:a100:4,shard:16", 4),
        ("shard:8", 0),
        ("mps:100,gpu:2", 2),
    ],
)
def test_gpus_per_node_from_sinfo_gres(gres: str, expected: int) -> None:
    assert gpus_in(gres) == expected


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cluster": "a10"}, "Did you mean 'a100'?"),
        ({"cluster": "a100", "gpus_per_node": 9}, "launcher.slurm.gpus_per_node: 9 is more than a node has"),
        ({"cluster": "a100", "tasks_per_node": 4}, "launcher.slurm.tasks_per_node: 4 does not match the 8 GPUs"),
        ({"cluster": "a100", "time_min": 5}, "launcher.slurm.time_min: 5 min is not longer than the USR2 lead"),
    ],
)
def test_a_job_the_profile_cannot_give_is_refused(settings: dict, message: str) -> None:
    with pytest.raises(LaunchError, match=message.replace("?", r"\?").replace(".", r"\.")):
        resolve_slurm(SlurmConfig(**settings))


def test_a_profile_may_not_set_a_flag_the_launcher_sets(tmp_path: Path) -> None:
    text = (REPO_PROFILES / "local.yaml").read_text().replace("extra_sbatch: {}", "extra_sbatch: {signal: USR1@10}")
    (tmp_path / "site.yaml").write_text(text)
    with pytest.raises(LaunchError, match=r"site\.yaml: extra_sbatch: .*'signal' is set by the launcher"):
        resolve_slurm(SlurmConfig(cluster=str(tmp_path / "site.yaml")))


@pytest.mark.parametrize(
    ("request_", "restarts", "requeued_by_slurm", "expected"),
    [
        (USR2, 0, False, Next.REQUEUE),
        (USR2, 2, False, Next.OVER_BUDGET),
        (TERM, 0, True, Next.REQUEUED_BY_SLURM),
        (TERM, 2, True, Next.REQUEUED_BY_SLURM),  # SLURM brings it back anyway; it fails at start, over budget
        (TERM, 0, False, Next.CANCELLED),
    ],
)
def test_what_a_stopped_job_does_next(request_: int, restarts: int, requeued_by_slurm: bool, expected: Next) -> None:
    assert decide(request_, restarts, max_requeues=2, requeued_by_slurm=requeued_by_slurm) is expected
