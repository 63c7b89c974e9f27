"""What the MLflow UI needs beyond metrics, on a real SQLite store: experiment kind and description,
links, who and what made a run, datasets, system metrics per node, cost params, final weights."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path

import pytest
import torch
from faults_store_helpers import hold_exclusive_lock
from mlflow import MlflowClient
from mlflow_store import copy_store

from oner_lab import cost, system_metrics, tracking, tracking_ui, weights
from oner_lab.model import OneTower, TowerConfig, tower_config
from oner_lab.spec import Spec, expand

DEFAULTS = tracking_ui.JobOptions()


@pytest.fixture
def store(mlflow_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, MlflowClient]:
    monkeypatch.chdir(tmp_path)
    uri = copy_store(mlflow_template, tmp_path)
    return uri, tracking.connect(uri)


def make_spec(data: dict | None = None, backend: str = "local") -> Spec:
    return Spec(
        name="ui-test",
        description="What this experiment is for.",
        launcher={"backend": backend},
        base={"train": {"steps": 3, "batch_size": 8}, "data": data or {}},
        grid={"variants": {"oner": {"objective": {"variant": "oner"}}, "itc": {"objective": {"variant": "itc"}}}},
        source_file=Path("experiments/ui-test.yaml"),
    )


def test_a_created_run_carries_user_source_datasets_and_a_model_training_link(store, tmp_path: Path) -> None:
    uri, client = store
    spec = make_spec()
    planned = expand(spec)[0]
    run_id = tracking.create_run(client, spec.experiment_name, planned, spec, tmp_path / "runs" / planned.config_hash)
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"] == "What this experiment is for."
    tags = run.data.tags
    assert tags["mlflow.user"] == getpass.getuser()
    assert tags["mlflow.source.name"] == "experiments/ui-test.yaml" and tags["mlflow.source.type"] == "LOCAL"
    runs_list = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert (
        runs_list in tags["mlflow.note.content"]
        and f"/runs/{run_id}?workflowType=machine_learning" in tags["mlflow.note.content"]
    )
    inputs = {(item.dataset.name, item.tags[0].value): item.dataset for item in run.inputs.dataset_inputs}
    assert set(inputs) == {("shapes/train", "training"), ("shapes", "eval"), ("shapes_cls", "eval")}
    assert json.loads(inputs["shapes/train", "training"].profile)["num_rows"] == planned.config.data.train_size
    assert tracking_ui.experiment_link(uri, spec.experiment_name) == runs_list
    assert tracking_ui.experiment_link(uri, "no-such-experiment") is None


def test_slurm_runs_are_jobs_and_an_ui_env_moves_the_links(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracking_ui.identity_tags(make_spec(backend="slurm"))["mlflow.source.type"] == "JOB"
    assert tracking_ui.runs_link("http://mlflow.internal:5000/", "7") == (
        "http://mlflow.internal:5000/#/experiments/7/runs?workflowType=machine_learning"
    )
    monkeypatch.setenv("ONER_MLFLOW_UI", "http://127.0.0.1:8080/")
    assert tracking_ui.runs_link("sqlite:///mlflow.db", "3").startswith("http://127.0.0.1:8080/#/experiments/3/runs?")


def test_file_datasets_are_told_apart_by_their_files_fingerprint(store, tmp_path: Path) -> None:
    from oner_lab import tracking_datasets

    first, second = tmp_path / "a" / "train.tsv", tmp_path / "b" / "train.tsv"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text("filepath\ttitle\nx.png\ta caption\n")
    digests = []
    for path in (first, second, first):
        config = expand(make_spec({"source": {"kind": "csv", "urls": str(path)}}))[0].config
        [dataset] = tracking_datasets.training_datasets(config, 64)
        assert dataset.name == f"{path.parent.name}/train.tsv" and dataset.source_type == "local"
        assert json.loads(dataset.source)["uri"] == str(path)
        digests.append(dataset.digest)
    assert digests[0] != digests[1] and digests[0] == digests[2]
    first.write_text("filepath\ttitle\nx.png\tanother caption, longer\n")  # changed in place: a new digest
    config = expand(make_spec({"source": {"kind": "csv", "urls": str(first)}}))[0].config
    assert tracking_datasets.training_datasets(config, 64)[0].digest != digests[0]
    missing = expand(make_spec({"source": {"kind": "webdataset", "urls": "/nowhere/{0..3}.tar"}}))[0].config
    [absent] = tracking_datasets.training_datasets(missing, 64)
    assert json.loads(absent.profile)["files"] == "not found where the run was created"


def running_run(client: MlflowClient) -> str:
    """A RUNNING run to sample system metrics into."""
    run_id = client.create_run(tracking.experiment_id(client, "sm")).info.run_id
    tracking.set_status(client, run_id, tracking.RUNNING)
    return run_id


def wait_for_samples(monitor: system_metrics.NodeMonitor | None, count: int, timeout_s: float = 30) -> None:
    assert monitor is not None
    deadline = time.monotonic() + timeout_s
    while monitor.samples < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_system_metrics_are_sampled_into_the_run_and_named_per_node(store, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, client = store
    run_id = running_run(client)
    options = tracking_ui.JobOptions(system_metrics_interval_s=0.2)
    with system_metrics.node_metrics(uri, run_id, options) as monitor:
        wait_for_samples(monitor, 2)
    assert len(client.get_metric_history(run_id, "system/cpu_utilization_percentage")) >= 2
    assert "system/system_memory_usage_megabytes" in client.get_run(run_id).data.metrics

    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    with system_metrics.node_metrics(uri, run_id, tracking_ui.JobOptions(system_metrics_interval_s=60)):
        pass  # shorter than one interval: still one sample, under the node's name
    assert "system/node1/cpu_utilization_percentage" in client.get_run(run_id).data.metrics
    monkeypatch.setenv("LOCAL_RANK", "1")  # not the node's first process: nothing sampled
    with system_metrics.node_metrics(uri, run_id, options) as monitor:
        assert monitor is None
    with system_metrics.node_metrics(uri, run_id, tracking_ui.JobOptions(system_metrics=False)) as monitor:
        assert monitor is None


def test_a_run_ends_without_waiting_for_a_sample_stuck_on_a_locked_store(store) -> None:
    """Another process holds the SQLite file's EXCLUSIVE lock while a sample is written: the write waits
    (MLflow's busy timeout, then retries for WRITE_GIVE_UP_S), but the end of the run waits at most
    FINISH_WAIT_S for it. Before, the monitor was joined without a limit (61 s seen under a server outage)."""
    uri, client = store
    run_id = running_run(client)
    options = tracking_ui.JobOptions(system_metrics_interval_s=0.2)
    holder = None
    try:
        with system_metrics.node_metrics(uri, run_id, options) as monitor:
            wait_for_samples(monitor, 1)
            holder = hold_exclusive_lock(tracking.sqlite_path(uri), seconds=system_metrics.WRITE_GIVE_UP_S)
            time.sleep(1.0)  # the next sample's write is waiting on the lock by now
            thread = monitor._process
            stopping = time.monotonic()
        waited = time.monotonic() - stopping
        stuck = thread is not None and thread.is_alive()
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    assert stuck, "the sampling thread had ended: no write was waiting on the lock"
    assert waited < system_metrics.FINISH_WAIT_S + 2, f"the end of the run waited {waited:.1f}s for the monitor"


def test_cost_counts_the_real_model_and_grows_with_the_terms_and_the_batch() -> None:
    spec = make_spec()
    oner, itc = (run.config for run in expand(spec))
    counted = cost.count(oner)
    with torch.device("meta"):
        model = OneTower(tower_config(oner.model.preset, vocab_size=oner.data.vocab_size))
    assert counted.params_total == sum(p.numel() for p in model.parameters()) + 1  # + the temperature
    assert counted.params_trainable == counted.params_total
    assert cost.count(itc).flops_per_step < counted.flops_per_step  # oner adds XMC, CIC, CMC and masked terms
    doubled = oner.model_copy(update={"train": oner.train.model_copy(update={"batch_size": 16})})
    assert 1.9 < cost.count(doubled).flops_per_step / counted.flops_per_step < 2.2  # ~linear, contrastive logits aside
    assert set(counted.as_params()) == {"cost.params_total", "cost.params_trainable", "cost.train_flops_per_step"}


def test_weights_export_holds_the_online_tower_only_and_loads_back(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_model

    tower = tower_config("tiny", vocab_size=40, width=32, depth=1, num_heads=2)
    trained = OneTower(tower)
    state = {
        "step": 5,
        "model": trained.state_dict(),
        "tower": tower.__dict__ | {},
        "optimizer": {},
        "rng": {"numpy": __import__("numpy").random.get_state()},
    }
    from dataclasses import asdict

    state["tower"] = asdict(tower)
    torch.save(state, tmp_path / "last.pt")
    path = weights.export(tmp_path / "last.pt", tmp_path / "weights")
    assert path.name == "model.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    fresh = OneTower(TowerConfig(**json.loads(metadata["tower"])))
    load_model(fresh, str(path))
    assert all(torch.equal(value, fresh.state_dict()[key]) for key, value in trained.state_dict().items())
    assert metadata["step"] == "5"
