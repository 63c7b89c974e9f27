"""The Optuna side of a spec's `sweep` section: storage, sampler, pruner, the study, a trial's run config.

    storage = storage_url(spec)                  # sqlite:///.../optuna.db, or journal:/abs/path
    study = open_study(spec, storage)            # created on first use, loaded after
    params = suggest(study.ask(), spec.sweep)    # {"train.lr": 0.0012, ...}
    config = trial_config(planned.config, params)

Knows nothing of submitit or MLflow: the launcher (launch/sweep.py), the table and the notebook use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState

from oner_lab import tracking
from oner_lab.spec import RunConfig, Spec, SpecError
from oner_lab.spec.errors import did_you_mean, one_of
from oner_lab.spec.merge import set_at
from oner_lab.spec.models import CategoricalParam, FloatParam, PrunerConfig, SamplerConfig, SweepConfig

DEFAULT_STORAGE_FILE = "optuna.db"
SQLITE_TIMEOUT_S = 60
"""How long a SQLite writer waits for the lock: trials of one study write their storage at once."""
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
"""The trials a study counts toward `sweep.trials`."""

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StudyError(RuntimeError):
    """The study's storage cannot be opened, or holds a study that does not fit the spec."""


def sweep_of(spec: Spec) -> SweepConfig:
    if spec.sweep is None:
        raise ValueError(f"{spec.source_file} has no sweep section")
    return spec.sweep


def study_name(spec: Spec) -> str:
    return sweep_of(spec).study or spec.name


def eval_metrics(config: RunConfig) -> list[str]:
    """Every eval/<set>/<metric> a run of `config` logs: each set's metrics as its scoring task declares them."""
    # imported here: the data and evaluation code needs torch, which reading a study's table does not
    from oner_lab.data import eval_source
    from oner_lab.evaluators import TASKS

    metrics = []
    for name in config.eval.sets:
        task = TASKS[eval_source(config.data, name).task]
        metrics += [f"eval/{name}/{metric}" for metric in task.metric_names]
    return metrics


def check_sweep_run(spec: Spec, config: RunConfig) -> None:
    """What the loader cannot check without the project's evaluation: the metric must be one the run's
    eval sets log, a pruner needs evaluations during training, the storage is not the MLflow store.
    Raises SpecError."""
    sweep = sweep_of(spec)
    storage_url(spec)
    produced = eval_metrics(config)
    if sweep.metric not in produced:
        raise SpecError(
            spec.source_file,
            "sweep.metric",
            f"{sweep.metric!r} is not logged by this run (eval.sets: {', '.join(config.eval.sets)})",
            one_of(produced),
            value=sweep.metric,
            suggestion=did_you_mean(sweep.metric, produced),
        )
    if sweep.pruner.type != "none" and config.eval.every_steps is None:
        raise SpecError(
            spec.source_file,
            "sweep.pruner.type",
            f"{sweep.pruner.type!r} needs evaluations during training, but base.eval.every_steps is null",
            "set base.eval.every_steps (the steps at which trials report their metric), or pruner type: none",
            value=sweep.pruner.type,
        )


def storage_url(spec: Spec) -> str:
    """`sweep.storage` with relative paths made absolute (jobs run elsewhere); default: optuna.db beside the
    MLflow SQLite store (or in the working directory). Never the MLflow file itself: both keep an
    `alembic_version` table, and Optuna refuses MLflow's."""
    storage = sweep_of(spec).storage
    tracking_db = tracking.sqlite_path(tracking.resolve_uri(spec.tracking.uri))
    if storage is None:
        folder = tracking_db.parent if tracking_db is not None else Path.cwd()
        return f"sqlite:///{folder.resolve() / DEFAULT_STORAGE_FILE}"
    if storage.startswith("journal:"):
        return f"journal:{Path(storage.removeprefix('journal:')).expanduser().resolve()}"
    url = tracking.resolve_uri(storage)
    database = tracking.sqlite_path(url)
    if database is not None and tracking_db is not None and database.resolve() == tracking_db.resolve():
        raise SpecError(
            spec.source_file,
            "sweep.storage",
            f"{storage!r} is the MLflow store (tracking.uri); MLflow and Optuna both keep an alembic_version table",
            f"another file, e.g. sqlite:///{database.parent / DEFAULT_STORAGE_FILE}, or leave it out for that default",
            value=storage,
        )
    return url


def storage_exists(url: str) -> bool:
    """False for a SQLite or journal file not written yet (opening it would create it)."""
    path = Path(url.removeprefix("journal:")) if url.startswith("journal:") else tracking.sqlite_path(url)
    return path is None or path.is_file()


def open_storage(url: str) -> BaseStorage:
    """The storage behind a `storage_url`: a journal file, or an RDB (SQLite waits for its lock)."""
    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        database = tracking.sqlite_path(url)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
        return RDBStorage(url)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy, Optuna and OS errors alike mean it cannot be used
        raise StudyError(f"sweep.storage {url!r} cannot be opened: {str(error).strip().splitlines()[0]}") from error


def make_sampler(config: SamplerConfig) -> optuna.samplers.BaseSampler:
    if config.type == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.n_startup_trials)


def make_pruner(config: PrunerConfig) -> optuna.pruners.BasePruner:
    if config.type == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps)


def open_study(spec: Spec, url: str) -> optuna.Study:
    """The spec's study in `url`, created on first use; its enqueued trials are added to a new (empty) one."""
    sweep = sweep_of(spec)
    name = study_name(spec)
    study = optuna.create_study(
        storage=open_storage(url),
        study_name=name,
        sampler=make_sampler(sweep.sampler),
        pruner=make_pruner(sweep.pruner),
        direction=sweep.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != sweep.direction:
        raise StudyError(
            f"study {name!r} in {url} was created to {study.direction.name.lower()}; sweep.direction is {sweep.direction} "
            "(name a new study with sweep.study, or use another storage)"
        )
    if not study.get_trials(deepcopy=False):
        for params in sweep.enqueue:
            study.enqueue_trial(params)
    return study


def load_study(spec: Spec, url: str) -> optuna.Study:
    """The spec's existing study (for reading); StudyError when it is not there."""
    return read_study(url, study_name(spec), hint=f" (run `python -m oner_lab.run {spec.source_file}`)")


def read_study(url: str, name: str, hint: str = "") -> optuna.Study:
    """Study `name` in storage `url`, never creating either; StudyError when it is not there."""
    if not storage_exists(url):
        raise StudyError(f"no study yet: {url} does not exist{hint}")
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise StudyError(f"no study {name!r} in {url} yet{hint}") from None


def suggest(trial: Trial, sweep: SweepConfig) -> dict[str, Any]:
    """The trial's value of every search-space key (an enqueued trial gets its fixed values)."""
    params: dict[str, Any] = {}
    for key, param in sweep.space.items():
        if isinstance(param, CategoricalParam):
            params[key] = trial.suggest_categorical(key, param.choices)
        elif isinstance(param, FloatParam):
            params[key] = trial.suggest_float(key, param.low, param.high, log=param.log)
        else:
            params[key] = trial.suggest_int(key, param.low, param.high, log=param.log)
    return params


def trial_config(config: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The tuned run's config with a trial's values set (pydantic's ValidationError if refused)."""
    data = config.model_dump()
    for key, value in params.items():
        data = set_at(data, key.split("."), value)
    return RunConfig.model_validate(data)


def finished_count(trials: list[FrozenTrial]) -> int:
    return sum(trial.state in FINISHED for trial in trials)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, the step it was pruned at, each parameter (columns by key)."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "last step": trial.last_step,
                **trial.params,
            }
        )
    return pd.DataFrame(rows)


def best_trials(study: optuna.Study, top: int = 5) -> pd.DataFrame:
    """The `top` completed trials, best first."""
    frame = trials_frame(study)
    if frame.empty:
        return frame
    done = frame[frame["state"] == TrialState.COMPLETE.name]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return done.sort_values("value", ascending=not maximize).head(top).reset_index(drop=True)


def importances(study: optuna.Study) -> pd.Series:
    """Each parameter's share of the metric's variance over completed trials (Optuna's fANOVA, seeded);
    empty when fewer than two completed trials differ in some parameter."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = [
        key
        for key in {k for trial in completed for k in trial.params}
        if len({repr(trial.params.get(key)) for trial in completed}) > 1
    ]
    if len(completed) < 2 or not varied:
        return pd.Series(dtype=float, name="importance")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, params=sorted(varied))
    return pd.Series(found, name="importance")
