"""Turning pydantic's ValidationError into a SpecError that names file, dotted key and value."""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from oner_lab.spec import schema
from oner_lab.spec.errors import SpecError, did_you_mean, one_of, show
from oner_lab.spec.units import UNIT_KEY

M = TypeVar("M", bound=BaseModel)

NoteFor = Callable[[str], str]


def dotted(parts: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in parts)


def validate(
    model: type[M],
    data: Any,
    *,
    file: Path | None,
    prefix: Sequence[str] = (),
    note_for: NoteFor = lambda key: "",
) -> M:
    """`model.model_validate(data)`, raising SpecError for the first problem found.

    `prefix` is where `data` sits in the spec (e.g. `grid.variants.oner`), so keys are
    reported as the user would find them in the file.
    """
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise to_spec_error(error, model, file=file, prefix=prefix, note_for=note_for) from None


def to_spec_error(
    error: ValidationError,
    model: type[BaseModel],
    *,
    file: Path | None,
    prefix: Sequence[str] = (),
    note_for: NoteFor = lambda key: "",
) -> SpecError:
    # an unknown key first: `nam:` also makes `name` missing, and the typo is the real problem
    problems = sorted(
        error.errors(include_url=False), key=lambda problem: problem["type"] not in ("extra_forbidden", UNIT_KEY)
    )
    first = problems[0]
    loc = [part for part in first["loc"] if not _is_tag(part)]
    key = dotted([*prefix, *loc]) or "(top level)"
    more = [dotted([*prefix, *(part for part in problem["loc"] if not _is_tag(part))]) for problem in problems[1:]]
    note = note_for(key)
    if more:
        extra = f"{len(more)} more problem{'s' if len(more) > 1 else ''}: {', '.join(more[:4])}"
        note = f"{note}; {extra}" if note else extra
    return describe(first, model, loc, key, file, note)


def _is_tag(part: Any) -> bool:
    """Pydantic's loc tags that are not keys: '[key]' (an invalid mapping key), 'function-after[...]'."""
    return isinstance(part, str) and part.endswith("]") and "[" in part


def describe(
    problem: dict[str, Any], model: type[BaseModel], loc: list[Any], key: str, file: Path | None, note: str
) -> SpecError:
    kind = problem["type"]
    value = problem.get("input")
    if kind == "extra_forbidden":
        parent = schema.type_at(model, loc[:-1])
        allowed = schema.keys_of(parent) if parent is not None else []
        where = dotted(key.split(".")[:-1]) or "the top level"
        return SpecError(
            file,
            key,
            f"unknown key {loc[-1]!r} (its value: {show(value)})",
            f"the keys of {where}: {', '.join(allowed)}",
            value=value,
            suggestion=did_you_mean(loc[-1], allowed),
            note=note,
        )
    if kind == UNIT_KEY:  # a key the unit's kind does not have (data.source, an eval source)
        ctx = problem["ctx"]
        allowed = [name for name in ctx["keys"].split(", ") if name]
        return SpecError(
            file,
            key,
            f"unknown key {loc[-1]!r} for {ctx['tag']}: {ctx['kind']} (its value: {show(value)})",
            f"the keys of {ctx['tag']} {ctx['kind']}: {', '.join(allowed)}",
            value=value,
            suggestion=did_you_mean(loc[-1], allowed),
            note=note,
        )
    if kind == "missing" and loc and isinstance(loc[-1], int):  # a fixed-length tuple given too few items
        arity = len(typing.get_args(schema.unwrap(schema.type_at(model, loc[:-1]))))
        parent = key.rsplit(".", 1)[0]
        problem_text = f"{show(value)} has too few items"
        return SpecError(file, parent, problem_text, f"exactly {arity} items", value=value, note=note)
    if kind == "missing":
        keys = schema.keys_of(schema.type_at(model, loc))
        parent = schema.unwrap(schema.type_at(model, loc[:-1]))
        field = parent.model_fields.get(str(loc[-1])) if schema.is_model(parent) else None
        if keys:
            allowed = f"a mapping with keys {', '.join(keys)}"
        else:
            allowed = (field.description if field and field.description else "a value") + " (see docs/spec.md)"
        return SpecError(file, key, "is required but missing", allowed, note=note)
    if kind == "too_short":
        count = problem.get("ctx", {}).get("min_length", 1)
        allowed = f"at least {count} entr{'y' if count == 1 else 'ies'}"
        return SpecError(file, key, f"{show(value)} is too short", allowed, value=value, note=note)
    if kind == "literal_error":
        choices = schema.literal_choices(schema.type_at(model, loc))
        return SpecError(
            file,
            key,
            f"{show(value)} is not allowed",
            one_of(choices) if choices else problem["msg"],
            value=value,
            suggestion=did_you_mean(value, choices) if isinstance(value, str) else None,
            note=note,
        )
    message = problem["msg"]
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    else:
        message = message.removeprefix("Input should be ")
        message = message[:1].lower() + message[1:]
    return SpecError(file, key, f"{show(value)} is not allowed", message, value=value, note=note)
