"""The ablation table, read back from MLflow: one row per variant, mean ± std over seeds.

    python -m oner_lab.table experiments/ablation.yaml [--profile NAME] [--set k=v ...]

Only FINISHED runs of the spec's current plan count (its config hashes; the latest run per
hash), so runs of an edited spec never mix into the numbers. The paper's published rows are
printed in a separate block beside ours.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence

import pandas as pd
from mlflow import MlflowClient
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from oner_lab import paper, tracking
from oner_lab.spec import PlannedRun, Spec, SpecError, expand, load_spec

CLASSIFICATION_METRICS = {"top1": "top-1"}
RETRIEVAL_METRICS = {"tr_r1": "TR@1", "tr_r5": "TR@5", "ir_r1": "IR@1", "ir_r5": "IR@5"}
PAPER_COLUMN = "paper row"


def _finished_runs(client: MlflowClient, experiment: str) -> list:
    experiment_key = tracking.experiment_id(client, experiment, create=False)
    if experiment_key is None:
        return []
    runs, token = [], None
    while True:
        page = tracking.retry_locked(
            lambda: client.search_runs(
                [experiment_key],
                filter_string="attributes.status = 'FINISHED'",
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def metric_columns(eval_sets: Iterable[str], logged: set[str]) -> dict[str, str]:
    """MLflow metric key -> column label, in the paper's order: top-1 first, then TR@1, TR@5, IR@1, IR@5.

    A column appears when some run logged it, so a set's kind (classification or retrieval)
    need not be declared. Labels name the set only where two sets give the same metric.
    """
    sets = list(eval_sets)
    found = [
        (f"eval/{eval_set}/{name}", eval_set, label)
        for names in (CLASSIFICATION_METRICS, RETRIEVAL_METRICS)
        for eval_set in sets
        for name, label in names.items()
        if f"eval/{eval_set}/{name}" in logged
    ]
    repeated = {label for _, _, label in found if sum(other == label for _, _, other in found) > 1}
    return {key: f"{eval_set} {label}" if label in repeated else label for key, eval_set, label in found}


def sets_note(columns: dict[str, str]) -> str:
    """Which eval set each unqualified column comes from, e.g. `top-1: shapes_cls; TR/IR: shapes`."""
    parts = []
    for names, kind in ((CLASSIFICATION_METRICS, "top-1"), (RETRIEVAL_METRICS, "TR/IR")):
        sets = sorted({key.split("/")[1] for key, label in columns.items() if key.rsplit("/", 1)[1] in names and " " not in label})
        if sets:
            parts.append(f"{kind}: {', '.join(sets)}")
    return "; ".join(parts)


def build_ablation_table(
    tracking_uri: str,
    experiment: str,
    eval_sets: Iterable[str],
    *,
    config_hashes: Iterable[str] | None = None,
    variants: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per variant (index), columns `n`, each metric's mean and `<metric> std`, `paper row`.

    `table.attrs["metrics"]` maps each MLflow metric key to its column.
    `config_hashes` limits the rows to those runs (the latest FINISHED run per hash); `variants`
    fixes the row order (the spec's). Values are as logged (recall and top-1 in percent).
    """
    if not tracking.store_exists(tracking_uri):
        runs = []
    else:
        runs = _finished_runs(tracking.connect(tracking_uri), experiment)
    wanted = None if config_hashes is None else set(config_hashes)
    latest: dict[str, object] = {}
    for run in runs:  # ascending start time: the latest run per hash wins
        run_hash = run.data.tags.get(tracking.TAG_HASH)
        if run_hash is not None and (wanted is None or run_hash in wanted):
            latest[run_hash] = run
    columns = metric_columns(eval_sets, {key for run in latest.values() for key in run.data.metrics})
    records = [
        {"variant": run.data.tags[tracking.TAG_VARIANT], **{label: run.data.metrics.get(key) for key, label in columns.items()}}
        for run in latest.values()
    ]
    labels = list(columns.values())
    if not records:
        return pd.DataFrame(columns=["n", *labels, PAPER_COLUMN]).rename_axis("variant")
    frame = pd.DataFrame.from_records(records)
    grouped = frame.groupby("variant", sort=False)
    table = grouped[labels].mean()
    for label in labels:
        table[f"{label} std"] = grouped[label].std(ddof=1)
    table.insert(0, "n", grouped.size())
    table = table[["n", *[name for label in labels for name in (label, f"{label} std")]]]
    table[PAPER_COLUMN] = [paper.PAPER_ROW_OF_VARIANT.get(variant, "") for variant in table.index]
    if variants is not None:
        table = table.reindex([variant for variant in variants if variant in table.index])
    table.attrs["metrics"] = columns
    return table


def paper_ablation_table() -> pd.DataFrame:
    """The paper's published rows (CC3M, ViT-B/16), in percent."""
    return pd.DataFrame.from_dict(paper.ABLATION_ROWS, orient="index", columns=list(paper.ABLATION_COLUMNS)).rename_axis(
        "method"
    )


def _cell(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.1f}" if std is None or math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def render(table: pd.DataFrame, title: str) -> tuple[list[RenderableType], list[RenderableType]]:
    """(our block, the paper's block), each a title line and a rich table."""
    labels = [column for column in table.columns if column not in ("n", PAPER_COLUMN) and not column.endswith(" std")]
    ours = Table()
    for header in ["variant", "n", *labels, PAPER_COLUMN]:
        ours.add_column(header, justify="left" if header in ("variant", PAPER_COLUMN) else "right")
    for variant, row in table.iterrows():
        cells = [_cell(row[label], row[f"{label} std"]) for label in labels]
        ours.add_row(str(variant), str(int(row["n"])), *cells, row[PAPER_COLUMN] or "-")
    published = Table()
    for header in ["method", *paper.ABLATION_COLUMNS]:
        published.add_column(header, justify="left" if header == "method" else "right")
    for method, values in paper.ABLATION_ROWS.items():
        published.add_row(method, *(f"{value:.1f}" for value in values))
    paper_title = f"Paper ({paper.ABLATION_SETTING}): published numbers, not ours"
    return [Text(title, style="bold"), ours], [Text(paper_title, style="bold"), published]


def spec_table(spec: Spec, planned: Sequence[PlannedRun]) -> pd.DataFrame:
    """The ablation table of a spec's planned runs, from its tracking store."""
    return build_ablation_table(
        tracking.resolve_uri(spec.tracking.uri),
        spec.experiment_name,
        spec.base.eval.sets,
        config_hashes=[run.config_hash for run in planned],
        variants=list(dict.fromkeys(run.variant for run in planned)),
    )


def print_spec_table(spec: Spec, planned: Sequence[PlannedRun], console: Console | None = None) -> None:
    """Prints our block (or a line saying nothing has finished yet) and the paper's block."""
    console = console or make_console()
    table = spec_table(spec, planned)
    profile = spec.profile or "default"
    note = sets_note(table.attrs.get("metrics", {}))
    title = f"Ours: {spec.experiment_name} (profile {profile}), FINISHED runs, mean ± std over seeds; {note}"
    ours, published = render(table, title)
    if table.empty:
        ours = [f"No FINISHED runs of {spec.source_file} (profile {profile}) in {spec.tracking.uri} yet."]
    for block in (*ours, *published):
        console.print(block)


def make_console() -> Console:
    """A console for tables: at least 120 columns wide when printing to a file or pipe (logs, CI)."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    return console


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oner_lab.table", description="Print a spec's ablation table from MLflow.")
    parser.add_argument("spec", help="the experiment spec (YAML)")
    parser.add_argument("--profile", help="the profile the runs were launched with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="as given to run")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, profile=args.profile, overrides=args.overrides)
        planned = expand(spec)
        print_spec_table(spec, planned, make_console())
    except (SpecError, tracking.TrackingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
