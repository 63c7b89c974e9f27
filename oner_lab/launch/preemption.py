"""Preemption and time limits on SLURM: signals become a checkpoint at the next step, then a requeue.

SLURM tells a job to stop in two ways: USR2 `signal_lead_s` before the time limit (or as a
preemption notice), and SIGTERM when the job is requeued (`scontrol requeue`, preemption in
requeue mode) or cancelled, with `KillWait` seconds before SIGKILL. Either signal only sets a
flag here; the training loop polls `SignalStop.should_stop()` after each step, so the
checkpoint holds the state in memory at that step (not the last periodic one), and every DDP
rank stops at the same step. `decide` then says what the job does next.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from enum import Enum
from types import FrameType

NONE, USR2, TERM = 0, 1, 2
"""Stop requests, in the order the ranks' max-reduce keeps (SIGTERM outranks USR2: the kill follows it)."""
SIGNAL_NAMES = {USR2: "SIGUSR2", TERM: "SIGTERM"}


class SignalStop:
    """`RunControl` of a SLURM job: stop (after a checkpoint) once SIGUSR2 or SIGTERM has arrived on any rank."""

    def __init__(self) -> None:
        self.received = NONE
        self.agreed = NONE

    def install(self) -> None:
        """Replaces submitit's handlers (which requeue at once, mid-step) with this flag."""
        signal.signal(signal.SIGUSR2, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        request = USR2 if signum == signal.SIGUSR2 else TERM
        self.received = max(self.received, request)
        os.write(2, f"[oner] caught {SIGNAL_NAMES[request]}: checkpointing after the current step\n".encode())

    def should_stop(self) -> bool:
        """Called by every rank after every step: the ranks agree (one max all-reduce), so they stop together."""
        import torch.distributed as dist

        self.agreed = self.received
        if dist.is_initialized() and dist.get_world_size() > 1:
            import torch

            from oner_lab.distributed import collective_device

            flag = torch.tensor([self.received], device=collective_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.agreed = int(flag.item())
        return self.agreed != NONE

    @property
    def signal_name(self) -> str:
        return SIGNAL_NAMES.get(self.agreed, "no signal")


@dataclass(frozen=True)
class SlurmTask:
    """This process's place in its SLURM job, from the environment SLURM gives every task."""

    job_id: str
    """As submitit and squeue name it: `123`, or `<array job>_<task>` for an array task."""
    raw_job_id: str
    """SLURM_JOB_ID: what scontrol takes for this very job (an array task has its own)."""
    restarts: int
    """SLURM_RESTART_COUNT: times this job was requeued before this start."""
    rank: int
    world_size: int = 1
    """SLURM_NTASKS: the job's tasks, one DDP rank each, over all its nodes."""
    nodes: str = ""
    """SLURM_JOB_NODELIST, as SLURM writes it (`node[1-2]`): where this incarnation runs."""

    @classmethod
    def from_env(cls) -> SlurmTask:
        env = os.environ
        array = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        raw = env["SLURM_JOB_ID"]
        return cls(
            job_id=f"{array[0]}_{array[1]}" if all(array) else raw,
            raw_job_id=raw,
            restarts=int(env.get("SLURM_RESTART_COUNT", "0")),
            rank=int(env.get("SLURM_PROCID", "0")),
            world_size=int(env.get("SLURM_NTASKS", "1")),
            nodes=env.get("SLURM_JOB_NODELIST", ""),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Next(Enum):
    """What a job does once training stopped on a signal, after its checkpoint."""

    REQUEUE = "requeue"
    """USR2 within the budget: the job requeues itself and exits without a result."""
    REQUEUED_BY_SLURM = "requeued by SLURM"
    """SIGTERM of a requeue: SLURM brings the job back; exit without a result."""
    CANCELLED = "cancelled"
    """SIGTERM without a requeue (scancel, or the time limit reached): the run ends KILLED; rerunning
    the spec resumes it."""
    OVER_BUDGET = "over budget"
    """USR2 with no requeue left: the run ends FAILED, its checkpoint kept."""


def decide(request: int, restarts: int, max_requeues: int, requeued_by_slurm: bool) -> Next:
    """The same answer on every rank (all inputs are the same there), so they all exit alike."""
    if request == TERM:
        return Next.REQUEUED_BY_SLURM if requeued_by_slurm else Next.CANCELLED
    return Next.REQUEUE if restarts < max_requeues else Next.OVER_BUDGET


def over_budget_message(cause: str, max_requeues: int, step: int | None) -> str:
    """The reason a run ends FAILED when it has used up its requeues (tag oner.error, `status`)."""
    kept = f"its checkpoint at step {step} is kept" if step is not None else "its last checkpoint is kept"
    return (
        f"requeue budget exceeded: {cause}, and launcher.slurm.max_requeues is {max_requeues}; {kept}. "
        "Raise max_requeues or the time limit (launcher.slurm.time_min), then rerun the spec to resume"
    )
