"""A spec's paper table (ablation, retrieval or transfer: the spec's `table`), read back from MLflow.

    python -m oner_lab.table experiments/ablation.yaml [--profile NAME] [--set k=v ...]

Only FINISHED runs of the spec's current plan count (its config hashes; the latest run per
hash), so runs of an edited spec never mix into the numbers. The paper's published rows are
printed in a separate block beside ours.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from oner_lab import analysis, tracking
from oner_lab import study as studies
from oner_lab.spec import PlannedRun, Spec, SpecError, expand, load_spec
from oner_lab.spec.cli import add_spec_arguments

LEFT_ALIGNED = ("variant", "method", "paper row")


def _rich_table(cells: pd.DataFrame) -> Table:
    table = Table()
    for header in cells.columns:
        table.add_column(str(header), justify="left" if header in LEFT_ALIGNED else "right")
    for row in cells.itertuples(index=False):
        table.add_row(*(str(value) for value in row))
    return table


def render_block(title: str, cells: pd.DataFrame, footnotes: list[str]) -> list[RenderableType]:
    """A title line, a rich table and its footnotes."""
    return [Text(title, style="bold"), _rich_table(cells), *(Text(f"Note: {note}", style="dim") for note in footnotes)]


def spec_table(spec: Spec, planned: Sequence[PlannedRun]) -> analysis.ResultTable:
    """The spec's table (`spec.table`) of its planned runs (their config hashes only), from its tracking store."""
    runs = analysis.load_runs(tracking.resolve_uri(spec.tracking.uri), spec.experiment_name)
    hashes = [run.config_hash for run in planned]
    if spec.table == "retrieval":
        return analysis.retrieval_table(runs[runs["config_hash"].isin(hashes)])
    if spec.table == "transfer":
        return analysis.transfer_table(runs[runs["config_hash"].isin(hashes)])
    return analysis.ablation_table(
        runs,
        eval_sets=spec.base.eval.sets,
        config_hashes=hashes,
        variants=list(dict.fromkeys(run.variant for run in planned)),
    )


def print_spec_table(spec: Spec, planned: Sequence[PlannedRun], console: Console | None = None) -> None:
    """Prints our block (or a line saying nothing has finished yet), its footnotes, and the paper's block."""
    console = console or make_console()
    result = spec_table(spec, planned)
    (title, cells, footnotes), *published = result.blocks()
    ours = render_block(title, cells, footnotes)
    if result.frame.empty:
        profile = spec.profile or "default"
        ours = [f"No FINISHED runs of {spec.source_file} (profile {profile}) in {spec.tracking.uri} yet.", *ours[2:]]
    for block in [*ours, *(line for block in published for line in render_block(*block))]:
        console.print(block)


def print_sweep_table(spec: Spec, console: Console | None = None, top: int = 5) -> None:
    """A sweep spec's study: its best completed trials, each parameter's importance, and trial counts."""
    console = console or make_console()
    storage = studies.storage_url(spec)
    if not studies.storage_exists(storage):
        console.print(f"No study yet: {storage} does not exist (run `python -m oner_lab.run {spec.source_file}`).")
        return
    found = studies.load_study(spec, storage)
    sweep = spec.sweep
    assert sweep is not None
    trials = found.get_trials(deepcopy=False)
    counts = (
        ", ".join(f"{count} {state}" for state, count in studies.trials_frame(found)["state"].value_counts().items())
        if trials
        else "none"
    )
    best = studies.best_trials(found, top).map(lambda value: f"{value:.4g}" if isinstance(value, float) else value)
    title = f"Study {studies.study_name(spec)}: best {len(best)} of {len(trials)} trials by {sweep.metric} ({sweep.direction})"
    notes = (
        [f"trials: {counts}; storage {storage}", "an empty table: no trial has completed yet"]
        if best.empty
        else [f"trials: {counts}; storage {storage}"]
    )
    importance = studies.importances(found)
    for block in render_block(title, best, notes):
        console.print(block)
    if importance.empty:
        console.print(Text("Parameter importances need two completed trials that differ in a parameter.", style="dim"))
        return
    cells = (
        importance.rename_axis("parameter")
        .reset_index()
        .assign(importance=lambda frame: frame["importance"].map("{:.3f}".format))
    )
    for block in render_block("Parameter importances (fANOVA, share of the metric's variance)", cells, []):
        console.print(block)


def make_console() -> Console:
    """A console for tables: at least 120 columns wide when printing to a file or pipe (logs, CI)."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    return console


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oner_lab.table", description="Print a spec's ablation table from MLflow."
    )
    add_spec_arguments(parser, only=False)
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, profile=args.profile, overrides=args.overrides)
        if spec.sweep is not None:
            print_sweep_table(spec, make_console())
        else:
            print_spec_table(spec, expand(spec), make_console())
    except (SpecError, tracking.TrackingError, studies.StudyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
