"""Expanding a spec's grid into planned runs, each with its resolved config and config hash."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import yaml
from pydantic import ValidationError

from oner_lab.spec.config import RunConfig
from oner_lab.spec.errors import SpecError, did_you_mean, one_of, show
from oner_lab.spec.identity import config_hash
from oner_lab.spec.merge import deep_merge, set_at
from oner_lab.spec.models import NAME_PATTERN, Spec
from oner_lab.spec.validation import NoteFor, describe, to_spec_error, validate
from oner_lab.spec.yaml_io import parse_yaml


def names_variant(init_from: str) -> bool:
    """Whether `train.init_from` names a grid variant (a variant name) rather than a checkpoint path."""
    return re.fullmatch(NAME_PATTERN, init_from) is not None


def format_axis_value(value: object) -> str:
    """How an axis value is written in a run name: strings bare, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class PlannedRun:
    """One grid point: which variant, seed and axis values, and the full config it runs."""

    variant: str
    seed: int
    axes: dict[str, object]
    config: RunConfig
    config_hash: str
    parent: PlannedRun | None = None
    """The run of variant `train.init_from` with this run's seed and axes, which this one starts from."""

    @property
    def run_name(self) -> str:
        """`<variant>/seed<seed>`, then `/<axis>=<value>` per axis: the MLflow run name."""
        parts = [self.variant, f"seed{self.seed}"]
        parts += [f"{key}={format_axis_value(value)}" for key, value in self.axes.items()]
        return "/".join(parts)


def expand(spec: Spec, only: Mapping[str, str] | None = None) -> list[PlannedRun]:
    """Every run of the spec: variants (file order) x seeds (listed order) x axes (crossed in order).

    `only` keeps the runs matching every given `key=value` (keys: variant, seed, or an axis
    key), as the CLI's `--only variant=oner,seed=0`; a key or value that matches nothing is a
    SpecError, so a typo never silently selects zero runs. Two grid points that resolve to the
    same run config are a SpecError too: they would share one run directory and MLflow run.
    """
    return expand_with_notes(spec, only)


def expand_with_notes(
    spec: Spec, only: Mapping[str, str] | None = None, note_for: NoteFor = lambda key: ""
) -> list[PlannedRun]:
    """`expand`, adding `note_for(key)` to error messages (the loader says where a bad value came from)."""
    selection = _Selection.parse(spec, only or {})
    runs: list[PlannedRun] = []
    for variant, override in spec.grid.variants.items():
        variant_config = deep_merge(spec.base.model_dump(), override)
        prefix = ("grid", "variants", variant)
        validate(RunConfig, variant_config, file=spec.source_file, prefix=prefix, note_for=note_for)
        for seed in spec.grid.seed:
            seeded = set_at(variant_config, ["train", "seed"], seed)
            for point in itertools.product(*spec.grid.axes.values()):
                axes = dict(zip(spec.grid.axes, point))
                config = _with_axes(spec, seeded, axes, note_for)
                runs.append(PlannedRun(variant, seed, axes, config, config_hash(config)))
    runs = _link_parents(spec, runs, note_for)
    _check_distinct(spec, runs)
    return [run for run in runs if selection.keeps(run)]


def _point(run: PlannedRun) -> tuple[str, int, str]:
    return run.variant, run.seed, repr(list(run.axes.values()))


def _link_parents(spec: Spec, runs: list[PlannedRun], note_for: NoteFor) -> list[PlannedRun]:
    """Each run whose `train.init_from` names a variant gets that variant's run of the same seed and
    axes as `parent`, and a hash folding in the parent's. A name that is no variant, a variant
    starting from itself and a cycle of variants are SpecErrors at the key that set it."""
    by_point = {_point(run): run for run in runs}
    linked: dict[tuple[str, int, str], PlannedRun] = {}

    def link(run: PlannedRun, chain: tuple[str, ...]) -> PlannedRun:
        point = _point(run)
        if point in linked:
            return linked[point]
        init_from = run.config.train.init_from
        if init_from is None or not names_variant(init_from):
            linked[point] = run
            return run
        key = _init_from_key(spec, run)
        allowed = "the name of another grid variant, or a path to a .pt checkpoint (with a '/' or '.pt')"
        if init_from == run.variant:
            raise SpecError(
                spec.source_file,
                key,
                f"variant {run.variant!r} starts from itself",
                allowed,
                value=init_from,
                note=note_for(key),
            )
        if init_from not in spec.grid.variants:
            raise SpecError(
                spec.source_file,
                key,
                f"{init_from!r} is not a variant of this spec",
                f"{one_of(spec.grid.variants)}; or {allowed}",
                value=init_from,
                suggestion=did_you_mean(init_from, spec.grid.variants),
                note=note_for(key),
            )
        if init_from in chain:
            cycle = " -> ".join([*chain[chain.index(init_from) :], run.variant, init_from])
            raise SpecError(
                spec.source_file,
                key,
                f"variants start from each other in a cycle ({cycle})",
                "a chain of train.init_from that ends at a variant trained from scratch",
                value=init_from,
                note=note_for(key),
            )
        parent = link(by_point[(init_from, run.seed, point[2])], (*chain, run.variant))
        linked[point] = replace(run, parent=parent, config_hash=config_hash(run.config, parent.config_hash))
        return linked[point]

    return [link(run, ()) for run in runs]


def _init_from_key(spec: Spec, run: PlannedRun) -> str:
    """Where the run's `train.init_from` was written: an axis, its variant, or base."""
    if "train.init_from" in run.axes:
        return "grid.axes.train.init_from"
    if "init_from" in (spec.grid.variants[run.variant].get("train") or {}):
        return f"grid.variants.{run.variant}.train.init_from"
    return "base.train.init_from"


def _with_axes(spec: Spec, config: dict[str, Any], axes: dict[str, object], note_for: NoteFor) -> RunConfig:
    for key, value in axes.items():
        config = set_at(config, key.split("."), value)
    try:
        return RunConfig.model_validate(config)
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]
        bad_key = ".".join(str(part) for part in problem["loc"])
        axis = next((key for key in axes if bad_key == key or bad_key.startswith(key + ".")), None)
        if axis is None:  # the variant alone validated, so an axis is to blame; kept so no error is lost
            raise to_spec_error(error, RunConfig, file=spec.source_file, note_for=note_for) from None
        key = f"grid.axes.{axis}"
        raise describe(problem, RunConfig, list(problem["loc"]), key, spec.source_file, note_for(key)) from None


def _check_distinct(spec: Spec, runs: list[PlannedRun]) -> None:
    first_with: dict[str, PlannedRun] = {}
    for run in runs:
        twin = first_with.setdefault(run.config_hash, run)
        if twin is not run:
            if twin.variant != run.variant:
                key = f"grid.variants.{run.variant}"
            else:  # same variant and seed, so some axis value differs in spelling only (1 and 1.0)
                key = "grid.axes." + next(
                    axis for axis, value in run.axes.items() if repr(value) != repr(twin.axes[axis])
                )
            raise SpecError(
                spec.source_file,
                key,
                f"runs {twin.run_name} and {run.run_name} resolve to the same run config (hash {run.config_hash})",
                "grid points whose run configs differ; drop the duplicate variant or axis value",
            )


@dataclass(frozen=True)
class _Selection:
    """What `--only` lets through: variant names, seeds, and for each filtered axis its kept values."""

    variants: set[str]
    seeds: set[int]
    axes: dict[str, list[object]]

    @classmethod
    def parse(cls, spec: Spec, only: Mapping[str, str]) -> _Selection:
        """Check every `only` key and value against the grid."""
        file = spec.source_file
        selection = cls(set(spec.grid.variants), set(spec.grid.seed), {})
        keys = ["variant", "seed", *spec.grid.axes]
        for key, text in only.items():
            if key == "variant":
                if text not in spec.grid.variants:
                    raise SpecError(
                        file,
                        "--only variant",
                        f"{text!r} is not a variant of this spec",
                        one_of(spec.grid.variants),
                        value=text,
                        suggestion=did_you_mean(text, spec.grid.variants),
                    )
                selection.variants.intersection_update({text})
            elif key == "seed":
                seed = _parse_value(text)
                if isinstance(seed, bool) or seed not in spec.grid.seed:
                    raise SpecError(
                        file, "--only seed", f"{text!r} is not a seed of grid.seed", one_of(spec.grid.seed), value=text
                    )
                selection.seeds.intersection_update({seed})
            elif key in spec.grid.axes:
                values = spec.grid.axes[key]
                wanted = _parse_value(text)
                kept = [value for value in values if value == wanted or format_axis_value(value) == text]
                if not kept:
                    raise SpecError(
                        file,
                        f"--only {key}",
                        f"{text!r} is not a value of grid.axes.{key}",
                        one_of(format_axis_value(value) for value in values),
                        value=text,
                    )
                selection.axes[key] = kept
            else:
                raise SpecError(
                    file, "--only", f"unknown key {key!r}", one_of(keys), value=key, suggestion=did_you_mean(key, keys)
                )
        return selection

    def keeps(self, run: PlannedRun) -> bool:
        """Whether the run matches every `--only` pair."""
        return (
            run.variant in self.variants
            and run.seed in self.seeds
            and all(repr(run.axes[key]) in {repr(value) for value in kept} for key, kept in self.axes.items())
        )


def _parse_value(text: str) -> object:
    """An `--only` value read as YAML (so `seed=0` is 0 and `train.lr=3e-4` is 0.0003)."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError:
        return text


_ITEM = re.compile(r",\s*(?=[A-Za-z_][\w.]*\s*=)")


def parse_only(text: str) -> dict[str, str]:
    """`"variant=oner,seed=0"` -> `{"variant": "oner", "seed": "0"}`; values stay text until `expand` checks them."""
    selection: dict[str, str] = {}
    for item in _ITEM.split(text.strip()):
        key, equals, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not key or not value:
            raise SpecError(
                None,
                "--only",
                f"{item!r} is not key=value",
                "comma-separated key=value pairs, e.g. variant=oner,seed=0",
                value=text,
            )
        if key in selection:
            raise SpecError(
                None,
                "--only",
                f"{key!r} is given twice ({show(text)})",
                "each key once; run twice for two values",
                value=text,
            )
        selection[key] = value
    return selection
