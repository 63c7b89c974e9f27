"""Figures from MLflow runs (seaborn): per-variant bars with seed intervals, loss-term curves, the
modality gap over training. Each returns a matplotlib Figure; `save_figure` writes it as PNG.

Every figure plots the runs `select_runs` keeps, so it agrees with the tables; variants keep
one colour across figures (the order the runs were launched in).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from oner_lab.analysis import paper
from oner_lab.analysis.result import ResultTable
from oner_lab.analysis.runs import metric_columns_like, metric_history
from oner_lab.analysis.selection import select_runs
from oner_lab.analysis.tables import eval_sets_of, logged_metrics, metric_columns

PANELS_PER_ROW = 3
INTERVAL = "sd"
"""Seed intervals: mean ± one standard deviation over seeds (as the tables report)."""


def save_figure(figure: Figure, directory: str | Path, name: str) -> Path:
    """Writes `<directory>/<name>.png` (150 dpi) and returns its path."""
    path = Path(directory) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    return path


def message_figure(message: str) -> Figure:
    """A small figure that says why there is nothing to plot (no runs, no metric logged)."""
    figure, axis = plt.subplots(figsize=(6, 1.2))
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return figure


def _palette(rows: list[str]) -> dict[str, tuple[float, float, float]]:
    return dict(zip(rows, sns.color_palette("colorblind", len(rows))))


def final_metrics(runs: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Long frame (row, seed, run_name, metric, value) of the final metrics of the selected runs."""
    chosen = select_runs(runs).runs
    present = {key: label for key, label in columns.items() if key in chosen.columns}
    long = chosen.melt(
        id_vars=["row", "seed", "run_name"], value_vars=list(present), var_name="metric", value_name="value"
    )
    long["metric"] = long["metric"].map(present)
    return long.dropna(subset=["value"])


def metric_bars(runs: pd.DataFrame, columns: dict[str, str] | None = None) -> Figure:
    """One panel per metric (default: the ablation table's columns), a bar per variant at the mean
    over seeds with a ± sd interval, each seed as a dot."""
    chosen = select_runs(runs).runs
    columns = columns or metric_columns(eval_sets_of(chosen), logged_metrics(chosen))
    long = final_metrics(runs, columns)
    if long.empty:
        wanted = ", ".join(columns.values()) or "eval metrics"
        return message_figure(f"No FINISHED run of {runs.attrs.get('experiment')!r} logged {wanted}.")
    rows = list(dict.fromkeys(long["row"]))
    grid = sns.catplot(
        data=long,
        kind="bar",
        x="row",
        y="value",
        hue="row",
        palette=_palette(rows),
        order=rows,
        col="metric",
        col_wrap=min(PANELS_PER_ROW, long["metric"].nunique()),
        sharey=False,
        errorbar=INTERVAL,
        capsize=0.2,
        height=3,
        aspect=1.2,
        legend=False,
    )
    grid.map_dataframe(sns.stripplot, x="row", y="value", order=rows, color="black", size=3, jitter=0.1)
    grid.set_titles("{col_name}").set_axis_labels("", "%")
    for axis in grid.axes.flat:
        axis.tick_params(axis="x", labelbottom=True)
        plt.setp(axis.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    grid.figure.suptitle(f"{runs.attrs.get('experiment')}: mean ± sd over seeds (dots: seeds)", y=1.02)
    grid.tight_layout()  # room for the rotated names under each panel, clear of the titles below
    return grid.figure


def findings_figure(table: ResultTable) -> Figure:
    """Each finding of `table`: our per-seed paired differences (dots), their mean and 95% interval
    (bar), and the paper's difference (red diamond); the vertical line is no difference."""
    frame = table.findings_frame
    if frame is None or frame.empty:
        return message_figure("This table has no findings.")
    points = pd.DataFrame(
        [(name, seed, value) for name, per_seed in frame["per_seed"].items() for seed, value in per_seed.items()],
        columns=["finding", "seed", "difference"],
    )
    names = list(frame.index)
    figure, axis = plt.subplots(figsize=(10, 0.55 * len(names) + 1.6))
    axis.axvline(0, color="grey", linewidth=1)
    if not points.empty:
        sns.stripplot(
            data=points, x="difference", y="finding", order=names, color="black", size=4, jitter=0.15, ax=axis
        )
    for position, (name, row) in enumerate(frame.iterrows()):
        if not pd.isna(row["low"]):
            axis.plot([row["low"], row["high"]], [position, position], color="tab:blue", linewidth=3, alpha=0.6)
        if not pd.isna(row["ours"]):
            axis.plot(row["ours"], position, "o", color="tab:blue", markersize=8)
        if not pd.isna(row["paper"]):
            axis.plot(row["paper"], position, "D", color="tab:red", markersize=7)
        axis.annotate(row["verdict"], (1.01, position), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("difference of the mean metric (points); blue: ours, mean and 95% CI; red: paper")
    axis.set_ylabel("")
    axis.set_title(f"{table.title.split(',')[0]}: findings, paired by seed", loc="left", fontsize=10)
    figure.tight_layout()
    return figure


def _curves(history: pd.DataFrame, rows: list[str], title: str, marker: str | None = None) -> Figure:
    grid = sns.relplot(
        data=history,
        kind="line",
        x="step",
        y="value",
        hue="row",
        hue_order=rows,
        palette=_palette(rows),
        col="key",
        col_order=list(dict.fromkeys(history["key"])),
        col_wrap=min(PANELS_PER_ROW, history["key"].nunique()),
        errorbar=INTERVAL,
        marker=marker,
        height=3,
        aspect=1.3,
        facet_kws={"sharey": False},
    )
    grid.set_titles("{col_name}")
    grid.legend.set_title("variant")
    grid.figure.suptitle(title, y=1.02)
    return grid.figure


def loss_curves(tracking_uri: str, runs: pd.DataFrame) -> Figure:
    """`train/loss` and every `train/loss_<term>` over steps, a line per variant (band: ± sd over seeds)."""
    chosen = select_runs(runs).runs
    keys = metric_columns_like(chosen, r"train/loss(_\w+)?")
    history = metric_history(tracking_uri, chosen, keys)
    if history.empty:
        return message_figure(f"No FINISHED run of {runs.attrs.get('experiment')!r} logged train/loss.")
    return _curves(
        history, list(dict.fromkeys(chosen["row"])), f"{runs.attrs.get('experiment')}: training losses per term"
    )


def modality_gap_curves(tracking_uri: str, runs: pd.DataFrame, eval_set: str | None = None) -> Figure:
    """`eval/<set>/modality_gap` and `alignment` at every evaluated step (`eval.every_steps` and the
    final step), a line per variant. A run evaluated only at its end gives one point."""
    chosen = select_runs(runs).runs
    if eval_set is None:
        sets = [name for name in eval_sets_of(chosen) if f"eval/{name}/modality_gap" in chosen.columns]
        eval_set = paper.EVAL_SETS["retrieval"] if paper.EVAL_SETS["retrieval"] in sets else (sets[0] if sets else None)
    history = metric_history(tracking_uri, chosen, [f"eval/{eval_set}/modality_gap", f"eval/{eval_set}/alignment"])
    if history.empty:
        return message_figure(f"No FINISHED run of {runs.attrs.get('experiment')!r} logged a modality gap.")
    title = (
        f"{runs.attrs.get('experiment')}: modality gap (centroid distance) and alignment on {eval_set} over training"
    )
    if history.groupby("run_id")["step"].nunique().max() == 1:
        title += "\n(evaluated at the last step only: set eval.every_steps in the spec for a curve)"
    return _curves(history, list(dict.fromkeys(chosen["row"])), title, marker="o")
