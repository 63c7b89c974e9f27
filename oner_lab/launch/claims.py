"""Which invocation owns an unfinished run, and what a rerun does with runs whose owner is gone.

A run being trained by a live invocation (or by its job, after a `--no-wait`) is left alone by a
second invocation of the same spec, which names the owner. A run left RUNNING or SCHEDULED by a
process that died (SIGKILL, a node lost, a store that failed until the job gave up) is ended here,
with how it ended when its job left that in the run directory, before it is resumed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mlflow import MlflowClient

from oner_lab import tracking
from oner_lab.launch.job import PENDING_END
from oner_lab.launch.owner import Owner, is_alive


def live_owner(found: tracking.TrackedRun) -> Owner | None:
    """The live process that trains `found` or waits for it (its job first), None when both are gone."""
    for tag in (found.worker, found.owner):
        candidate = Owner.from_tag(tag)
        if candidate is not None and is_alive(candidate, found.heartbeat):
            return candidate
    return None


def reconcile(
    client: MlflowClient,
    existing: dict[str, tracking.TrackedRun],
    live_slurm: frozenset[str],
    run_dir_of: Callable[[tracking.TrackedRun], Path],
) -> tuple[dict[str, tracking.TrackedRun], list[str]]:
    """Ends every RUNNING / SCHEDULED run that no live process owns (and no live SLURM job holds):
    with the outcome its job left in `<run_dir>/.pending_end.json`, else KILLED naming the lost owner.
    Returns the runs with their new statuses and one line per run ended."""
    updated = dict(existing)
    notes = []
    for key, found in existing.items():
        if found.status not in (tracking.RUNNING, tracking.SCHEDULED) or found.slurm_job in live_slurm:
            continue
        if live_owner(found) is not None:
            continue
        status, error = _pending(run_dir_of(found), found.run_id)
        if status is None:
            gone = Owner.from_tag(found.worker) or Owner.from_tag(found.owner)
            who = f"its job ({gone})" if gone else "its job"
            status, error = (
                tracking.KILLED,
                f"{who} ended without recording how the run ended (killed, or the tracking store failed); rerun to resume",
            )
        tracking.end_run(client, found.run_id, status, error)
        updated[key] = replace(found, status=status)
        notes.append(
            f"{found.run_name} was {found.status} with no live owner: marked {status}"
            + (f" ({error.split('. ')[0]})" if error else "")
        )
    return updated, notes


def _pending(run_dir: Path, run_id: str) -> tuple[str | None, str | None]:
    """The outcome a job left when the store could not take it (only for this MLflow run); consumed."""
    path = run_dir / PENDING_END
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    if data.get("run_id") != run_id:
        return None, None
    path.unlink(missing_ok=True)
    return str(data["status"]), data.get("error")
