"""What a job's own log says: the tests time their signals from it, not from the tracking store."""

from __future__ import annotations

import re
from pathlib import Path

TRAIN_BAR = re.compile(rb"train:\s+\d+%\|[^|\r\n]*\|\s*(\d+)/\d+")


def job_log(runs_dir: Path, job_id: str, rank: int = 0) -> Path:
    """The stderr file submitit gives a task of the job (every start of a requeued job appends to it)."""
    return runs_dir / "submitit" / job_id / f"{job_id}_{rank}_log.err"


def trained_step(log: Path) -> int:
    """The step rank 0's progress bar last showed in the job's stderr file: 0 before the bar appears.

    The signals are timed from this file, not from the store: a store read waits on the jobs' own
    writes and on CPU the training takes (a poll of SQLite once saw step 10 five seconds late, when the
    job alone on the cluster had finished all 100 steps)."""
    try:
        with log.open("rb") as file:
            file.seek(max(0, log.stat().st_size - 4096))
            steps = TRAIN_BAR.findall(file.read())
    except FileNotFoundError:
        return 0
    return int(steps[-1]) if steps else 0
