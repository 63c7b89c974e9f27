"""Local runs sharing one machine (`local.max_parallel` > 1) split its CPUs between the runs that train
at the moment, and take them back when the others end.

Why: on a small model, two runs of one thread each train about 1.3x faster in total than one run of
two threads (benchmarks/ablation_time.py), but a run left alone with one thread - the last of an
invocation, or the only run of an `--only` - would train at half speed. Which runs train is read
from the slot locks the jobs hold (`TrainingJob`), between steps, so `torch.set_num_threads` never
changes under a running op.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Sequence
from pathlib import Path

from oner_lab.contract import RunControl


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as SLURM and taskset set it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def busy_slots(slots: Sequence[Path], mine: Path) -> int:
    """How many of `slots` are held now, this run's (`mine`) included. A free slot is locked and
    released at once: a job waiting for it finds it taken for microseconds and tries again."""
    busy = 1
    for path in slots:
        if path == mine:
            continue
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy += 1
                continue
            fcntl.flock(handle, fcntl.LOCK_UN)
    return busy


SHARE_EVERY_S = 1.0
"""How often the slot locks are probed: a run's share changes when another starts or ends, not per step."""


class CpuShare:
    """A `RunControl` that, when the training loop asks whether to stop (once a step) and `every_s` has
    passed, sets torch's intra-op threads to this run's share of the CPUs: `cpus // runs training now`,
    at least one."""

    def __init__(
        self,
        inner: RunControl,
        slots: Sequence[Path],
        mine: Path,
        cpus: int | None = None,
        every_s: float = SHARE_EVERY_S,
    ) -> None:
        self.inner = inner
        self.slots = list(slots)
        self.mine = mine
        self.cpus = cpus or usable_cpus()
        self.every_s = every_s
        self.shared_at = time.monotonic()
        self.share()

    def share(self) -> int:
        import torch  # the job imports torch only once it trains

        threads = max(1, self.cpus // busy_slots(self.slots, self.mine))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads

    def should_stop(self) -> bool:
        if time.monotonic() - self.shared_at >= self.every_s:
            self.shared_at = time.monotonic()
            self.share()
        return self.inner.should_stop()


__all__ = ["SHARE_EVERY_S", "CpuShare", "busy_slots", "usable_cpus"]
