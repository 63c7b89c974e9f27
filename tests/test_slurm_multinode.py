"""One run over two SLURM nodes (bash slurm/local-cluster.sh start --nodes 2): DDP over gloo between
two network namespaces, rendezvous at the first node's address, and requeues of the two-node job.

The session's preemption scenarios (slurm_scenarios.py) hold the one-process reference, the same run on
`launcher.slurm.nodes: 2` (one task per node), and that two-node run sent `scontrol requeue` mid-run,
which must resume bit-exactly into the same MLflow run. Then, alone on the cluster (it takes a node
down under every job there), the two-node run once more with the second node's slurmd killed mid-run
and the node marked DOWN (as SLURM does by itself after SlurmdTimeout): SLURM ends the job on the first
node (SIGTERM: a checkpoint on every rank) and requeues it; the node's slurmd is started again, the
node returns, and the job resumes bit-exactly as well.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from job_logs import job_log, trained_step
from mlflow import MlflowClient
from mlflow.entities import Run
from slurm_scenarios import (
    CHECKPOINT_EVERY,
    PREEMPTION_RUN,
    REPO,
    SCENARIO_TIMEOUT_S,
    SIGNAL_AFTER,
    STEPS,
    TERMINAL,
    TWO_NODES,
    Preemption,
    runs_in,
    spec_arguments,
    wait_until,
)
from test_slurm_launch import VOLATILE, history, same_curve, same_training

from oner_lab import checkpoint
from oner_lab.launch import scheduler
from oner_lab.run import main
from oner_lab.train import PROGRESS_ENV

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def ready_for_signal(root: Path, name: str, job_id: str) -> bool:
    """SIGNAL_AFTER steps shown in rank 0's log, and not yet all of them."""
    step = trained_step(job_log(root / name, job_id))
    assert step < STEPS, f"{name} trained all {STEPS} steps before it could be interrupted"
    return step >= SIGNAL_AFTER


DOWN = "nodes2_nodedown"


@dataclass
class NodeDown:
    """The node-down scenario once ended, in the preemption scenarios' store: its run, job, the step of
    the checkpoint it stopped at, and the states SLURM showed for the second node."""

    run: Run
    job_id: str
    stopped_at_step: int
    node_states_seen: set[str]


@pytest.fixture(scope="module")
def node_down(preemption: Preemption, two_slurm_nodes: list[str]) -> NodeDown:
    """Runs after every preemption scenario has ended (the session fixture waits for them). Jobs inherit
    ONER_MLFLOW_FLUSH_S=0 and ONER_PROGRESS_S=0 (a progress line per step: what `trained_step` reads)."""
    assert {"nodes2", "nodes2_requeue"} <= set(preemption.scenarios), "the two-node scenarios did not run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONER_MLFLOW_FLUSH_S", "0")
        patch.setenv(PROGRESS_ENV, "0")
        return _node_down(preemption, two_slurm_nodes[1])


def wait_stopped_after_signal(client: MlflowClient, run_id: str) -> int:
    """Waits for the run to record its stop (tag oner.slurm.last_event, "SIGTERM at step N (checkpoint
    written): ...") or to end; the step it stopped at. The tag stays, whereas SCHEDULED may last less than
    a poll: a requeued job on an idle cluster is RUNNING again within seconds (seen in CI: the poll missed
    it and read the final checkpoint instead)."""
    wait_until(
        lambda: "oner.slurm.last_event" in (run := client.get_run(run_id)).data.tags or run.info.status in TERMINAL,
        SCENARIO_TIMEOUT_S,
        "the interrupted two-node job to checkpoint and stop",
    )
    run = client.get_run(run_id)
    found = re.match(r"\S+ at step (\d+) ", run.data.tags.get("oner.slurm.last_event", ""))
    if found:
        return int(found.group(1))
    return checkpoint.load(Path(run.data.tags["oner.run_dir"]) / "checkpoints" / "last.pt")["step"]


def node_state(node: str) -> str:
    return subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def _node_down(preemption: Preemption, second_node: str) -> NodeDown:
    root, client = preemption.root, preemption.client
    code = main(
        [
            *spec_arguments(
                preemption.store,
                root / DOWN,
                root / "data_cache",
                *PREEMPTION_RUN,
                *TWO_NODES,
                "--set",
                f"tracking.experiment=slurm-{DOWN}",
            ),
            "--no-wait",
        ]
    )
    assert code == 0
    (run,) = runs_in(client, f"slurm-{DOWN}")
    target = run.info.run_id
    job_id = client.get_run(target).data.tags["oner.slurm.job_id"]
    wait_until(lambda: ready_for_signal(root, DOWN, job_id), SCENARIO_TIMEOUT_S, "the two-node job to train")
    pid_file = Path(f"/run/slurmd-{second_node}.pid")  # where slurm/local-cluster.sh's slurm.conf puts it
    states: set[str] = set()
    try:
        subprocess.run(["kill", "-KILL", pid_file.read_text().strip()], check=True)
        # SLURM would mark the node DOWN by itself SlurmdTimeout (20 s) after its slurmd stopped answering,
        # which a short job on an idle machine can outlive: say at once what it would find out
        subprocess.run(
            ["scontrol", "update", f"NodeName={second_node}", "State=DOWN", "Reason=slurmd killed by a test"],
            check=True,
        )
        wait_until(
            lambda: states.add(node_state(second_node)) or any("down" in state for state in states),
            SCENARIO_TIMEOUT_S,
            f"SLURM to mark {second_node} down",
        )
        stopped_at = wait_stopped_after_signal(client, target)
    finally:
        subprocess.run(
            ["bash", str(REPO / "slurm" / "local-cluster.sh"), "start-node", second_node.removeprefix("node")],
            check=True,
        )
    wait_until(
        lambda: node_state(second_node) in ("idle", "mixed", "allocated"),
        SCENARIO_TIMEOUT_S,
        f"{second_node} to come back",
    )
    wait_until(
        lambda: (
            client.get_run(target).info.status in TERMINAL
            and scheduler.queue_states([job_id]).get(job_id) not in scheduler.ALIVE_STATES
        ),
        SCENARIO_TIMEOUT_S,
        f"scenario {DOWN} to end",
    )
    return NodeDown(client.get_run(target), job_id, stopped_at, states)


def task_hosts(runs_dir: Path, job_id: str) -> list[str]:
    """The hostname each task of the job's last start reported (submitit's first log line), by rank."""
    hosts = {}
    for log in sorted((runs_dir / "submitit" / job_id).glob("*_log.out")):
        line = next(line for line in log.read_text().splitlines() if "Starting with JobEnvironment" in line)
        hosts[int(log.name.split("_")[-2])] = line.split("hostname=")[1].split(",")[0]
    return [hosts[rank] for rank in sorted(hosts)]


def test_two_node_run_matches_the_one_process_run(preemption: Preemption, two_slurm_nodes: list[str]) -> None:
    """Same global batch over two ranks on two nodes: the same tolerance as the two-task run on one
    node (test_slurm_launch.test_two_task_ddp_run_matches_the_one_process_run explains it)."""
    scenario, reference = preemption.scenarios["nodes2"], preemption.scenarios["reference"].run
    run, client = scenario.run, preemption.client
    assert run.info.status == "FINISHED", run.data.tags.get("oner.error")
    assert task_hosts(preemption.root / "nodes2", scenario.job_id) == two_slurm_nodes[:2]
    assert run.data.tags["oner.world_size"] == "2" and reference.data.tags["oner.world_size"] == "1"
    assert run.data.tags["oner.slurm.nodes"] == f"{two_slurm_nodes[0][:-1]}[1-2]", run.data.tags["oner.slurm.nodes"]
    keys = sorted(key for key in reference.data.metrics if key.startswith("train/") and key not in VOLATILE)
    worst = 0.0
    for key in keys:
        got = history(client, run.info.run_id, key)
        want = history(client, reference.info.run_id, key)
        assert [step for step, _ in got] == [step for step, _ in want] == list(range(1, STEPS + 1)), key
        values, expected = [value for _, value in got], [value for _, value in want]
        same_curve(values, expected, key)
        if key == "train/loss":
            worst = max(abs(a - b) / abs(b) for a, b in zip(values, expected))
            first20 = max(abs(a - b) / abs(b) for a, b in zip(values[:20], expected[:20]))
    print(
        f"\n2-node vs 1-process train/loss: max relative difference {first20:.2e} over steps 1-20, "
        f"{worst:.2e} over all {STEPS} steps"
    )


def final_model(run: Run) -> dict[str, torch.Tensor]:
    state = checkpoint.load(Path(run.data.tags["oner.run_dir"]) / "checkpoints" / "last.pt")
    assert state["step"] == STEPS
    return state["model"]


def test_requeued_two_node_job_resumes_bit_exactly_into_the_same_run(
    preemption: Preemption, two_slurm_nodes: list[str]
) -> None:
    """`scontrol requeue` mid-run (one of the session's scenarios, run beside the others)."""
    scenario = preemption.scenarios["nodes2_requeue"]
    (stopped_at,) = scenario.stopped_at_step
    resumed_bit_exactly(preemption, scenario.run, scenario.job_id, stopped_at, "nodes2_requeue", two_slurm_nodes)


def test_two_node_job_whose_second_node_went_down_resumes_bit_exactly(
    preemption: Preemption, node_down: NodeDown, two_slurm_nodes: list[str]
) -> None:
    resumed_bit_exactly(preemption, node_down.run, node_down.job_id, node_down.stopped_at_step, DOWN, two_slurm_nodes)
    print(f"second node states seen: {sorted(node_down.node_states_seen)}")


def resumed_bit_exactly(
    preemption: Preemption, run: Run, job_id: str, stopped_at: int, name: str, two_slurm_nodes: list[str]
) -> None:
    """Against the uninterrupted two-node run: every metric and the final weights equal."""
    uninterrupted = preemption.scenarios["nodes2"].run
    assert run.info.status == "FINISHED", run.data.tags.get("oner.error")
    assert len(runs_in(preemption.client, f"slurm-{name}")) == 1, "the resumed job opened a second MLflow run"
    assert run.data.tags["oner.slurm.requeues"] == "1"
    assert SIGNAL_AFTER <= stopped_at < CHECKPOINT_EVERY, "the checkpoint was not written when the signal came"
    assert run.data.tags["oner.slurm.last_event"].startswith(f"SIGTERM at step {stopped_at} ")
    assert run.data.tags["oner.world_size"] == "2"
    assert task_hosts(preemption.root / name, job_id) == two_slurm_nodes[:2]
    same_training(preemption.client, run, uninterrupted)
    for key, tensor in final_model(uninterrupted).items():
        assert torch.equal(final_model(run)[key], tensor), key
    print(f"\n{name}: stopped at step {stopped_at}, requeued, resumed and finished bit-exactly")
