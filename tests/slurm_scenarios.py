"""The preemption scenarios of the SLURM tests: one session fixture (conftest `preemption`) submits them
all at once with --no-wait and interrupts them mid-run; test_slurm_launch and test_slurm_multinode read
what they left.

The smoke spec's itc run on the `local` cluster profile, every scenario in its own experiment and run
directory of one SQLite store: the one-process reference; SIGUSR2, scancel, and a requeue budget
exceeded (two tasks on one node, signalled twice); the same run on two tasks of one node; and, where
the cluster has two nodes, on one task of each node, uninterrupted and sent `scontrol requeue`. Run
together they share the cluster's waits (a requeued job stays PENDING for SLURM's credential
lifetime) and the reference; each job start costs about 7 CPU-seconds of imports on these two cores.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from job_logs import job_log, trained_step
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow_store import copy_store

from oner_lab import checkpoint
from oner_lab.launch import scheduler
from oner_lab.run import main

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "experiments" / "smoke.yaml"
ON_SLURM = ["--set", "launcher.backend=slurm", "--set", "launcher.slurm.cluster=local"]
STEPS, CHECKPOINT_EVERY, SIGNAL_AFTER = 100, 90, 10
"""Preemption runs: long enough to interrupt mid-way; the signal lands long before the periodic
checkpoint, so a resume from anything but the signal's own checkpoint would start from scratch. A job
alone on a node trains a step in about 50 ms, so the signal has about 4 s between SIGNAL_AFTER and
CHECKPOINT_EVERY to land; it is sent as soon as the job's own log shows SIGNAL_AFTER steps
(`trained_step`), well under a second later."""
TERMINAL = ("FINISHED", "FAILED", "KILLED")
POLL_S = 0.3
SCENARIO_TIMEOUT_S = 300


def client_of(store: str) -> MlflowClient:
    return MlflowClient(tracking_uri=store)


def runs_in(client: MlflowClient, experiment: str) -> list[Run]:
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; queue:\n{squeue_all()}")
        time.sleep(POLL_S)


def squeue_all() -> str:
    return subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T %j %r"], capture_output=True, text=True).stdout


def spec_arguments(store: str, runs_dir: Path, data_cache: Path, *arguments: str) -> list[str]:
    """The smoke spec on the local cluster profile, with this test's store, run and data directories."""
    return [
        str(SMOKE),
        *ON_SLURM,
        "--set",
        f"tracking.uri={store}",
        "--set",
        f"launcher.runs_dir={runs_dir}",
        "--set",
        f"base.data.cache_dir={data_cache}",
        *arguments,
    ]


@dataclass
class Scenario:
    """One submission of the same run config, in its own experiment and run directory."""

    name: str
    arguments: list[str]
    """The CLI's arguments (spec and --set ...), as `run` and `status` take them."""
    run: Run | None = None
    job_id: str = ""
    signals: list[str] = field(default_factory=list)
    stopped_at_step: list[int] = field(default_factory=list)
    """The step each interruption stopped at: from the run's new oner.slurm.last_event tag, else (a run that
    ended on it) its last checkpoint."""
    event_before: str | None = None
    """oner.slurm.last_event as the latest interruption left it (None before the first)."""


PREEMPTION_RUN = [
    "--only",
    "variant=itc",
    "--set",
    "base.objective.masked_terms=false",
    "--set",
    f"base.train.steps={STEPS}",
    "--set",
    f"base.train.checkpoint_every={CHECKPOINT_EVERY}",
]
TWO_NODES = ["--set", "launcher.slurm.nodes=2", "--set", "launcher.slurm.tasks_per_node=1"]
SCENARIOS = {
    "reference": [],
    "usr2": [],
    "ddp": ["--set", "launcher.slurm.tasks_per_node=2"],
    "budget": ["--set", "launcher.slurm.tasks_per_node=2", "--set", "launcher.slurm.max_requeues=1"],
    "cancel": [],
}
TWO_NODE_SCENARIOS = {"nodes2": TWO_NODES, "nodes2_requeue": TWO_NODES}
"""Submitted only where the partition has two usable nodes (test_slurm_multinode reads them)."""
INTERRUPTIONS = {
    "usr2": [["scancel", "--signal=USR2"]],
    "budget": [["scancel", "--signal=USR2"], ["scancel", "--signal=USR2"]],
    "cancel": [["scancel"]],
    "nodes2_requeue": [["scontrol", "requeue"]],
}


@dataclass
class Preemption:
    client: MlflowClient
    scenarios: dict[str, Scenario]
    no_wait_s: float
    """The longest `run --no-wait` before the first interruption was sent: later ones share the two CPUs
    and the store with jobs checkpointing and requeueing on a signal, and took up to 42 s."""
    submitted_s: dict[str, float]
    """How long each scenario's `run --no-wait` took, for a failure's message."""
    alive_after_no_wait: bool
    store: str
    root: Path
    """The scenarios' store and their directory (run directories `root/<name>`, data `root/data_cache`)."""


def run_scenarios(root: Path, mlflow_template: Path, two_nodes: bool) -> Preemption:
    """Submits every scenario with --no-wait, interrupts four of them mid-run (the budget one twice),
    records each interruption's checkpoint while the job waits to come back, and waits for all to end.
    Jobs inherit the caller's environment: ONER_MLFLOW_FLUSH_S=0 and ONER_PROGRESS_S=0 (conftest)."""
    store = copy_store(mlflow_template, root)
    client = client_of(store)
    data_cache = root / "data_cache"
    chosen = {**SCENARIOS, **(TWO_NODE_SCENARIOS if two_nodes else {})}
    scenarios = {
        name: Scenario(
            name,
            spec_arguments(
                store,
                root / name,
                data_cache,
                *PREEMPTION_RUN,
                *arguments,
                "--set",
                f"tracking.experiment=slurm-{name}",
            ),
        )
        for name, arguments in chosen.items()
    }
    pending = {name: list(commands) for name, commands in INTERRUPTIONS.items() if name in scenarios}
    waiting_requeue: set[str] = set()
    lock = threading.Lock()

    def signal_due() -> None:
        """Sends each submitted scenario its next interruption once its job's log shows the step it waits for."""
        with lock:
            for name in list(pending):
                scenario = scenarios[name]
                if name in waiting_requeue or not scenario.job_id:
                    continue
                step = trained_step(job_log(root / name, scenario.job_id))
                after = scenario.stopped_at_step[-1] + SIGNAL_AFTER if scenario.stopped_at_step else SIGNAL_AFTER
                assert step < STEPS, f"{name} trained all {STEPS} steps before it could be interrupted"
                if step >= after:
                    command = pending[name].pop(0)
                    subprocess.run([*command, scenario.job_id], check=True)
                    scenario.signals.append(" ".join(command))
                    waiting_requeue.add(name)
                    if not pending[name]:
                        del pending[name]

    # the first signals are sent while later scenarios are still being submitted: a job alone on a node
    # trains its 100 steps in about 5 s, less than the remaining submissions can take
    submitting = threading.Event()
    submitting.set()
    failures: list[BaseException] = []

    def watch() -> None:
        try:
            while submitting.is_set():
                signal_due()
                time.sleep(POLL_S)
        except BaseException as error:  # noqa: BLE001 - raised in the main thread after the submissions
            failures.append(error)

    watcher = threading.Thread(target=watch, name="first-signals", daemon=True)
    watcher.start()
    no_wait_s = 0.0
    submitted_s: dict[str, float] = {}
    alive_after_no_wait = True
    try:
        for scenario in scenarios.values():
            started = time.monotonic()
            code = main([*scenario.arguments, "--no-wait"])
            submitted_s[scenario.name] = round(time.monotonic() - started, 1)
            with lock:
                if not any(other.signals for other in scenarios.values()):
                    no_wait_s = max(no_wait_s, time.monotonic() - started)
            assert code == 0
            (scenario.run,) = runs_in(client, f"slurm-{scenario.name}")
            job_id = client.get_run(scenario.run.info.run_id).data.tags["oner.slurm.job_id"]
            states = scheduler.queue_states([job_id])
            alive_after_no_wait &= states.get(job_id) in scheduler.ALIVE_STATES
            scenario.job_id = job_id  # the watcher signals it from now on
    finally:
        submitting.clear()
        watcher.join()
    if failures:
        raise failures[0]

    deadline = time.monotonic() + SCENARIO_TIMEOUT_S
    while pending or waiting_requeue:
        assert time.monotonic() < deadline, f"interruptions not done: {pending}, {waiting_requeue}\n{squeue_all()}"
        signal_due()
        for name in list(waiting_requeue):
            scenario = scenarios[name]
            run = client.get_run(scenario.run.info.run_id)
            event = run.data.tags.get("oner.slurm.last_event")
            # a new event tag stays, whereas SCHEDULED may last less than a poll (the job is back RUNNING)
            if event != scenario.event_before and (found := re.match(r"\S+ at step (\d+) ", event or "")):
                scenario.stopped_at_step.append(int(found.group(1)))
                scenario.event_before = event
                waiting_requeue.discard(name)
            elif run.info.status in TERMINAL:  # ended on the signal (cancelled, over budget): its last checkpoint
                state = checkpoint.load(Path(run.data.tags["oner.run_dir"]) / "checkpoints" / "last.pt")
                scenario.stopped_at_step.append(state["step"])
                waiting_requeue.discard(name)
        time.sleep(POLL_S)

    for scenario in scenarios.values():
        wait_until(
            lambda scenario=scenario: (
                client.get_run(scenario.run.info.run_id).info.status in TERMINAL
                and scheduler.queue_states([scenario.job_id]).get(scenario.job_id) not in scheduler.ALIVE_STATES
            ),
            SCENARIO_TIMEOUT_S,
            f"scenario {scenario.name} to end",
        )
        scenario.run = client.get_run(scenario.run.info.run_id)
    return Preemption(client, scenarios, no_wait_s, submitted_s, alive_after_no_wait, store, root)
