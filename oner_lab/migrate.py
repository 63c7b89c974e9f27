"""Re-tag a spec's runs made under an earlier hashing scheme so reruns find them again.

    python -m oner_lab.migrate SPEC [--profile NAME] [--set dotted.key=value ...] [--dry-run]

Reads every run of the spec's MLflow experiment whose `oner.config_hash` is not of the current
scheme (`oner_lab.spec.identity.SCHEME`), rebuilds its config from what it logged (the
`config.yaml` artifact, else its dotted params), checks the rebuild by recomputing the hash the
run was tagged with, and sets `oner.config_hash` to the current hash, keeping the old one in
`oner.config_hash_v1` and the run directory where it is. Runs are not limited to the spec's grid:
runs of earlier grids, other profiles, `--set` values and sweep trials of the same experiment are
migrated too. Running it again changes nothing. A run whose rebuilt config does not reproduce its
old hash is left alone and listed (exit 1): it would be rerun, never mistaken for another.

Exit codes: 0 every old run migrated (or none to migrate); 1 some run could not be verified;
2 bad input (spec, --set) or a tracking store that cannot be opened.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from oner_lab import tracking
from oner_lab.spec import RunConfig, SpecError, load_spec
from oner_lab.spec.cli import add_spec_arguments
from oner_lab.spec.identity import SCHEME, config_hash
from oner_lab.spec.legacy import from_params, upgrade, v1_hash
from oner_lab.spec.plan import names_variant

MIGRATED, ALREADY, UNVERIFIED = "migrated", "already", "left alone"


@dataclass(frozen=True)
class Outcome:
    """What happened to one run: its old and new hash, or why it was left alone."""

    run: Run
    action: str
    old_hash: str
    new_hash: str | None = None
    reason: str = ""


def all_hashed_runs(client: MlflowClient, experiment: str) -> list[Run]:
    """Every run of `experiment` with a config hash, oldest first (none when it does not exist)."""
    return tracking.hashed_runs(client, experiment)


def logged_config(client: MlflowClient, run: Run) -> dict[str, Any]:
    """The config the run logged: `config.yaml` (exact), else its dotted params."""
    logged = [item.path for item in tracking.retry_locked(lambda: client.list_artifacts(run.info.run_id))]
    if "config.yaml" in logged:
        with tempfile.TemporaryDirectory(prefix="oner-migrate-") as target:
            path = tracking.retry_locked(lambda: client.download_artifacts(run.info.run_id, "config.yaml", target))
            loaded = yaml.safe_load(Path(path).read_text())
        if isinstance(loaded, dict):
            return loaded
    return from_params(run.data.params)


def migrate_runs(client: MlflowClient, experiment: str, *, write: bool) -> list[Outcome]:
    """Migrates (or, `write` False, only plans) every old-scheme run of `experiment`; parents before children."""
    runs = all_hashed_runs(client, experiment)
    by_id = {run.info.run_id: run for run in runs}
    outcomes: dict[str, Outcome] = {}

    def visit(run: Run) -> Outcome:
        run_id = run.info.run_id
        if run_id in outcomes:
            return outcomes[run_id]
        tags = run.data.tags
        if tags.get(tracking.TAG_HASH_SCHEME) == str(SCHEME):
            outcomes[run_id] = Outcome(run, ALREADY, tags.get(tracking.TAG_HASH_V1, "-"), tags[tracking.TAG_HASH])
            return outcomes[run_id]
        old = tags[tracking.TAG_HASH]
        outcomes[run_id] = _migrate_one(client, run, old, by_id, visit, write)
        return outcomes[run_id]

    return [visit(run) for run in runs]


def _migrate_one(client: MlflowClient, run: Run, old: str, by_id: dict[str, Run], visit: Any, write: bool) -> Outcome:
    logged = logged_config(client, run)
    init_from = (logged.get("train") or {}).get("init_from")
    parent_old = parent_new = None
    if isinstance(init_from, str) and names_variant(init_from) and tracking.TAG_TRIAL not in run.data.tags:
        parent = by_id.get(run.data.tags.get(tracking.TAG_PARENT_RUN, ""))
        if parent is None:
            return Outcome(
                run, UNVERIFIED, old, reason=f"starts from variant {init_from!r}, whose run is not in the experiment"
            )
        done = visit(parent)
        if done.new_hash is None:
            return Outcome(run, UNVERIFIED, old, reason=f"its parent {parent.info.run_name} was left alone")
        parent_old, parent_new = done.old_hash, done.new_hash
    if v1_hash(logged, parent_old) != old:
        return Outcome(run, UNVERIFIED, old, reason="the config it logged does not reproduce its hash")
    try:
        config = RunConfig.model_validate(upgrade(logged))
    except ValidationError as error:
        return Outcome(run, UNVERIFIED, old, reason=f"its config no longer validates: {error.errors()[0]['msg']}")
    new = config_hash(config, parent_new)
    if write:
        tracking.set_tags(
            client,
            run.info.run_id,
            {tracking.TAG_HASH: new, tracking.TAG_HASH_V1: old, tracking.TAG_HASH_SCHEME: str(SCHEME)},
        )
    return Outcome(run, MIGRATED, old, new)


def outcome_table(outcomes: Sequence[Outcome], dry_run: bool) -> Table:
    view = Table(title="Migration" + (" (dry run: nothing written)" if dry_run else ""), title_justify="left")
    for header in ("run", "status", "old hash", "new hash", "action"):
        view.add_column(header)
    for item in outcomes:
        action = item.action if not item.reason else f"{item.action}: {item.reason}"
        view.add_row(item.run.info.run_name, item.run.info.status, item.old_hash, item.new_hash or "-", action)
    return view


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oner_lab.migrate", description=__doc__.split("\n\n")[0])
    add_spec_arguments(parser, only=False)
    parser.add_argument("--dry-run", action="store_true", help="show what would be re-tagged and write nothing")
    args = parser.parse_args(argv)
    console = Console(width=200) if not sys.stdout.isatty() else Console()
    try:
        spec = load_spec(args.spec, profile=args.profile, overrides=args.overrides)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    uri = tracking.resolve_uri(spec.tracking.uri)
    if not tracking.store_exists(uri):
        console.print(f"No tracking store at {spec.tracking.uri}: nothing to migrate.")
        return 0
    try:
        client = tracking.connect(uri)
    except tracking.TrackingError as error:
        print(f"error: {spec.source_file}: {error}", file=sys.stderr)
        return 2
    outcomes = migrate_runs(client, spec.experiment_name, write=not args.dry_run)
    if not outcomes:
        console.print(f"Experiment {spec.experiment_name!r} has no runs: nothing to migrate.")
        return 0
    console.print(outcome_table(outcomes, args.dry_run))
    counts = {action: sum(item.action == action for item in outcomes) for action in (MIGRATED, ALREADY, UNVERIFIED)}
    verb = "would be re-tagged" if args.dry_run else "re-tagged"
    console.print(
        f"{counts[MIGRATED]} runs {verb} to hashing scheme {SCHEME}, {counts[ALREADY]} already were, "
        f"{counts[UNVERIFIED]} left alone (a rerun trains them anew)."
    )
    return 1 if counts[UNVERIFIED] else 0


if __name__ == "__main__":
    sys.exit(main())
