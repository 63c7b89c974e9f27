"""Where each run of a spec stands: MLflow status, SLURM job and state, step, last metrics, requeues.

    python -m oner_lab.status SPEC [--profile NAME] [--set dotted.key=value ...] [--only variant=oner]

Reads only: MLflow (the runs of the spec's current plan, by config hash) and, for runs that have
a SLURM job, `squeue` (a job leaves it MinJobAge seconds after it ended; then its state shows
as `-`). The note column shows a run's error (`oner.error`) or its last preemption event.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from mlflow import MlflowClient
from rich.table import Table

from oner_lab import table, tracking, tracking_ui
from oner_lab.launch import scheduler
from oner_lab.spec import PlannedRun, SpecError, expand, load_spec, parse_only
from oner_lab.spec.cli import add_spec_arguments

LOSS = "train/loss"
SHOWN_EVAL = ("/top1", "/tr_r1", "/ir_r1")
"""The eval metrics shown next to the loss: zero-shot top-1 and R@1 both ways (the table's headline columns)."""


@dataclass(frozen=True)
class RunStatus:
    """One row of `status`."""

    run_name: str
    status: str
    slurm_job: str | None
    slurm_state: str | None
    step: int | None
    steps: int
    requeues: int | None
    metrics: dict[str, float]
    note: str


def last_step(client: MlflowClient, run_id: str) -> int | None:
    history = tracking.retry_locked(lambda: client.get_metric_history(run_id, LOSS))
    return max((metric.step for metric in history), default=None)


def collect(client: MlflowClient, experiment: str, planned: Sequence[PlannedRun]) -> list[RunStatus]:
    """The status of every planned run (`not started` when MLflow has no run for its config hash)."""
    tracked = tracking.runs_by_hash(client, experiment)
    runs = tracking.fetch_runs(client, experiment, [found.run_id for found in tracked.values()])
    job_ids = [found.slurm_job for found in tracked.values() if found.slurm_job]
    try:
        states = scheduler.queue_states(job_ids)
    except scheduler.SchedulerError:
        states = {}
    rows = []
    for plan in planned:
        found = tracked.get(plan.config_hash)
        run = runs.get(found.run_id) if found else None
        if found is None or run is None:
            rows.append(
                RunStatus(plan.run_name, "not started", None, None, None, plan.config.train.steps, None, {}, "")
            )
            continue
        tags = run.data.tags
        error = tags.get(tracking.TAG_ERROR, "").strip()
        shown = {key: value for key, value in run.data.metrics.items() if key == LOSS or key.endswith(SHOWN_EVAL)}
        requeues = tags.get(tracking.TAG_SLURM_REQUEUES)
        rows.append(
            RunStatus(
                run_name=plan.run_name,
                status=run.info.status,
                slurm_job=found.slurm_job,
                slurm_state=states.get(found.slurm_job) if found.slurm_job else None,
                step=last_step(client, found.run_id),
                steps=plan.config.train.steps,
                requeues=None if requeues is None else int(requeues),
                metrics=dict(sorted(shown.items())),
                note=error.splitlines()[0] if error else tags.get(tracking.TAG_SLURM_EVENT, ""),
            )
        )
    return rows


def render(rows: Sequence[RunStatus]) -> Table:
    view = Table(title="Status", title_justify="left")
    for header in ("run", "status", "SLURM job", "SLURM state", "step", "requeues", "last metrics", "note"):
        view.add_column(header)
    for row in rows:
        view.add_row(
            row.run_name,
            row.status,
            row.slurm_job or "-",
            row.slurm_state or "-",
            "-" if row.step is None else f"{row.step}/{row.steps}",
            "-" if row.requeues is None else str(row.requeues),
            ", ".join(f"{key.removeprefix('eval/')} {value:.4g}" for key, value in row.metrics.items()) or "-",
            row.note,
        )
    return view


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oner_lab.status", description="Show where each run of a spec stands."
    )
    add_spec_arguments(parser)
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, profile=args.profile, overrides=args.overrides)
        planned = expand(spec, parse_only(args.only) if args.only else None)
        uri = tracking.resolve_uri(spec.tracking.uri)
        if not tracking.store_exists(uri):
            raise tracking.TrackingError(f"tracking.uri {uri!r}: no store yet (nothing was run with this spec)")
        rows = collect(tracking.connect(uri), spec.experiment_name, planned)
    except (SpecError, tracking.TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    console = table.make_console()
    console.print(render(rows))
    link = tracking_ui.experiment_link(uri, spec.experiment_name)
    if link is not None:
        console.print(f"MLflow UI: {link}", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
