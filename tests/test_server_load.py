"""Sixteen SLURM jobs at once over two nodes, every one logging every metric to the MLflow server
on PostgreSQL (bash slurm/local-tracking.sh start; ONER_TEST_TRACKING_URI).

The smoke grid over eight seeds is one job array of 16 tasks, all running together (a cluster profile
like `local` with 16 array tasks at once); jobs write each metric as soon as it is logged
(ONER_MLFLOW_FLUSH_S=0), the heaviest load the logger puts on a server. One task is cancelled mid-run,
timed from its own log (a progress line per step): the server's view of its steps lags under this load.
(Batches of one second instead of single writes leave the wall time at about 100 s on this 2-core
machine: the 16 jobs' imports and steps fill both cores, not the waits on the server.)
Then the CLI's lookups run against the server: the same command again skips the 15 finished runs and
resumes the cancelled one into its own MLflow run.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from job_logs import job_log, trained_step
from mlflow import MlflowClient
from test_analysis import ABLATION_LABELS, execute
from test_slurm_launch import SMOKE, runs_in, squeue_all

from oner_lab import status, table
from oner_lab.launch import scheduler
from oner_lab.run import main
from oner_lab.train import PROGRESS_ENV

pytestmark = [pytest.mark.slurm, pytest.mark.server, pytest.mark.slow]

JOBS, STEPS, CANCEL_AFTER = 16, 30, 5
TIMEOUT_S = 300
POLL_S = 0.5


def wait_until(condition, timeout_s: float, what: str) -> None:  # noqa: ANN001 - a predicate
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; queue:\n{squeue_all()}")
        time.sleep(POLL_S)


def test_sixteen_jobs_over_two_nodes_lose_no_metric_on_the_server(
    tmp_path: Path,
    tracking_server,
    two_slurm_nodes: list[str],
    kernel: str,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
    capsys: pytest.CaptureFixture[str],
) -> None:
    profile = (SMOKE.parent.parent / "slurm" / "local.yaml").read_text()
    (tmp_path / "wide.yaml").write_text(profile.replace("max_array_parallel: 8", f"max_array_parallel: {JOBS}"))
    experiment = f"load-{uuid.uuid4().hex[:8]}"
    arguments = [
        str(SMOKE),
        "--set",
        "launcher.backend=slurm",
        "--set",
        f"launcher.slurm.cluster={tmp_path / 'wide.yaml'}",
        "--set",
        f"tracking.uri={tracking_server.uri}",
        "--set",
        f"tracking.experiment={experiment}",
        "--set",
        f"launcher.runs_dir={tmp_path / 'runs'}",
        "--set",
        f"base.data.cache_dir={tmp_path / 'data'}",
        "--set",
        f"grid.seed={list(range(JOBS // 2))}",
        "--set",
        f"base.train.steps={STEPS}",
        "--set",
        f"base.train.checkpoint_every={STEPS}",
    ]
    monkeypatch.setenv("ONER_MLFLOW_FLUSH_S", "0")
    monkeypatch.setenv(PROGRESS_ENV, "0")  # a progress line per step in each job's log: what `trained_step` reads
    client = MlflowClient(tracking_uri=tracking_server.uri)
    started = time.monotonic()
    assert main([*arguments, "--no-wait"]) == 0
    runs = runs_in(client, experiment)
    assert len(runs) == JOBS
    jobs = {run.info.run_id: client.get_run(run.info.run_id).data.tags["oner.slurm.job_id"] for run in runs}
    victim = runs[3].info.run_id

    wait_until(
        lambda: trained_step(job_log(tmp_path / "runs", jobs[victim])) >= CANCEL_AFTER,
        TIMEOUT_S,
        "the job to cancel to train",
    )
    subprocess.run(["scancel", jobs[victim]], check=True)

    def all_ended() -> bool:
        states = scheduler.queue_states(list(jobs.values()))
        return all(states.get(job) not in scheduler.ALIVE_STATES for job in jobs.values()) and all(
            client.get_run(run_id).info.status in ("FINISHED", "FAILED", "KILLED") for run_id in jobs
        )

    wait_until(all_ended, TIMEOUT_S, "the 16 jobs to end")
    load_s = time.monotonic() - started
    runs = {run.info.run_id: run for run in runs_in(client, experiment)}
    assert {run_id: run.info.status for run_id, run in runs.items() if run_id != victim} == {
        run_id: "FINISHED" for run_id in runs if run_id != victim
    }, {r.info.run_name: r.data.tags.get("oner.error") for r in runs.values()}
    assert runs[victim].info.status == "KILLED"
    assert {run.data.tags["oner.slurm.nodes"] for run in runs.values()} >= set(two_slurm_nodes[:2]), (
        "not spread over both nodes"
    )

    written = found = 0
    spans = []
    for run_id, run in runs.items():
        last = STEPS if run_id != victim else max(step.step for step in client.get_metric_history(run_id, "train/loss"))
        train_keys = [key for key in run.data.metrics if key.startswith("train/")]
        assert "train/loss" in train_keys
        for key in train_keys:
            steps = [metric.step for metric in client.get_metric_history(run_id, key)]
            written += last
            found += len(steps)
            assert steps == list(range(1, last + 1)), f"{run.info.run_name} {key}: {steps}"
        if run_id != victim:  # it stopped early
            stamps = [metric.timestamp for metric in client.get_metric_history(run_id, "train/loss")]
            spans.append((min(stamps), max(stamps)))
    assert max(start for start, _ in spans) < min(end for _, end in spans), (
        "the 15 runs did not all log at the same time"
    )
    with capsys.disabled():
        print(
            f"\nload: {JOBS} jobs on {sorted(two_slurm_nodes[:2])}, {found} train/ metric values found of {written} "
            f"logged, {load_s:.0f}s from submission to the last job's end"
        )

    # the CLI's lookups against the server: 15 skipped as FINISHED, the cancelled run resumed in place
    assert main(arguments) == 0
    after = {run.info.run_id: run for run in runs_in(client, experiment)}
    assert sorted(after) == sorted(runs), "a rerun opened new MLflow runs"
    assert {run.info.status for run in after.values()} == {"FINISHED"}
    assert after[victim].data.tags["oner.slurm.job_id"] != jobs[victim], "the cancelled run was not resubmitted"
    for key in [key for key in after[victim].data.metrics if key.startswith("train/")]:
        steps = [metric.step for metric in client.get_metric_history(victim, key)]
        assert steps == list(range(1, STEPS + 1)), f"resumed {key}: {steps}"
    for run_id in runs:
        if run_id != victim:
            assert after[run_id].data.tags["oner.slurm.job_id"] == jobs[run_id], "a finished run was trained again"

    # status and table read the same server
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "300")
    assert status.main(arguments) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "/seed" in line]
    assert len(rows) == JOBS and all("FINISHED" in row for row in rows), rows
    assert table.main(arguments) == 0
    shown = capsys.readouterr().out
    for variant in ("itc", "oner"):
        assert any(
            line.split("│")[1:3] == [f" {variant:7s} ", f" {JOBS // 2} "] for line in shown.splitlines() if "│" in line
        ), shown

    # the ablation notebook reads the same server in a real Jupyter kernel and logs its outputs there
    out = tmp_path / "notebook"
    executed = execute("ablation", tracking_server.uri, experiment, out, kernel, tmp_path)
    assert f"{JOBS} runs" in "".join(
        output.get("text", "")
        for cell in executed.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    ), "the notebook did not find the 16 runs on the server"
    shown = pd.read_csv(out / "ablation.csv", index_col=0)
    assert sorted(shown.index) == ["itc", "oner"]
    assert (shown["n"] == JOBS // 2).all(), shown
    assert np.isfinite(shown[ABLATION_LABELS].to_numpy(dtype=float)).all()
    logged = client.search_runs([client.get_experiment_by_name(f"{experiment}/analysis").experiment_id])
    assert [run.info.run_name for run in logged] == ["analysis/ablation"]
    artifacts = {item.path for item in client.list_artifacts(logged[0].info.run_id)}
    assert {"ablation.csv", "ablation_metrics.png"} <= {Path(path).name for path in artifacts} | {
        Path(item.path).name for path in artifacts for item in client.list_artifacts(logged[0].info.run_id, path)
    }, artifacts
