"""One run over two SLURM nodes (bash slurm/local-cluster.sh start --nodes 2): DDP over gloo between
two network namespaces, rendezvous at the first node's address, and requeues of the two-node job.

Three jobs at once, the smoke spec's itc run on the `local` cluster profile: the one-process
reference, the same run on `launcher.slurm.nodes: 2` (one task per node), and that two-node run
sent `scontrol requeue` mid-run, which must resume bit-exactly into the same MLflow run. Then, alone
on the cluster (it takes a node down under every job there), the two-node run once more with the
second node's slurmd killed mid-run and the node marked DOWN (as SLURM does by itself after
SlurmdTimeout): SLURM ends the job on the first node (SIGTERM: a checkpoint on every rank) and requeues
it; the node's slurmd is started again, the node returns, and the job resumes bit-exactly as well.
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
from mlflow_store import copy_store
from test_slurm_launch import (
    REPO,
    SCENARIO_TIMEOUT_S,
    SIGNAL_AFTER,
    TERMINAL,
    VOLATILE,
    client_of,
    history,
    runs_in,
    same_curve,
    same_training,
    spec_arguments,
    wait_until,
)

from oner_lab import checkpoint
from oner_lab.launch import scheduler
from oner_lab.run import main
from oner_lab.train import PROGRESS_ENV

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS, CHECKPOINT_EVERY = 100, 90
"""Long enough to interrupt mid-way, the signal's checkpoint long before the periodic one: a two-node job
alone on the cluster trains about 17 steps a second, and the signal follows the job's log within a
second (`trained_step`; polling the store instead once saw step 10 only after the job had finished)."""
RUN = [
    "--only",
    "variant=itc",
    "--set",
    "base.objective.masked_terms=false",
    "--set",
    f"base.train.steps={STEPS}",
    "--set",
    f"base.train.checkpoint_every={CHECKPOINT_EVERY}",
]


def ready_for_signal(root: Path, name: str, job_id: str) -> bool:
    """SIGNAL_AFTER steps shown in rank 0's log, and not yet all of them."""
    step = trained_step(job_log(root / name, job_id))
    assert step < STEPS, f"{name} trained all {STEPS} steps before it could be interrupted"
    return step >= SIGNAL_AFTER


TWO_NODES = ["--set", "launcher.slurm.nodes=2", "--set", "launcher.slurm.tasks_per_node=1"]
SCENARIOS = {"reference": [], "nodes2": TWO_NODES, "nodes2_requeue": TWO_NODES}


@dataclass
class MultiNode:
    """The four runs once ended, and what the two interruptions left: each one's checkpoint step."""

    client: MlflowClient
    runs: dict[str, Run]
    job_ids: dict[str, str]
    runs_dirs: dict[str, Path]
    requeued_at_step: int
    node_down_at_step: int
    node_states_seen: set[str]


@pytest.fixture(scope="module")
def multinode(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path, two_slurm_nodes: list[str]) -> MultiNode:
    """Submits the three jobs with --no-wait, requeues one two-node job once its log shows SIGNAL_AFTER
    steps, records the step of the checkpoint it stopped at, and waits for all three to end; then runs
    the node-down job alone the same way. Jobs inherit ONER_MLFLOW_FLUSH_S=0 (every metric written at
    once) and ONER_PROGRESS_S=0 (a progress line per step), as in test_slurm_launch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONER_MLFLOW_FLUSH_S", "0")
        patch.setenv(PROGRESS_ENV, "0")  # a progress line per step in the job's log: what `trained_step` reads
        return _run_scenarios(tmp_path_factory.mktemp("multinode"), mlflow_template, two_slurm_nodes[1])


def submit(store: str, root: Path, name: str, *arguments: str) -> None:
    code = main(
        [
            *spec_arguments(
                store,
                root / name,
                root / "data_cache",
                *RUN,
                *arguments,
                "--set",
                f"tracking.experiment=multinode-{name}",
            ),
            "--no-wait",
        ]
    )
    assert code == 0


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


def _run_scenarios(root: Path, mlflow_template: Path, second_node: str) -> MultiNode:
    store = copy_store(mlflow_template, root)
    client = client_of(store)
    runs: dict[str, Run] = {}
    job_ids: dict[str, str] = {}
    for name, arguments in SCENARIOS.items():
        submit(store, root, name, *arguments)
        (runs[name],) = runs_in(client, f"multinode-{name}")
        job_ids[name] = client.get_run(runs[name].info.run_id).data.tags["oner.slurm.job_id"]

    target = runs["nodes2_requeue"].info.run_id
    wait_until(
        lambda: ready_for_signal(root, "nodes2_requeue", job_ids["nodes2_requeue"]),
        SCENARIO_TIMEOUT_S,
        "the two-node job to train",
    )
    subprocess.run(["scontrol", "requeue", job_ids["nodes2_requeue"]], check=True)
    requeued_at_step = wait_stopped_after_signal(client, target)
    wait_for_end(client, runs, job_ids, list(SCENARIOS))

    down = "nodes2_nodedown"
    submit(store, root, down, *TWO_NODES)
    (runs[down],) = runs_in(client, f"multinode-{down}")
    target = runs[down].info.run_id
    job_ids[down] = client.get_run(target).data.tags["oner.slurm.job_id"]
    wait_until(
        lambda: ready_for_signal(root, down, job_ids[down]),
        SCENARIO_TIMEOUT_S,
        "the two-node job to train",
    )
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
        node_down_at_step = wait_stopped_after_signal(client, target)
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
    wait_for_end(client, runs, job_ids, [down])
    return MultiNode(
        client,
        runs,
        job_ids,
        {name: root / name for name in (*SCENARIOS, down)},
        requeued_at_step,
        node_down_at_step,
        states,
    )


def wait_for_end(client: MlflowClient, runs: dict[str, Run], job_ids: dict[str, str], names: list[str]) -> None:
    """Waits until each named run has ended and its job left the queue; refreshes `runs`."""
    for name in names:
        run_id, job_id = runs[name].info.run_id, job_ids[name]
        wait_until(
            lambda run_id=run_id, job_id=job_id: (
                client.get_run(run_id).info.status in TERMINAL
                and scheduler.queue_states([job_id]).get(job_id) not in scheduler.ALIVE_STATES
            ),
            SCENARIO_TIMEOUT_S,
            f"scenario {name} to end",
        )
        runs[name] = client.get_run(run_id)


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


@pytest.mark.parametrize("name", ["nodes2_requeue", "nodes2_nodedown"])
def test_requeued_two_node_job_resumes_bit_exactly_into_the_same_run(
    multinode: MultiNode, two_slurm_nodes: list[str], name: str
) -> None:
    run, uninterrupted = multinode.runs[name], multinode.runs["nodes2"]
    stopped_at = multinode.requeued_at_step if name == "nodes2_requeue" else multinode.node_down_at_step
    assert run.info.status == "FINISHED", run.data.tags.get("oner.error")
    assert len(runs_in(multinode.client, f"multinode-{name}")) == 1, "the resumed job opened a second MLflow run"
    assert run.data.tags["oner.slurm.requeues"] == "1"
    assert SIGNAL_AFTER <= stopped_at < CHECKPOINT_EVERY, "the checkpoint was not written when the signal came"
    assert run.data.tags["oner.slurm.last_event"].startswith(f"SIGTERM at step {stopped_at} ")
    assert run.data.tags["oner.world_size"] == "2"
    assert task_hosts(multinode.runs_dirs[name], multinode.job_ids[name]) == two_slurm_nodes[:2]
    same_training(multinode.client, run, uninterrupted)
    for key, tensor in final_model(uninterrupted).items():
        assert torch.equal(final_model(run)[key], tensor), key
    print(
        f"\n{name}: stopped at step {stopped_at}, requeued, resumed and finished bit-exactly"
        + (f" (second node states seen: {sorted(multinode.node_states_seen)})" if name == "nodes2_nodedown" else "")
    )
