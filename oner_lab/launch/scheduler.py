"""The SLURM commands the launcher asks (sinfo, squeue, scontrol): one small function each.

Accounting (`sacct`) is often unavailable (the test cluster has none), so nothing here needs
it: the queue is read with `squeue`, which lists a job while it is pending or running and for
`MinJobAge` seconds after it ended.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

COMMAND_TIMEOUT_S = 30

ALIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "PREEMPTED",
        "RESV_DEL_HOLD",
    }
)
"""States of a job that may still run (or run again). PREEMPTED is here because a requeuing site shows it
on the way back to PENDING; where preemption cancels, the job leaves the queue after MinJobAge."""

_GPU_GRES = re.compile(r"(?:^|,)gpu(?::[^:,()]+)?:(\d+)")
_RESTARTS = re.compile(r"\bRestarts=(\d+)\b")


class SchedulerError(RuntimeError):
    """A SLURM command is missing or failed; the message names the command and what it said."""


def _run(arguments: list[str]) -> str:
    try:
        done = subprocess.run(arguments, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise SchedulerError(f"`{arguments[0]}` not found on PATH: no SLURM client on this machine") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"`{' '.join(arguments)}` did not answer within {COMMAND_TIMEOUT_S}s") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip() or "no output"
        raise SchedulerError(f"`{' '.join(arguments)}` exited {done.returncode}: {said}")
    return done.stdout


@dataclass(frozen=True)
class Partition:
    """What `sinfo` says about one partition, as far as a submission must fit it."""

    name: str
    nodes: int
    gpus_per_node: int
    """The most GPUs (GRES `gpu`) on any of its nodes; 0 when its nodes have none."""
    max_time_min: int | None
    """Its time limit; None when unlimited."""


def minutes(limit: str) -> int | None:
    """A SLURM time limit (`30`, `2:00:00`, `1-00:00:00`, `infinite`) in whole minutes (None: unlimited)."""
    if limit.strip().lower() in ("infinite", "unlimited", "n/a", "none"):
        return None
    days, _, clock = limit.strip().rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    if days:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        hours, mins, secs = parts
    elif len(parts) == 3:
        hours, mins, secs = parts
    elif len(parts) == 2:  # MM:SS
        hours, (mins, secs) = 0, parts
    else:
        hours, mins, secs = 0, parts[0], 0
    return (int(days or 0) * 24 + hours) * 60 + mins + (1 if secs else 0)


def gpus_in(gres: str) -> int:
    """GPUs in one `sinfo %G` field (`gpu:a100:8(S:0-1)`, `gpu:4,shard:8`, `(null)`)."""
    return max((int(count) for count in _GPU_GRES.findall(gres)), default=0)


def partitions() -> dict[str, Partition]:
    """Every partition this cluster has, by name (one `sinfo` call)."""
    found: dict[str, Partition] = {}
    for line in _run(["sinfo", "-h", "-o", "%R|%D|%G|%l"]).splitlines():
        if not line.strip():
            continue
        name, nodes, gres, limit = line.split("|")
        seen = found.get(name)
        found[name] = Partition(
            name=name,
            nodes=int(nodes) + (seen.nodes if seen else 0),
            gpus_per_node=max(gpus_in(gres), seen.gpus_per_node if seen else 0),
            max_time_min=minutes(limit),
        )
    return found


def queue_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Job id (`123`, or `123_4` for an array task) -> SLURM state, for the jobs `squeue` still lists.

    A job missing from the answer has ended more than MinJobAge seconds ago (or never existed).
    """
    bases = sorted({job_id.split("_")[0] for job_id in job_ids})
    if not bases:
        return {}
    try:
        text = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(bases)])
    except SchedulerError as error:
        if "Invalid job id" in str(error):  # every one of them has left the queue
            return {}
        raise
    states = {}
    for line in text.splitlines():
        if "|" in line:
            job_id, state = line.strip().split("|", 1)
            states[job_id] = state
    return states


def requeue(job_id: str) -> None:
    """Puts a running job back in the queue (SLURM ends this incarnation; the job starts again later)."""
    _run(["scontrol", "requeue", job_id])


def restarts(job_id: str) -> int:
    """How many times SLURM has requeued the job so far; during `scontrol requeue` this already counts
    the requeue in progress, which is how a job told to stop learns that it will come back."""
    found = _RESTARTS.search(_run(["scontrol", "show", "job", "-o", job_id]))
    if found is None:
        raise SchedulerError(f"`scontrol show job {job_id}` has no Restarts= field")
    return int(found.group(1))
