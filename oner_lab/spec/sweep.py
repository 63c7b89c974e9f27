"""Checks of a spec's `sweep` section against the run it tunes: one grid point, every bound,
choice and enqueued value a valid value of its RunConfig key. Called by the loader, so a bad
search space is refused on load (every profile included), before any trial starts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from oner_lab.spec import schema
from oner_lab.spec.config import RunConfig
from oner_lab.spec.errors import SpecError, one_of, show
from oner_lab.spec.merge import set_at
from oner_lab.spec.models import CategoricalParam, FloatParam, IntParam, SearchParam, Spec
from oner_lab.spec.plan import PlannedRun
from oner_lab.spec.validation import NoteFor, describe


def check_sweep(spec: Spec, runs: Sequence[PlannedRun], note_for: NoteFor = lambda key: "") -> None:
    """Raises SpecError for a sweep that cannot run: several grid points, a bound or choice the run
    config refuses, a float range on an int key, an enqueued set outside the space."""
    sweep = spec.sweep
    if sweep is None:
        return
    file = spec.source_file
    if len(runs) != 1:
        raise SpecError(
            file,
            "grid",
            f"has {len(runs)} runs ({', '.join(run.run_name for run in runs[:4])}{', ...' if len(runs) > 4 else ''})",
            "exactly one grid point with a sweep section (one variant, one seed, no axes): the study tunes that run",
            note=note_for("grid"),
        )
    config = runs[0].config.model_dump()
    for key, param in sweep.space.items():
        where = f"sweep.space.{key}"
        if isinstance(param, FloatParam) and schema.unwrap(schema.type_at(RunConfig, key.split("."))) is int:
            raise SpecError(
                file,
                f"{where}.type",
                f"'float' for an integer key ({key})",
                "type: int",
                value="float",
                note=note_for(where),
            )
        if not isinstance(param, CategoricalParam):
            _check_bounds(param, where, file, note_for(where))
        for label, value in _values_to_check(param):
            _check_value(config, key, value, f"{where}.{label}", file, note_for(where))
    for index, fixed in enumerate(sweep.enqueue):
        for key, value in fixed.items():
            where = f"sweep.enqueue.{index}.{key}"
            if key not in sweep.space:
                raise SpecError(
                    file,
                    where,
                    f"{key!r} is not a key of sweep.space",
                    one_of(sweep.space),
                    value=key,
                    note=note_for(where),
                )
            _check_in_space(sweep.space[key], value, where, file, note_for(where))
            _check_value(config, key, value, where, file, note_for(where))


def _check_bounds(param: FloatParam | IntParam, where: str, file: Any, note: str) -> None:
    if param.low > param.high:
        raise SpecError(
            file,
            f"{where}.low",
            f"{param.low} is above high ({param.high})",
            f"at most {param.high}",
            value=param.low,
            note=note,
        )
    if param.log and param.low <= 0:
        raise SpecError(
            file,
            f"{where}.low",
            f"{param.low} with log: true",
            "a number > 0 (or log: false)",
            value=param.low,
            note=note,
        )


def _values_to_check(param: SearchParam) -> list[tuple[str, Any]]:
    if isinstance(param, CategoricalParam):
        return [(f"choices.{index}", choice) for index, choice in enumerate(param.choices)]
    return [("low", param.low), ("high", param.high)]


def _check_in_space(param: SearchParam, value: Any, where: str, file: Any, note: str) -> None:
    if isinstance(param, CategoricalParam):
        if value not in param.choices:
            raise SpecError(
                file, where, f"{show(value)} is not one of its choices", one_of(param.choices), value=value, note=note
            )
        return
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (param.type == "int" and not isinstance(value, int)) or not param.low <= value <= param.high:
        allowed = f"{'an int' if param.type == 'int' else 'a number'} in [{param.low}, {param.high}]"
        raise SpecError(file, where, f"{show(value)} is outside the search space", allowed, value=value, note=note)


def _check_value(config: dict[str, Any], key: str, value: Any, where: str, file: Any, note: str) -> None:
    """The run config with `key` set to `value` must validate; the error names `where`."""
    try:
        RunConfig.model_validate(set_at(config, key.split("."), value))
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]
        raise describe(problem, RunConfig, list(problem["loc"]), where, file, note) from None
