"""One run over two SLURM nodes (bash slurm/local-cluster.sh start --nodes 2): DDP over gloo between
two network namespaces, rendezvous at the first node's address, and a requeue of the two-node job.

Three jobs at once, the smoke spec's itc run on the `local` cluster profile: the one-process
reference, the same run on `launcher.slurm.nodes: 2` (one task per node), and that two-node run
sent `scontrol requeue` mid-run, which must resume bit-exactly into the same MLflow run.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow_store import copy_store
from test_slurm_launch import (
    CHECKPOINT_EVERY,
    PREEMPTION_RUN,
    SCENARIO_TIMEOUT_S,
    SIGNAL_AFTER,
    STEPS,
    TERMINAL,
    VOLATILE,
    client_of,
    final_model,
    history,
    last_step,
    runs_in,
    same_training,
    spec_arguments,
    wait_until,
)

from oner_lab import checkpoint
from oner_lab.launch import scheduler
from oner_lab.run import main

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TWO_NODES = ["--set", "launcher.slurm.nodes=2", "--set", "launcher.slurm.tasks_per_node=1"]
SCENARIOS = {"reference": [], "nodes2": TWO_NODES, "nodes2_requeue": TWO_NODES}


@dataclass
class MultiNode:
    client: MlflowClient
    runs: dict[str, Run]
    job_ids: dict[str, str]
    runs_dirs: dict[str, Path]
    requeued_at_step: int


@pytest.fixture(scope="module")
def multinode(
    tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path, two_slurm_nodes: list[str]
) -> MultiNode:
    """Submits the three jobs with --no-wait, requeues one two-node job once it has logged SIGNAL_AFTER
    steps, records the step of the checkpoint it stopped at, and waits for all three to end. Jobs inherit
    ONER_MLFLOW_FLUSH_S=0 (every metric written at once), as in test_slurm_launch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONER_MLFLOW_FLUSH_S", "0")
        return _run_scenarios(tmp_path_factory.mktemp("multinode"), mlflow_template)


def _run_scenarios(root: Path, mlflow_template: Path) -> MultiNode:
    data_cache = root / "data_cache"
    store = copy_store(mlflow_template, root)
    client = client_of(store)
    runs: dict[str, Run] = {}
    job_ids: dict[str, str] = {}
    for name, arguments in SCENARIOS.items():
        code = main([*spec_arguments(store, root / name, data_cache, *PREEMPTION_RUN, *arguments,
                                     "--set", f"tracking.experiment=multinode-{name}"), "--no-wait"])
        assert code == 0
        (runs[name],) = runs_in(client, f"multinode-{name}")
        job_ids[name] = client.get_run(runs[name].info.run_id).data.tags["oner.slurm.job_id"]

    target = runs["nodes2_requeue"].info.run_id
    wait_until(lambda: client.get_run(target).info.status == "RUNNING" and last_step(client, target) >= SIGNAL_AFTER,
               SCENARIO_TIMEOUT_S, "the two-node job to train")
    subprocess.run(["scontrol", "requeue", job_ids["nodes2_requeue"]], check=True)
    wait_until(lambda: client.get_run(target).info.status in ("SCHEDULED", *TERMINAL), SCENARIO_TIMEOUT_S,
               "the requeued two-node job to checkpoint and stop")
    run_dir = Path(client.get_run(target).data.tags["oner.run_dir"])
    requeued_at_step = checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"]

    for name in SCENARIOS:
        run_id, job_id = runs[name].info.run_id, job_ids[name]
        wait_until(
            lambda run_id=run_id, job_id=job_id: client.get_run(run_id).info.status in TERMINAL
            and scheduler.queue_states([job_id]).get(job_id) not in scheduler.ALIVE_STATES,
            SCENARIO_TIMEOUT_S, f"scenario {name} to end",
        )
        runs[name] = client.get_run(run_id)
    return MultiNode(client, runs, job_ids, {name: root / name for name in SCENARIOS}, requeued_at_step)


def task_hosts(runs_dir: Path, job_id: str) -> list[str]:
    """The hostname each task of the job's last start reported (submitit's first log line), by rank."""
    hosts = {}
    for log in sorted((runs_dir / "submitit" / job_id).glob("*_log.out")):
        line = next(line for line in log.read_text().splitlines() if "Starting with JobEnvironment" in line)
        hosts[int(log.name.split("_")[-2])] = line.split("hostname=")[1].split(",")[0]
    return [hosts[rank] for rank in sorted(hosts)]


def test_two_node_run_matches_the_one_process_run(multinode: MultiNode, two_slurm_nodes: list[str]) -> None:
    """Same global batch over two ranks on two nodes: the same tolerance as the two-task run on one
    node (test_slurm_launch.test_two_task_ddp_run_matches_the_one_process_run explains it)."""
    run, reference = multinode.runs["nodes2"], multinode.runs["reference"]
    assert run.info.status == "FINISHED", run.data.tags.get("oner.error")
    assert task_hosts(multinode.runs_dirs["nodes2"], multinode.job_ids["nodes2"]) == two_slurm_nodes[:2]
    assert run.data.tags["oner.world_size"] == "2" and reference.data.tags["oner.world_size"] == "1"
    assert run.data.tags["oner.slurm.nodes"] == f"{two_slurm_nodes[0][:-1]}[1-2]", run.data.tags["oner.slurm.nodes"]
    keys = sorted(key for key in reference.data.metrics if key.startswith("train/") and key not in VOLATILE)
    worst = 0.0
    for key in keys:
        got = history(multinode.client, run.info.run_id, key)
        want = history(multinode.client, reference.info.run_id, key)
        assert [step for step, _ in got] == [step for step, _ in want] == list(range(1, STEPS + 1)), key
        values, expected = [value for _, value in got], [value for _, value in want]
        assert values[:20] == pytest.approx(expected[:20], rel=1e-4), key
        assert values == pytest.approx(expected, rel=5e-2), key
        if key == "train/loss":
            worst = max(abs(a - b) / abs(b) for a, b in zip(values, expected))
            first20 = max(abs(a - b) / abs(b) for a, b in zip(values[:20], expected[:20]))
    print(f"\n2-node vs 1-process train/loss: max relative difference {first20:.2e} over steps 1-20, "
          f"{worst:.2e} over all {STEPS} steps")


def test_requeued_two_node_job_resumes_bit_exactly_into_the_same_run(multinode: MultiNode) -> None:
    run, uninterrupted = multinode.runs["nodes2_requeue"], multinode.runs["nodes2"]
    assert run.info.status == "FINISHED", run.data.tags.get("oner.error")
    assert len(runs_in(multinode.client, "multinode-nodes2_requeue")) == 1, "the resumed job opened a second MLflow run"
    assert run.data.tags["oner.slurm.requeues"] == "1"
    assert SIGNAL_AFTER <= multinode.requeued_at_step < CHECKPOINT_EVERY, "the checkpoint was not written when the signal came"
    assert run.data.tags["oner.slurm.last_event"].startswith(f"SIGTERM at step {multinode.requeued_at_step} ")
    assert run.data.tags["oner.world_size"] == "2"
    same_training(multinode.client, run, uninterrupted)
    for key, tensor in final_model(uninterrupted).items():
        assert torch.equal(final_model(run)[key], tensor), key
