"""Run a spec: load, plan, skip what already FINISHED, resume what did not, dispatch, wait, print the table.

    python -m oner_lab.run SPEC [--profile NAME] [--set dotted.key=value ...]
                                [--only variant=oner,seed=0] [--dry-run] [--no-wait] [--force]

Exit codes: 0 every selected run FINISHED (or was already, or is still queued on SLURM from an
earlier invocation); 1 some run failed or was stopped, or the scheduler refused the jobs;
2 bad input (spec, --set, --only, a config train.validate refuses, a tracking store that
cannot be opened, a backend that cannot launch here, a cluster profile that does not fit the
cluster), found before anything is logged or submitted; 3 the tracking store failed while runs
were going (deleted, read-only, full, locked, server unreachable) for longer than
`tracking.outage_window_s`: the runs stopped at a checkpoint, fix the store and rerun to resume;
130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import filelock
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from requests import RequestException
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from oner_lab import finetune, launch, table, tracking, tracking_ui, train
from oner_lab import study as studies
from oner_lab.launch import claims, interrupts, owner, recovery, scheduler
from oner_lab.spec import PlannedRun, Spec, SpecError, expand, load_spec, parse_only
from oner_lab.spec.cli import add_spec_arguments
from oner_lab.store_outage import EXIT_STORE_LOST, StoreUnavailable, cause_of

if TYPE_CHECKING:
    import submitit

RUN, RERUN, RESUME, SKIP, QUEUED = "run", "rerun", "resume", "skip", "queued"
"""QUEUED: the run's SLURM job from an earlier invocation is still pending or running; it is left alone."""
OWNED, RECOVER = "owned", "recover"
"""OWNED: another live invocation (or its job) is training the run; it is left alone.
RECOVER: the store has no run for the hash but its run directory holds a checkpoint: resumed from it."""
EPILOG = """exit codes: 0 every selected run FINISHED (or is left to the invocation training it); 1 a run
failed or was stopped; 2 bad input or a tracking store that cannot be opened, found before anything runs;
3 the tracking store failed during the runs for longer than tracking.outage_window_s (runs stopped at a
checkpoint; fix the store and rerun to resume); 130 interrupted (rerun to resume)."""


@dataclass(frozen=True)
class Step:
    """What this invocation does with one planned run, and the MLflow run it found for its hash."""

    planned: PlannedRun
    action: str
    existing: tracking.TrackedRun | None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m oner_lab.run",
        description="Run every grid point of an experiment spec, log to MLflow, print the ablation table.",
        epilog=EPILOG,
    )
    add_spec_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the plan (run / resume / skip) and exit")
    parser.add_argument("--no-wait", action="store_true", help="dispatch and exit; local runs go on in the background")
    parser.add_argument("--force", action="store_true", help="start every selected run afresh, FINISHED or not")
    return parser.parse_args(argv)


def decide(
    planned: Sequence[PlannedRun],
    existing: dict[str, tracking.TrackedRun],
    force: bool,
    live_jobs: frozenset[str] = frozenset(),
    owned: frozenset[str] = frozenset(),
    on_disk: frozenset[str] = frozenset(),
) -> list[Step]:
    """FINISHED -> skip (rerun with --force); still in `live_jobs` (its SLURM job pending or running) ->
    queued, left alone; its hash in `owned` (a live invocation trains it) -> owned, left alone; any other
    status -> resume into it; none -> recover when its hash is in `on_disk` (a checkpoint), else run."""
    steps = []
    for run in planned:
        found = existing.get(run.config_hash)
        if found is None:
            action = RECOVER if run.config_hash in on_disk and not force else RUN
        elif force:
            action = RERUN
        elif found.finished:
            action = SKIP
        elif found.slurm_job in live_jobs:
            action = QUEUED
        else:
            action = OWNED if run.config_hash in owned else RESUME
        steps.append(Step(run, action, found))
    return steps


def live_slurm_jobs(existing: dict[str, tracking.TrackedRun]) -> frozenset[str]:
    """The SLURM jobs of unfinished runs that are still pending or running (none when no scheduler answers)."""
    job_ids = [run.slurm_job for run in existing.values() if run.slurm_job and not run.finished]
    if not job_ids:
        return frozenset()
    try:
        states = scheduler.queue_states(job_ids)
    except scheduler.SchedulerError:
        return frozenset()
    return frozenset(job_id for job_id in job_ids if states.get(job_id) in scheduler.ALIVE_STATES)


def fresh_run_dir(spec: Spec, run: PlannedRun) -> Path:
    """`<runs_dir>/<hash>`, or `<hash>-<time>` when that holds an earlier run's files (never reused)."""
    run_dir = spec.run_dir(run.config_hash).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        run_dir = run_dir.with_name(f"{run.config_hash}-{time.strftime('%Y%m%d-%H%M%S')}")
    return run_dir


def plan_table(steps: Sequence[Step]) -> Table:
    view = Table(title="Plan", title_justify="left")
    starts_from = any(step.planned.parent is not None for step in steps)
    for header in ("run", "config hash", "action", "MLflow run", "status", *(["starts from"] if starts_from else [])):
        view.add_column(header)
    for step in steps:
        found = step.existing
        parent = step.planned.parent
        view.add_row(
            step.planned.run_name,
            step.planned.config_hash,
            step.action,
            found.run_id[:12] if found else "-",
            found.status if found else "-",
            *([parent.run_name if parent else "-"] if starts_from else []),
        )
    return view


def unstartable(steps: Sequence[Step], existing: dict[str, tracking.TrackedRun]) -> list[str]:
    """Fine-tuning runs to start whose parent neither FINISHED nor is planned here (`--only` left it out)."""
    planned = {step.planned.config_hash for step in steps}
    problems = []
    for step in steps:
        parent = step.planned.parent
        if step.action in (SKIP, QUEUED) or parent is None or parent.config_hash in planned:
            continue
        found = existing.get(parent.config_hash)
        if found is None or not found.finished:
            problems.append(
                f"run {step.planned.run_name} starts from {parent.run_name} (train.init_from), which has not FINISHED "
                f"({found.status if found else 'never run'}); run it first (--only variant={parent.variant}) or leave "
                "out --only to run both in order"
            )
    return problems


def check_world_size(planned: Sequence[PlannedRun], world_size: int) -> None:
    """Every run's global batch must split evenly over the job's DDP ranks (nodes x tasks per node)."""
    for run in planned:
        if run.config.train.batch_size % world_size:
            raise launch.LaunchError(
                f"run {run.run_name}: train.batch_size {run.config.train.batch_size} does not split over the "
                f"{world_size} DDP ranks of launcher.slurm (nodes x tasks per node); allowed: a multiple of {world_size}"
            )


def describe_slurm(resources: launch.SlurmResources) -> str:
    """One line saying what each run's job asks of the cluster."""
    profile = resources.profile
    gpus = f", {resources.gpus_per_node} GPUs" if resources.gpus_per_node else ", no GPU"
    return (
        f"SLURM ({resources.profile_path}): partition {profile.partition}, {resources.nodes} node(s) x "
        f"{resources.tasks_per_node} task(s){gpus} per node, {resources.time_min} min, USR2 {profile.signal_lead_s}s "
        f"before the limit, at most {profile.max_array_parallel} runs at once, {resources.max_requeues} requeues per run"
    )


def sweep_problem(spec: Spec, planned: PlannedRun, args: argparse.Namespace) -> str | None:
    """Why the spec's study cannot start (flags, metric, pruner, storage), found before anything is written."""
    if args.force or args.no_wait:
        return f"{spec.source_file}: --force and --no-wait do not apply to a sweep (rerunning continues the study)"
    try:
        studies.check_sweep_run(spec, planned.config)
    except SpecError as error:
        return str(error)
    return None


def run_sweep(spec: Spec, planned: PlannedRun, executor: submitit.Executor | None, uri: str, console: Console) -> int:
    """Runs the spec's study (launch/sweep.py; `executor` None: --dry-run) and prints its table."""
    code = launch.run_study(spec, planned, executor, uri, console)
    if code in (0, 1) and executor is not None:
        table.print_sweep_table(spec, console)
    return code


def report_data(spec: Spec, planned: Sequence[PlannedRun], console: Console) -> None:
    """A dry run validates the spec without its data (a paper recipe checked on a laptop); this says
    which runs could not start here because a data, tokenizer or checkpoint file is missing or unreadable."""
    problems = []
    for run in planned:
        try:
            train.validate(run.config)
        except SpecError as error:
            problems.append(f"  {run.run_name}: {error}")
    if problems:
        console.print(
            f"[yellow]The spec is valid, but {len(problems)} of {len(planned)} runs cannot start on this machine[/] "
            f"(the run itself refuses them, exit 2, until the files are there; docs/data.md):",
            highlight=False,
        )
        for line in problems:
            console.print(line, highlight=False, markup=False)


def report_cost(
    spec: Spec, runs: Sequence[PlannedRun], resources: launch.SlurmResources | None, console: Console
) -> list[str]:
    """Prints the training cost and memory per rank of `runs` where the launcher sends them (launch/estimate.py,
    docs/cost.md), by a dry run and before a SLURM submission; returns why runs cannot fit their cards.
    A launcher it cannot place gets a note, not an error."""
    if not runs:
        return []
    from oner_lab.launch import estimate

    try:
        if resources is None:
            placed = estimate.where("local")
        else:
            gpus = resources.gpus_per_node
            world = resources.nodes * (gpus or resources.tasks_per_node)
            placed = estimate.where("slurm", gpus, resources.profile.gpu, world)
    except KeyError as error:
        console.print(f"[yellow]No cost estimate: {error.args[0]}[/]", highlight=False)
        return []
    name, devices, where = placed
    if not console.is_terminal:  # a log shows no status line: one line says what the wait before the table is
        print(
            f"Estimating the training cost of {len(runs)} run{'s' if len(runs) > 1 else ''} "
            "(FLOPs counted per config; on a CPU, its matmul rate measured; docs/cost.md)",
            file=sys.stderr,
            flush=True,
        )
    with console.status("Estimating the training cost", spinner="dots") as status:  # drawn on terminals only
        estimates = estimate.estimate_all(runs, name, devices, progress=status.update)
    console.print(estimate.cost_table(estimates, where))
    if resources is None or not resources.gpus_per_node:
        return []
    grouped: dict[str, list[str]] = {}
    for run, one in zip(runs, estimates):
        if problem := estimate.memory_problem(run, one, resources.gpus_per_node, resources.nodes):
            grouped.setdefault(problem, []).append(run.run_name)
    return [f"{'runs' if len(names) > 1 else 'run'} {', '.join(names)}: {text}" for text, names in grouped.items()]


def fail(message: object) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = table.make_console()
    try:
        spec = load_spec(args.spec, profile=args.profile, overrides=args.overrides)
        planned = expand(spec, parse_only(args.only) if args.only else None)
    except SpecError as error:
        return fail(error)
    for run in planned:
        try:
            train.validate(run.config, files=not args.dry_run)
            if run.parent is not None:  # found now, not after the parent has trained
                finetune.check_tower(
                    train.resolve_tower(run.parent.config), train.resolve_tower(run.config), run.parent.run_name
                )
        except SpecError as error:
            return fail(
                f"{spec.source_file}: run {run.run_name}: {error} (set in base or in grid.variants.{run.variant})"
            )

    if args.dry_run:
        report_data(spec, planned, console)
    if spec.sweep is not None and (problem := sweep_problem(spec, planned[0], args)):
        return fail(problem)
    runs_dir = Path(spec.launcher.runs_dir).resolve()
    resources = None
    try:
        if spec.launcher.backend == "slurm":  # the cluster profile, checked even by a dry run (files only)
            resources = launch.resolve_slurm(spec.launcher.slurm)
            check_world_size(planned, resources.world_size)
            console.print(describe_slurm(resources))
        if not args.dry_run:
            executor = launch.make_executor(spec.launcher, runs_dir, job_name=spec.name)
    except launch.LaunchError as error:
        return fail(f"{spec.source_file}: {error}")
    uri = tracking.resolve_uri(spec.tracking.uri)
    if spec.sweep is not None:  # an Optuna study of the spec's one grid point (docs/sweep.md)
        return run_sweep(spec, planned[0], None if args.dry_run else executor, uri, console)
    experiment = spec.experiment_name
    if args.dry_run:
        try:  # reads only; a SQLite file that is not there yet is not created
            existing = tracking.runs_by_hash(tracking.connect(uri), experiment) if tracking.store_exists(uri) else {}
        except tracking.TrackingError as error:
            return fail(f"{spec.source_file}: {error}")
        steps = plan(spec, planned, existing, args.force)
        console.print(plan_table(steps))
        too_big = report_cost(spec, planned, resources, console)
        warn_old_scheme(spec, uri, console)
        if too_big:
            return fail(f"{spec.source_file}: {'; '.join(too_big)}")
        if problems := unstartable(steps, existing):
            return fail(f"{spec.source_file}: {'; '.join(problems)}")
        return 0
    try:
        client = tracking.connect(uri)
    except tracking.TrackingError as error:
        return fail(f"{spec.source_file}: {error}")
    lock = tracking.store_lock(uri, runs_dir)
    try:  # one invocation at a time plans and claims runs of this store (docs/reliability.md)
        lock.acquire()
    except filelock.Timeout:
        return fail(
            f"{spec.source_file}: another invocation has held {lock.lock_file} for {lock.timeout:.0f} s while "
            "planning; if no `python -m oner_lab.run` is running, delete that file and rerun"
        )
    try:
        return plan_and_launch(spec, planned, args, executor, client, uri, lock, console, resources)
    except STORE_ERRORS as error:
        return store_failed(spec, uri, error)
    finally:
        if lock.is_locked:
            lock.release(force=True)


STORE_ERRORS = (MlflowException, SQLAlchemyError, RequestException, tracking.TrackingError, StoreUnavailable)
"""What a tracking store that fails mid-run raises through MLflow; the CLI exits 3 on them."""


def store_failed(spec: Spec, uri: str, error: BaseException) -> int:
    """One paragraph naming the store and the cause; exit code 3."""
    text = (
        str(error)
        if isinstance(error, StoreUnavailable)
        else (
            f"the tracking store {uri} failed ({cause_of(error)}). Make it usable again (put back a deleted file, free the "
            "disk, fix a read-only mount, end the process locking it, or start the server), then rerun "
            f"`python -m oner_lab.run {spec.source_file}`: unfinished runs resume from their checkpoints"
        )
    )
    print(f"error: {spec.source_file}: {text} (exit {EXIT_STORE_LOST})", file=sys.stderr)
    return EXIT_STORE_LOST


def warn_old_scheme(spec: Spec, uri: str, console: Console) -> None:
    """Says when the experiment holds runs hashed by an earlier scheme (not found by the plan above)."""
    experiment = spec.experiment_name
    if tracking.store_exists(uri) and (old := tracking.old_scheme_runs(tracking.connect(uri), experiment)):
        console.print(
            f"[yellow]{old} runs of experiment {experiment!r} were hashed by an earlier version of the lab[/] and are "
            f"not recognised above; `python -m oner_lab.migrate {spec.source_file}` re-tags them (docs/spec.md)."
        )


def plan(
    spec: Spec, planned: Sequence[PlannedRun], existing: dict[str, tracking.TrackedRun], force: bool
) -> list[Step]:
    """`decide` with what is known about live owners, live SLURM jobs and checkpoints on disk."""
    owned = frozenset(  # only a run still in flight can have an owner: an ended one (KILLED, FAILED) is resumed
        key
        for key, found in existing.items()
        if found.status in (tracking.RUNNING, tracking.SCHEDULED) and claims.live_owner(found)
    )
    on_disk = frozenset(
        run.config_hash
        for run in planned
        if run.config_hash not in existing and recovery.checkpoint_on_disk(spec, run.config_hash) is not None
    )
    return decide(planned, existing, force, live_slurm_jobs(existing), owned, on_disk)


def plan_and_launch(
    spec: Spec,
    planned: Sequence[PlannedRun],
    args: argparse.Namespace,
    executor: submitit.Executor,
    client: MlflowClient,
    uri: str,
    lock: FileLock,
    console: Console,
    resources: launch.SlurmResources | None = None,
) -> int:
    """Under the store lock: ends runs whose owner is gone, plans, claims; then dispatches and waits.
    `resources`: what each SLURM job asks for (None for the other backends)."""
    existing = tracking.runs_by_hash(client, spec.experiment_name)
    existing, notes = claims.reconcile(
        client,
        existing,
        live_slurm_jobs(existing),
        lambda found: recovery.run_dir_of(spec, _hash_of(existing, found), found),
    )
    for note in notes:
        console.print(f"[yellow]{note}[/]", highlight=False)
    steps = plan(spec, planned, existing, args.force)
    console.print(plan_table(steps))
    warn_old_scheme(spec, uri, console)
    if problems := unstartable(steps, existing):
        return fail(f"{spec.source_file}: {'; '.join(problems)}")
    queued = [step for step in steps if step.action == QUEUED]
    if queued:
        held = ", ".join(f"{step.planned.run_name} (job {step.existing.slurm_job})" for step in queued if step.existing)
        console.print(
            f"Still queued or running on SLURM from an earlier invocation, left alone: {held}. "
            f"`python -m oner_lab.status {spec.source_file}` follows them."
        )
    owned = [step for step in steps if step.action == OWNED]
    if owned:
        held = ", ".join(f"{step.planned.run_name} ({_owner_of(step)})" for step in owned)
        console.print(
            f"Being trained by another invocation, left alone: {held}. "
            f"`python -m oner_lab.status {spec.source_file}` follows them."
        )
    todo = [step for step in steps if step.action not in (SKIP, QUEUED, OWNED)]
    if not todo:
        if not queued and not owned:
            console.print(f"All {len(steps)} runs already FINISHED (--force reruns them).")
            table.print_spec_table(spec, planned, console)
        print_ui_link(spec, uri, console)
        return 0

    if resources is not None:  # what the SLURM submission will cost, before it is sent
        if too_big := report_cost(spec, [step.planned for step in todo], resources, console):
            return fail(f"{spec.source_file}: {'; '.join(too_big)}")
    return launch_and_wait(spec, planned, todo, existing, executor, client, uri, args.no_wait, console, lock)


def _hash_of(existing: dict[str, tracking.TrackedRun], found: tracking.TrackedRun) -> str:
    return next(key for key, other in existing.items() if other.run_id == found.run_id)


def _owner_of(step: Step) -> str:
    found = step.existing
    owner_now = claims.live_owner(found) if found else None
    return str(owner_now) if owner_now else "an invocation that just ended"


def launch_and_wait(
    spec: Spec,
    planned: Sequence[PlannedRun],
    todo: Sequence[Step],
    existing: dict[str, tracking.TrackedRun],
    executor: submitit.Executor,
    client: MlflowClient,
    uri: str,
    no_wait: bool,
    console: Console,
    lock: FileLock | None = None,
) -> int:
    """Opens the MLflow runs, submits them, waits with a progress view, prints the table; returns the exit code.
    `lock` (the store lock, held while planning) is released once the first runs are claimed.

    Runs go in stages: first every run whose parent (`train.init_from` naming a variant) is not run
    here, then, once their parents FINISHED, the runs starting from them, and so on down a chain. A
    run whose parent failed, is still queued from an earlier invocation, or was only dispatched
    (`--no-wait`) is not started, and the CLI says why and what to run.
    """
    in_process = spec.launcher.backend == "debug"
    if no_wait and in_process:
        console.print("--no-wait has no effect with the debug backend: its runs run in this process.")
        no_wait = False
    experiment = spec.experiment_name
    run_here = {step.planned.config_hash for step in todo}
    parents = {key: run for key, run in existing.items() if run.finished and key not in run_here}
    waiting = list(todo)
    outcomes: list[launch.JobOutcome] = []
    signals = ExitStack()
    signals.enter_context(interrupts.installed())  # SIGTERM/Ctrl-C: see launch/interrupts.py
    jobs: list[submitit.Job] = []
    dispatches: list[launch.Dispatch] = []
    try:
        while ready := [step for step in waiting if _can_start(step, parents)]:
            waiting = [step for step in waiting if not _can_start(step, parents)]
            if outcomes:
                console.print(f"Parents FINISHED; starting {', '.join(step.planned.run_name for step in ready)}.")
            dispatches = [_prepare(client, spec, step, parents, console) for step in ready]
            if lock is not None and lock.is_locked:  # claimed: a second invocation now sees them owned
                lock.release(force=True)
            try:
                jobs = launch.submit(
                    executor,
                    spec.launcher,
                    dispatches,
                    uri,
                    owner_pid=None if no_wait else os.getpid(),
                    outage_window_s=spec.tracking.outage_window_s,
                )
            except launch.LaunchError as error:
                for run in dispatches:
                    tracking.end_run(client, run.run_id, tracking.FAILED, f"not submitted: {error}")
                console.print(f"[red]error[/]: {spec.source_file}: {error}")
                return 1
            if spec.launcher.backend == "slurm":
                for job, run in zip(jobs, dispatches):
                    tracking.set_tags(client, run.run_id, {tracking.TAG_SLURM_JOB: job.job_id})
            if no_wait:
                console.print(
                    f"Dispatched {len(jobs)} runs; logs under {Path(spec.launcher.runs_dir).resolve() / 'submitit'}. "
                    f"`python -m oner_lab.status {spec.source_file}` shows them, `mlflow ui` too; "
                    f"`python -m oner_lab.table {spec.source_file}` prints the table."
                )
                _report_waiting(spec, waiting, outcomes, console, dispatched=True)
                print_ui_link(spec, uri, console)
                return 0
            stage = launch.wait_for(jobs, dispatches, client, experiment, console, in_process=in_process)
            interrupts.raise_if_requested()  # an in-process run stopped at a checkpoint as asked
            outcomes += stage
            for run, outcome in zip(dispatches, stage):
                if outcome.status == tracking.FINISHED:
                    parents[run.planned.config_hash] = tracking.TrackedRun(
                        run.run_id, run.planned.run_name, tracking.FINISHED, str(run.run_dir), 0
                    )
    except KeyboardInterrupt:
        stopped = launch.stop(jobs, dispatches, client, experiment)
        console.print(f"Interrupted: stopped {', '.join(stopped) or 'nothing'}. Run the same command again to resume.")
        return 130
    finally:
        signals.close()
    if lost := [outcome for outcome in outcomes if outcome.store_error]:
        names = ", ".join(f"{outcome.run_name} ({outcome.status})" for outcome in lost)
        print(
            f"error: {spec.source_file}: {lost[0].store_error}. Runs affected: {names}. (exit {EXIT_STORE_LOST})",
            file=sys.stderr,
        )
        return EXIT_STORE_LOST
    table.print_spec_table(spec, planned, console)
    failed = [outcome for outcome in outcomes if outcome.status != tracking.FINISHED]
    for outcome in failed:
        console.print(f"[red]{outcome.run_name} {outcome.status}[/]: {outcome.error}")
    _report_waiting(spec, waiting, outcomes, console, dispatched=False)
    print_ui_link(spec, uri, console)
    return 1 if failed else 0


def print_ui_link(spec: Spec, uri: str, console: Console) -> None:
    """Where to look at the runs in the MLflow UI: the experiment's runs list, in Model training mode."""
    link = tracking_ui.experiment_link(uri, spec.experiment_name)
    if link is None:
        return
    serve = "" if uri.startswith(("http://", "https://")) else f" (after `mlflow ui --backend-store-uri {uri}`)"
    console.print(f"MLflow UI{serve}: {link}", highlight=False, soft_wrap=True)


def _can_start(step: Step, parents: dict[str, tracking.TrackedRun]) -> bool:
    """A run starts once it has no parent here, or its parent FINISHED (`parents`: by config hash)."""
    return step.planned.parent is None or step.planned.parent.config_hash in parents


def _report_waiting(
    spec: Spec, waiting: Sequence[Step], outcomes: Sequence[launch.JobOutcome], console: Console, *, dispatched: bool
) -> None:
    """Says which fine-tuning runs were not started, why, and what to run."""
    ended = {outcome.run_name: outcome.status for outcome in outcomes}
    rerun = f"`python -m oner_lab.run {spec.source_file}" + (f" --profile {spec.profile}" if spec.profile else "") + "`"
    for step in waiting:
        assert step.planned.parent is not None
        parent = step.planned.parent.run_name
        if dispatched:
            why = f"it starts from {parent}, dispatched now; run {rerun} again once that FINISHED (finished runs are skipped)"
        elif parent in ended:
            why = f"its parent {parent} ended {ended[parent]}; fix it, then run {rerun} again"
        elif any(other.planned.run_name == parent for other in waiting):
            why = f"its parent {parent} was not started either; run {rerun} again once that FINISHED"
        else:
            why = f"its parent {parent} is still queued or running from an earlier invocation; run {rerun} again once that FINISHED"
        console.print(f"[yellow]{step.planned.run_name} not started[/]: {why}.")


def _prepare(
    client: MlflowClient, spec: Spec, step: Step, parents: dict[str, tracking.TrackedRun], console: Console
) -> launch.Dispatch:
    """Creates the MLflow run (run, rerun), re-opens the existing one (resume), or opens a new one for a
    checkpoint the store lost (recover), claimed by this invocation (tag oner.owner); a fine-tuning run is
    tagged with its parent and given the parent's checkpoint (`parents`: FINISHED runs by config hash)."""
    claim = {tracking.TAG_OWNER: owner.this_process().to_tag()}
    if step.action == RESUME and step.existing is not None:
        run_dir = recovery.run_dir_of(spec, step.planned.config_hash, step.existing)
        run_id = step.existing.run_id
        tracking.set_tags(client, run_id, claim)
        tracking.set_status(client, run_id, tracking.SCHEDULED)
    elif step.action == RECOVER:
        run_dir = spec.run_dir(step.planned.config_hash).resolve()
        found = run_dir / recovery.LAST
        run_id = tracking.create_run(
            client, spec.experiment_name, step.planned, spec, run_dir, {**claim, tracking.TAG_RECOVERED: str(found)}
        )
        kept = recovery.read_kept(found)
        recovery.relog(client, run_id, found, kept)
        at = f" (step {kept['step']})" if "step" in kept else ""
        console.print(
            f"[yellow]Recovered {step.planned.run_name}[/]: the store has no run for config hash "
            f"{step.planned.config_hash}, but {found}{at} is on disk; resuming from it into a new MLflow run "
            f"tagged {tracking.TAG_RECOVERED}.",
            highlight=False,
        )
    else:
        run_dir = fresh_run_dir(spec, step.planned)
        run_id = tracking.create_run(client, spec.experiment_name, step.planned, spec, run_dir, claim)
    init_checkpoint, tags = _start_of(spec, step.planned, parents)
    if tags:
        tracking.set_tags(client, run_id, tags)
    return launch.Dispatch(step.planned, run_id, run_dir, init_checkpoint, tracking_ui.JobOptions.of(spec.tracking))


def _start_of(
    spec: Spec, run: PlannedRun, parents: dict[str, tracking.TrackedRun]
) -> tuple[Path | None, dict[str, str]]:
    """The checkpoint a run starts from (its parent run's last.pt, or a train.init_from path) and the tags saying so."""
    if run.parent is not None:
        found = parents[run.parent.config_hash]
        parent_dir = recovery.run_dir_of(spec, run.parent.config_hash, found)
        return parent_dir / "checkpoints" / "last.pt", {
            tracking.TAG_PARENT_RUN: found.run_id,
            tracking.TAG_PARENT: found.run_name,
        }
    if run.config.train.init_from is not None:
        path = Path(run.config.train.init_from).resolve()
        return path, {tracking.TAG_PARENT: str(path)}
    return None, {}


if __name__ == "__main__":
    sys.exit(main())
