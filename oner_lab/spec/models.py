"""The experiment spec: what a YAML file in experiments/ may contain (docs/spec.md shows each section)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, NonNegativeInt, PositiveInt, field_validator

from oner_lab.spec.config import RunConfig, Section
from oner_lab.spec.errors import did_you_mean
from oner_lab.spec.paths import PathStr
from oner_lab.spec.schema import DottedKeys, PartialOf, is_leaf, keys_of, type_at

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
"""Variant and profile names: part of run names (`<variant>/seed0`) and of dotted `--set` paths."""


class TrackingConfig(Section):
    """Where runs are logged. The default is MLflow 3's own default store, so `mlflow ui` finds it."""

    uri: PathStr = Field(
        default="sqlite:///mlflow.db", min_length=1, description="MLflow tracking URI, relative to cwd"
    )
    experiment: str | None = Field(
        default=None, min_length=1, description="MLflow experiment; default: the spec's name"
    )
    outage_window_s: float = Field(
        default=600.0,
        ge=0,
        description="seconds a job keeps training while the store fails (metrics held, retried), then stops at a checkpoint",
    )
    system_metrics: bool = Field(
        default=True,
        description="record MLflow system metrics (CPU, memory, disk, network, GPU) per node (docs/tracking.md)",
    )
    system_metrics_interval_s: float = Field(default=10.0, gt=0, description="seconds between system metrics samples")
    log_weights: bool = Field(
        default=True,
        description="log the final weights (weights/model.safetensors) as an artifact of each finished run",
    )


class LocalConfig(Section):
    """`backend: local`: each run in its own subprocess on this machine."""

    max_parallel: PositiveInt = Field(default=1, description="runs at a time")
    timeout_min: PositiveInt | None = Field(default=None, description="kill a run after this many minutes")


class SlurmConfig(Section):
    """`backend: slurm`: one job array on a cluster described by a cluster profile (docs/slurm.md)."""

    cluster: PathStr = Field(
        default="a100",
        pattern=r"^([A-Za-z0-9][A-Za-z0-9_-]*|.+\.ya?ml)$",
        description="a cluster profile: a name (slurm/<cluster>.yaml) or a path to a .yaml file",
    )
    nodes: PositiveInt = 1
    gpus_per_node: NonNegativeInt | None = Field(default=None, description="default: the cluster profile's")
    tasks_per_node: PositiveInt | None = Field(
        default=None, description="DDP ranks per node; default: gpus_per_node (1 without GPUs); for CPU-only runs"
    )
    time_min: PositiveInt | None = Field(default=None, description="job time limit; default: the cluster profile's")
    max_requeues: NonNegativeInt | None = Field(
        default=None, description="preemption/timeout requeues before a run is FAILED; default: the cluster profile's"
    )


class LauncherConfig(Section):
    """How runs are dispatched; each backend is a submitit executor calling the same `train.run`."""

    backend: Literal["debug", "local", "slurm"] = "local"
    runs_dir: PathStr = Field(default="runs", min_length=1, description="run directories are <runs_dir>/<config_hash>")
    local: LocalConfig = Field(default_factory=LocalConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)


def _axis_key(key: str) -> str:
    """An axis must name one leaf of RunConfig (and not train.seed, which grid.seed owns)."""
    if key == "train.seed":
        raise ValueError("train.seed is set by grid.seed; list the seeds there")
    parts = key.split(".")
    for depth in range(1, len(parts) + 1):
        if type_at(RunConfig, parts[:depth]) is None:
            parent = parts[: depth - 1]
            allowed = keys_of(type_at(RunConfig, parent))
            guess = did_you_mean(parts[depth - 1], allowed)
            hint = f"; did you mean {'.'.join([*parent, guess])!r}?" if guess else ""
            where = ".".join(parent) or "the run config"
            raise ValueError(f"a dotted RunConfig key ({where} has: {', '.join(allowed)}){hint}")
    if not is_leaf(type_at(RunConfig, parts)):
        raise ValueError(f"one key inside the section, e.g. {key}.{keys_of(type_at(RunConfig, parts))[0]}")
    return key


def _axis_values(values: list[Any]) -> list[Any]:
    if not values:
        raise ValueError("a non-empty list of values")
    if len({repr(value) for value in values}) != len(values):
        raise ValueError(f"each value once (got {values})")
    return values


def _name(name: str) -> str:
    if not re.match(NAME_PATTERN, name):
        raise ValueError("letters, digits, '_' and '-', starting with a letter or digit (names are parts of run names)")
    return name


Name = Annotated[str, AfterValidator(_name)]
AxisKey = Annotated[str, AfterValidator(_axis_key)]
AxisValues = Annotated[list[Any], AfterValidator(_axis_values)]
RunOverride = Annotated[dict[str, Any], PartialOf(lambda: RunConfig)]


class GridConfig(Section):
    """The runs: every variant (a partial override of `base`) x every seed x every axis value."""

    variants: dict[Name, RunOverride | None] = Field(min_length=1, description="name -> partial override of base")
    seed: list[NonNegativeInt] = Field(default_factory=lambda: [0], min_length=1, description="sets train.seed")
    axes: Annotated[dict[AxisKey, AxisValues], DottedKeys()] = Field(
        default_factory=dict, description="dotted RunConfig key -> values, crossed with variants and seeds"
    )

    @field_validator("variants")
    @classmethod
    def _empty_override(cls, variants: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
        """`oner:` with nothing under it is the base config unchanged."""
        return {name: override or {} for name, override in variants.items()}

    @field_validator("seed", mode="before")
    @classmethod
    def _one_seed(cls, seed: Any) -> Any:
        """`seed: 3` (or `--set grid.seed=3`) means `[3]`."""
        return [seed] if isinstance(seed, int) and not isinstance(seed, bool) else seed

    @field_validator("seed")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            raise ValueError(f"each seed once (repeated: {repeated})")
        return seeds


class FloatParam(Section):
    """A float in [low, high], log-uniform when `log` (learning rates, temperatures)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntParam(Section):
    """An int in [low, high] (both included), log-uniform when `log`."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False


class CategoricalParam(Section):
    """One of `choices` (strings, numbers, booleans or null)."""

    type: Literal["categorical"]
    choices: Annotated[list[str | bool | int | float | None], AfterValidator(_axis_values)]


def _metric(metric: str) -> str:
    if not re.match(r"^eval/[^/]+/[^/]+$", metric):
        raise ValueError("an eval metric eval/<set>/<metric>, e.g. eval/shapes/rsum")
    return metric


def _storage(storage: str) -> str:
    if not re.match(r"^([a-z][a-z0-9+]*://.+|journal:.+)$", storage):
        raise ValueError("an RDB URL (sqlite:///optuna.db, postgresql://host/db) or journal:<file>")
    return storage


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class SamplerConfig(Section):
    """How a trial's parameters are chosen: TPE (after `n_startup_trials` random ones) or random, seeded."""

    type: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    n_startup_trials: PositiveInt = Field(default=10, description="tpe: random trials before TPE takes over")


class PrunerConfig(Section):
    """When a trial stops early: `median` stops one whose metric at an evaluation step is worse than the
    median of the completed trials at that step; `none` never stops one."""

    type: Literal["median", "none"] = "median"
    n_startup_trials: NonNegativeInt = Field(default=5, description="completed trials before pruning starts")
    n_warmup_steps: NonNegativeInt = Field(default=0, description="training steps before a trial may be pruned")


class SweepConfig(Section):
    """A hyperparameter study over the spec's one grid point (docs/sweep.md)."""

    study: str | None = Field(default=None, min_length=1, description="the Optuna study name; default: the spec's name")
    metric: Annotated[str, AfterValidator(_metric)] = Field(
        description="the eval metric optimised, eval/<set>/<metric>, e.g. eval/shapes/rsum"
    )
    direction: Literal["maximize", "minimize"]
    trials: PositiveInt = Field(description="finished (complete or pruned) trials the study ends with")
    parallel: PositiveInt = Field(default=1, description="trials running at once")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    storage: Annotated[PathStr, AfterValidator(_storage)] | None = Field(
        default=None,
        description="an RDB URL (sqlite:///optuna.db, postgresql://...) or journal:<file> on a shared file system; "
        "default: optuna.db beside the MLflow SQLite store",
    )
    space: Annotated[dict[AxisKey, SearchParam], DottedKeys()] = Field(
        min_length=1, description="dotted RunConfig key -> {type: float|int|categorical, ...}"
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="parameter sets tried first, in order (warm starts); keys from `space`"
    )


SpecOverride = Annotated[dict[str, Any], PartialOf(lambda: Spec)]


class Spec(Section):
    """One experiment: a base run config, the grid of runs around it, and how to track and launch them."""

    name: str = Field(min_length=1, description="the MLflow experiment name unless tracking.experiment is set")
    description: str = ""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    base: RunConfig = Field(default_factory=RunConfig)
    grid: GridConfig
    sweep: SweepConfig | None = Field(default=None, description="tune the grid's one run with Optuna (docs/sweep.md)")
    table: Literal["ablation", "retrieval", "transfer"] = Field(
        default="ablation",
        description="the paper table `run` and `table` print for these runs (docs/analysis.md): ablation, "
        "retrieval (zero-shot and fine-tuned R@1/5/10) or transfer (rows = training data)",
    )
    profiles: dict[Name, SpecOverride] = Field(
        default_factory=dict, description="name -> partial override of this spec"
    )
    source_file: Path = Field(default=Path("<inline>"), exclude=True, description="set by load_spec")
    profile: str | None = Field(default=None, exclude=True, description="the applied profile; set by load_spec")

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, profiles: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, override in profiles.items():
            if "profiles" in override:
                raise ValueError(f"profile {name!r} may not define profiles itself")
        return profiles

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment these runs are logged to."""
        return self.tracking.experiment or self.name

    def run_dir(self, config_hash: str) -> Path:
        """A run's directory (checkpoints, logs): derived from its hash, so configs never collide."""
        return Path(self.launcher.runs_dir) / config_hash
