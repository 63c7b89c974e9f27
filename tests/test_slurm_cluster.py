"""The real SLURM cluster does what the launcher relies on: job arrays, multi-task DDP, requeue.

These talk to slurmctld/slurmd on the `a100` partition (bash slurm/local-cluster.sh start);
job code is shipped by value with cloudpickle, so the node needs no access to this module.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 60
POLL_S = 0.5

# Ship this module's job functions by value: the node imports submitit and torch, not the tests.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x: int) -> int:
    """Array task: a result that depends on its input."""
    return x * x


def all_reduce_ranks() -> tuple[int, int, float]:
    """One DDP rank: joins the gloo group from SLURM's environment and sums rank+1 over ranks."""
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()
    dist.init_process_group("gloo")
    try:
        value = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(value)
    finally:
        dist.destroy_process_group()
    return env.rank, env.world_size, value.item()


class SlowCounter(submitit.helpers.Checkpointable):
    """Counts to `target`, one step per `tick_s`; its state lives on `self`, which submitit's
    default `checkpoint` pickles on USR2, so a requeued run resumes where it stopped."""

    def __init__(self, target: int, tick_s: float, progress_file: Path) -> None:
        self.target = target
        self.tick_s = tick_s
        self.progress_file = progress_file
        self.count = 0
        self.resumed_from: list[int] = []

    def __call__(self) -> dict[str, object]:
        import os

        self.resumed_from.append(self.count)
        while self.count < self.target:
            time.sleep(self.tick_s)
            self.count += 1
            self.progress_file.write_text(str(self.count))
        return {
            "count": self.count,
            "resumed_from": self.resumed_from,
            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        }


def _slurm_executor(folder: Path, partition: str, **parameters: object) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, slurm_max_num_timeout=2)
    assert executor.cluster == "slurm", f"submitit picked {executor.cluster!r}, not the SLURM backend"
    executor.update_parameters(slurm_partition=partition, timeout_min=5, cpus_per_task=1, mem_gb=1)
    executor.update_parameters(**parameters)
    return executor


def _squeue_state(job_id: str) -> str:
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return done.stdout.strip() or f"gone from squeue ({done.stderr.strip()})"


def _wait_for(jobs: list[submitit.Job], timeout_s: float = JOB_TIMEOUT_S) -> None:
    """Waits for every job to finish; past the deadline cancels them and fails with their logs."""
    deadline = time.monotonic() + timeout_s
    while not all(job.done() for job in jobs):
        if time.monotonic() > deadline:
            _fail_with_logs(jobs, f"jobs not done after {timeout_s}s")
        time.sleep(POLL_S)


def _fail_with_logs(jobs: list[submitit.Job], why: str) -> None:
    report = []
    for job in jobs:
        report.append(f"--- job {job.job_id}: {_squeue_state(job.job_id)}\n{job.stderr() or '(no stderr)'}")
        job.cancel(check=False)
    pytest.fail(f"{why}\n" + "\n".join(report))


def test_job_array_returns_each_task_result(tmp_path: Path, slurm_partition: str) -> None:
    executor = _slurm_executor(tmp_path, slurm_partition, slurm_array_parallelism=3)
    inputs = [2, 3, 4]

    jobs = executor.map_array(square, inputs)
    _wait_for(jobs)

    assert len({job.job_id.split("_")[0] for job in jobs}) == 1, "tasks were not one array"
    assert [job.job_id.split("_")[1] for job in jobs] == ["0", "1", "2"]
    assert [job.result() for job in jobs] == [4, 9, 16]


def test_two_task_job_all_reduces_over_gloo(tmp_path: Path, slurm_partition: str) -> None:
    executor = _slurm_executor(tmp_path, slurm_partition, nodes=1, tasks_per_node=2)

    job = executor.submit(all_reduce_ranks)
    _wait_for([job])

    assert sorted(job.results()) == [(0, 2, 3.0), (1, 2, 3.0)]


def test_checkpointable_job_requeued_on_usr2_resumes_its_state(tmp_path: Path, slurm_partition: str) -> None:
    executor = _slurm_executor(tmp_path, slurm_partition)
    progress = tmp_path / "progress"
    target = 16

    job = executor.submit(SlowCounter(target=target, tick_s=0.5, progress_file=progress))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (progress.exists() and int(progress.read_text() or 0) >= 3):
        if time.monotonic() > deadline or job.done():
            _fail_with_logs([job], "job made no progress before the signal")
        time.sleep(POLL_S)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    _wait_for([job])

    result = job.result()
    assert result["count"] == target
    assert result["restart_count"] == 1, f"SLURM did not requeue the job: {result}"
    first_start, resumed_at = result["resumed_from"]
    assert first_start == 0
    assert 3 <= resumed_at < target, f"second run did not resume from the checkpoint: {result}"
