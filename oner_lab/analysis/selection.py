"""Which runs a table averages, and footnotes for every run it leaves out and why.

Rules: per config hash, the latest FINISHED run counts (a `--force` rerun replaces the
earlier one); a hash with no FINISHED run is left out with its status and error. Runs of one
table row (same variant and grid axes) must share a recipe (every param but the seed): when
they do not, only the runs of the latest launched recipe are averaged and a footnote names
the params that differ, so runs of an edited spec are never silently averaged together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from oner_lab import tracking
from oner_lab.analysis.runs import MEASURED_PARAM_PREFIX, PARAM_PREFIX, SEED_PARAM

MAX_DIFFERENCES_SHOWN = 3


@dataclass
class Selection:
    """The runs a table counts (oldest first) and the footnotes explaining what was left out."""

    runs: pd.DataFrame
    footnotes: list[str] = field(default_factory=list)


def missing_experiment_note(runs: pd.DataFrame) -> str | None:
    """A footnote when `load_runs` found no such experiment (or no store), else None."""
    if runs.attrs.get("experiment_found", True):
        return None
    if not runs.attrs.get("store_found", True):
        return f"No MLflow store at {runs.attrs.get('tracking_uri')} (nothing has been logged there)."
    held = runs.attrs.get("experiments") or []
    holds = f"it holds {', '.join(repr(name) for name in held)}" if held else "it holds no experiment"
    return f"No experiment {runs.attrs.get('experiment')!r} in {runs.attrs.get('tracking_uri')} ({holds})."


def _first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def _same(left: object, right: object) -> bool:
    return (pd.isna(left) and pd.isna(right)) or left == right


def _param_differences(left: pd.Series, right: pd.Series) -> list[str]:
    keys = sorted(
        {key for key in (*left.index, *right.index) if key.startswith(PARAM_PREFIX)}
        - {PARAM_PREFIX + SEED_PARAM}
        - {key for key in (*left.index, *right.index) if key.startswith(PARAM_PREFIX + MEASURED_PARAM_PREFIX)}
    )
    differ = [key for key in keys if not _same(left.get(key), right.get(key))]
    shown = [
        f"{key[len(PARAM_PREFIX) :]}: {left.get(key)} -> {right.get(key)}" for key in differ[:MAX_DIFFERENCES_SHOWN]
    ]
    if len(differ) > MAX_DIFFERENCES_SHOWN:
        shown.append(f"and {len(differ) - MAX_DIFFERENCES_SHOWN} more")
    return shown


def select_runs(runs: pd.DataFrame, *, config_hashes: Iterable[str] | None = None, top_level: bool = True) -> Selection:
    """The runs to average (see the module doc); `config_hashes` limits them to one plan's runs.

    `top_level` drops runs started from another run (fine-tuning children carry
    `parent_run_id`); tables that need them select those separately.
    """
    footnotes = [note] if (note := missing_experiment_note(runs)) else []
    if config_hashes is not None:
        runs = runs[runs["config_hash"].isin(set(config_hashes))]
    if top_level:
        runs = runs[runs["parent_run_id"].isna()]
    runs = runs.sort_values("start_time", kind="stable")
    finished = runs[runs["status"] == tracking.FINISHED].groupby("config_hash", sort=False).tail(1)
    for _, run in (
        runs[~runs["config_hash"].isin(finished["config_hash"])].groupby("config_hash", sort=False).tail(1).iterrows()
    ):
        reason = f": {_first_line(run['error'])}" if isinstance(run["error"], str) and run["error"].strip() else ""
        footnotes.append(f"{run['run_name']} is {run['status']}, not counted{reason}")
    kept = []
    for row, group in finished.groupby("row", sort=False):
        latest = group.iloc[-1]
        older = group[group["recipe"] != latest["recipe"]]
        if len(older):
            changes = "; ".join(_param_differences(older.iloc[-1], latest))
            names = ", ".join(older["run_name"])
            footnotes.append(
                f"{row}: {len(older)} run(s) of an earlier config left out ({names}; {changes}); "
                "only runs of the latest config are averaged"
            )
        kept.append(group[group["recipe"] == latest["recipe"]])
    selected = pd.concat(kept) if kept else finished
    return Selection(selected.sort_values("start_time", kind="stable"), footnotes)
