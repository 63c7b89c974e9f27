"""Processes held with SIGSTOP and let run in short slices: how the tests make a fast machine behave
like a loaded one, so a signal or a wall-time window lands mid-run however fast the steps are."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def signal_all(pids: list[int], signum: signal.Signals) -> bool:
    """Sends `signum` to every process; False once one has ended."""
    try:
        for pid in pids:
            os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def run_a_slice(pids: list[int], seconds: float) -> bool:
    """Lets the stopped processes run `seconds`, then stops them again; False once one has ended."""
    if not signal_all(pids, signal.SIGCONT):
        return False
    time.sleep(seconds)
    return signal_all(pids, signal.SIGSTOP)


def job_processes(job: str) -> list[int]:
    """A SLURM job's training processes: submitit's entry point with the job's id in their environment
    (SLURM_JOB_ID, or for an array task `A_i` SLURM_ARRAY_JOB_ID=A and SLURM_ARRAY_TASK_ID=i). The test
    nodes are network namespaces, so their processes are visible from here."""
    array, _, task = job.partition("_")
    wanted = (
        {f"SLURM_ARRAY_JOB_ID={array}".encode(), f"SLURM_ARRAY_TASK_ID={task}".encode()}
        if task
        else {f"SLURM_JOB_ID={job}".encode()}
    )
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if b"submitit.core._submit" in (entry / "cmdline").read_bytes() and wanted <= set(
                (entry / "environ").read_bytes().split(b"\0")
            ):
                found.append(int(entry.name))
        except (OSError, ValueError):  # not a process, ended meanwhile, or not ours to read
            continue
    return found


def locks_held(pids: list[int], paths: list[Path]) -> list[Path]:
    """Which of `paths` the processes hold a lock on now (fcntl, flock or OFD; /proc/locks): a process
    stopped inside a SQLite transaction or a cache's file lock would block every other process that
    needs the same file, for as long as it is held."""
    inodes = {}
    for path in paths:
        try:
            inodes[os.stat(path).st_ino] = path
        except FileNotFoundError:
            continue
    holders = {str(pid) for pid in pids}
    found = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "->":  # a waiter, listed under the lock it waits for
            fields = fields[:1] + fields[2:]
        inode = int(fields[5].split(":")[2])
        if fields[4] in holders and inode in inodes:
            found.append(inodes[inode])
    return found


def stop_outside_locks(pids: list[int], paths: list[Path], timeout_s: float = 60) -> bool:
    """Stops the processes (SIGSTOP) at a moment none of them holds a lock on `paths`, letting them
    run 20 ms at a time until then; False if one ended first."""
    if not signal_all(pids, signal.SIGSTOP):
        return False
    deadline = time.monotonic() + timeout_s
    while locks_held(pids, paths):
        assert time.monotonic() < deadline, f"processes {pids} held a lock on {paths} for {timeout_s}s"
        if not run_a_slice(pids, 0.02):
            return False
    return True
