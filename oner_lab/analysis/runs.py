"""MLflow runs of one experiment as pandas: one row per run, metric histories on demand (read only).

Columns of `load_runs`: `run_id`, `run_name`, `status`, `start_time`, `end_time`, the lab's tags
(`variant`, `seed`, `config_hash`, `spec`, `profile`, `run_dir`, `error`, `parent_run_id`), `row`
(the run name without its seed: runs of one row differ only in their seed), `recipe` (a digest
of every param but `train.seed`: runs of one row with different recipes were launched from
different configs), each final metric under its MLflow key (`eval/shapes/tr_r1`, ...) and each
param as `params.<dotted key>`. `frame.attrs` keeps `tracking_uri`, `experiment`, `store_found`,
`experiment_found` and `experiments` (the names the store holds).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from oner_lab import tracking

TAG_PARENT = "mlflow.parentRunId"
"""MLflow's own link from a child run (e.g. a fine-tuning run) to the run it started from."""

TAG_COLUMNS = {
    "variant": tracking.TAG_VARIANT,
    "seed": tracking.TAG_SEED,
    "config_hash": tracking.TAG_HASH,
    "spec": tracking.TAG_SPEC,
    "profile": tracking.TAG_PROFILE,
    "run_dir": tracking.TAG_RUN_DIR,
    "error": tracking.TAG_ERROR,
    "parent_run_id": TAG_PARENT,
}
RUN_COLUMNS = ["run_id", "run_name", "status", "start_time", "end_time", *TAG_COLUMNS, "row", "recipe"]
PARAM_PREFIX = "params."
SEED_PARAM = "train.seed"
_SEED_PART = re.compile(r"/seed-?\d+(?=/|$)")


def row_key(run_name: str) -> str:
    """`oner/seed1/train.lr=0.001` -> `oner/train.lr=0.001`: what the runs of one table row share."""
    return _SEED_PART.sub("", run_name, count=1)


MEASURED_PARAM_PREFIX = "cost."
"""Params a run measures about itself while training (parameter count, FLOPs per step: `oner_lab.cost`),
not settings: a run logged before they existed, or one that never trained, has the same recipe."""


def recipe(params: dict[str, str]) -> str:
    """12 hex digits naming every setting param but the seed: equal for runs that differ only in their seed."""
    rest = {
        key: value for key, value in params.items() if key != SEED_PARAM and not key.startswith(MEASURED_PARAM_PREFIX)
    }
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:12]


def _all_runs(client: MlflowClient, experiment_key: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = tracking.retry_locked(
            lambda: client.search_runs([experiment_key], order_by=["attributes.start_time ASC"], page_token=token)
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _record(run: Run) -> dict[str, object]:
    tags = run.data.tags
    record: dict[str, object] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "start_time": pd.to_datetime(run.info.start_time, unit="ms"),
        "end_time": pd.to_datetime(run.info.end_time, unit="ms") if run.info.end_time else pd.NaT,
        **{column: tags.get(tag) for column, tag in TAG_COLUMNS.items()},
        "row": row_key(run.info.run_name),
        "recipe": recipe(run.data.params),
    }
    record.update(run.data.metrics)
    record.update({PARAM_PREFIX + key: value for key, value in run.data.params.items()})
    return record


def load_runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """Every training run the lab logged to `experiment` (runs with a config hash), oldest first.

    An experiment (or SQLite file) that does not exist gives an empty frame with
    `attrs["experiment_found"] = False`; nothing is created.
    """
    found, names, records = False, [], []
    store_found = tracking.store_exists(tracking_uri)
    if store_found:
        client = tracking.connect(tracking_uri)
        names = sorted(e.name for e in tracking.retry_locked(lambda: client.search_experiments()))
        experiment_key = tracking.experiment_id(client, experiment, create=False)
        if experiment_key is not None:
            found = True
            runs = _all_runs(client, experiment_key)
            records = [_record(run) for run in runs if tracking.TAG_HASH in run.data.tags]
    frame = pd.DataFrame.from_records(records, columns=RUN_COLUMNS if not records else None)
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    frame.attrs.update(
        tracking_uri=tracking_uri,
        experiment=experiment,
        store_found=store_found,
        experiment_found=found,
        experiments=names,
    )
    return frame


def metric_columns_like(runs: pd.DataFrame, pattern: str) -> list[str]:
    """The logged metric keys (the lab names them `group/.../name`) matching the regular expression `pattern` (fully), sorted."""
    regex = re.compile(pattern)
    return sorted(
        column
        for column in runs.columns
        if "/" in column and not column.startswith(PARAM_PREFIX) and regex.fullmatch(column)
    )


def metric_history(tracking_uri: str, runs: pd.DataFrame, keys: Iterable[str]) -> pd.DataFrame:
    """Every logged step of `keys` for each run: columns run_id, run_name, row, variant, seed, key, step, value."""
    keys = list(keys)
    records = []
    client = tracking.connect(tracking_uri) if len(runs) and keys else None
    for run in runs.to_dict("records"):
        for key in keys:
            if pd.isna(run.get(key)):
                continue  # never logged by this run
            history = tracking.retry_locked(lambda key=key: client.get_metric_history(run["run_id"], key))
            base = {column: run[column] for column in ("run_id", "run_name", "row", "variant", "seed")}
            records += [{**base, "key": key, "step": metric.step, "value": metric.value} for metric in history]
    columns = ["run_id", "run_name", "row", "variant", "seed", "key", "step", "value"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    order = {key: position for position, key in enumerate(keys)}
    return frame.sort_values(
        ["run_name", "key", "step"], key=lambda c: c.map(order) if c.name == "key" else c, ignore_index=True
    )
