"""Analysis: the paper's tables and figures, read back from MLflow (see docs/analysis.md).

    runs = load_runs("sqlite:///mlflow.db", "oner-ablation")   # one row per run
    table = ablation_table(runs)                                # numbers, cells, footnotes, the paper's rows
    table.save("out", "ablation")                               # .csv .md .tex .html
    save_figure(metric_bars(runs), "out", "bars")

Analysis only reads MLflow; `log_outputs` hands finished files to `tracking`, the one writer.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from oner_lab import tracking
from oner_lab.analysis.result import ResultTable
from oner_lab.analysis.runs import load_runs, metric_history, row_key
from oner_lab.analysis.selection import Selection, select_runs
from oner_lab.analysis.tables import (
    ablation_table,
    gap_table,
    metric_columns,
    paper_ablation_table,
    paper_retrieval_table,
    paper_transfer_table,
    retrieval_table,
    sets_note,
    transfer_table,
)

_FIGURES = {
    "findings_figure": "figures",
    "loss_curves": "figures",
    "message_figure": "figures",
    "metric_bars": "figures",
    "modality_gap_curves": "figures",
    "save_figure": "figures",
    "tsne_figure": "tsne",
}


def __getattr__(name: str) -> object:
    """Figure functions load matplotlib, seaborn, torch and scikit-learn on first use, so the table
    CLI (`python -m oner_lab.table`, and `run` after its runs) starts without them."""
    if name in _FIGURES:
        module = importlib.import_module(f"oner_lab.analysis.{_FIGURES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def runs_summary(runs: pd.DataFrame) -> str:
    """One line for a notebook: how many runs the experiment holds and in which states, or that it has none."""
    experiment, uri = runs.attrs.get("experiment"), runs.attrs.get("tracking_uri")
    if not runs.attrs.get("store_found", True):
        return f"No runs: there is no MLflow store at {uri}. Only the paper's published numbers can be shown."
    if not runs.attrs.get("experiment_found", True):
        held = ", ".join(runs.attrs.get("experiments") or []) or "none"
        return (
            f"No runs: experiment {experiment!r} does not exist in {uri} (experiments there: {held}). "
            "Only the paper's published numbers can be shown."
        )
    if runs.empty:
        return f"No runs: experiment {experiment!r} in {uri} holds no training run yet."
    states = ", ".join(f"{count} {status}" for status, count in runs["status"].value_counts().items())
    return f"Experiment {experiment!r} in {uri}: {len(runs)} runs ({states})."


def log_outputs(tracking_uri: str, experiment: str, name: str, paths: Iterable[str | Path]) -> str | None:
    """Logs a notebook's saved figures and tables to the experiment's `analysis/<name>` run; its id, or
    None when the experiment does not exist."""
    return tracking.log_analysis_outputs(tracking_uri, experiment, name, [Path(path) for path in paths])


__all__ = [
    "ResultTable",
    "Selection",
    "ablation_table",
    "findings_figure",
    "gap_table",
    "load_runs",
    "log_outputs",
    "loss_curves",
    "message_figure",
    "metric_bars",
    "metric_columns",
    "metric_history",
    "modality_gap_curves",
    "paper_ablation_table",
    "paper_retrieval_table",
    "paper_transfer_table",
    "retrieval_table",
    "row_key",
    "runs_summary",
    "save_figure",
    "select_runs",
    "sets_note",
    "transfer_table",
    "tsne_figure",
]
