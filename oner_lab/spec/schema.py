"""Walking the spec's type tree by dotted key: which keys exist, which values a leaf allows.

Used for did-you-mean on unknown keys, for checking `--set` paths and grid axes before
anything is merged, and for listing a Literal's choices in messages.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel


@dataclass(frozen=True)
class PartialOf:
    """Annotated marker: this free-form mapping is a partial override of `model()`.

    A callable, so a model can refer to itself (a profile overrides the whole Spec).
    """

    model: Callable[[], type[BaseModel]]


@dataclass(frozen=True)
class DottedKeys:
    """Annotated marker on a mapping whose keys are themselves dotted paths (grid axes)."""


def unwrap(tp: Any) -> Any:
    """Strip Optional and Annotated; a PartialOf mapping stands for its model."""
    if typing.get_origin(tp) is Annotated:
        base, *metadata = typing.get_args(tp)
        for marker in metadata:
            if isinstance(marker, PartialOf):
                return marker.model()
        return unwrap(base)
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(members) == 1:
            return unwrap(members[0])
    return tp


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) is dict or tp is dict


def has_dotted_keys(tp: Any) -> bool:
    """Whether `tp` (before unwrapping) is a mapping keyed by dotted paths."""
    if typing.get_origin(tp) is Annotated:
        return any(isinstance(marker, DottedKeys) for marker in typing.get_args(tp)[1:])
    return False


def family_units(tp: Any) -> list[type[BaseModel]] | None:
    """The registered units of a unit family base (`spec.units.Unit`), None for any other type."""
    from oner_lab.spec.units import Unit

    if is_model(tp) and issubclass(tp, Unit) and "units" in vars(tp):
        return list(tp.registered().values())
    return None


def child(tp: Any, key: str | int) -> Any | None:
    """The type found under `key` inside a value of type `tp`, or None if there is no such key.

    Under a unit family (`data.source`, an eval source) a key is found in any registered unit,
    and the tag (`kind`, `format`) allows the registered names."""
    tp = unwrap(tp)
    units = family_units(tp)
    if units is not None:
        if key == tp.tag:
            return Literal[tuple(tp.registered())]
        owner = next((unit for unit in units if str(key) in unit.model_fields), None)
        return None if owner is None else child(owner, key)
    if is_model(tp):
        field = tp.model_fields.get(str(key))
        if field is None:
            return None
        # pydantic moves a field's own Annotated metadata (our markers too) to `field.metadata`
        return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    if is_mapping(tp):
        args = typing.get_args(tp)
        return args[1] if args else Any
    if typing.get_origin(tp) in (list, tuple) and isinstance(key, int):
        args = typing.get_args(tp)
        return args[0] if args else Any
    if tp is Any:
        return Any
    return None


def type_at(root: Any, path: Sequence[str | int]) -> Any | None:
    """The type at a path below `root`, or None where the path leaves the schema."""
    tp: Any = root
    for key in path:
        tp = child(tp, key)
        if tp is None:
            return None
    return tp


def keys_of(tp: Any) -> list[str]:
    """The keys a user may write in a model (empty for anything that is not a model).

    Fields marked `exclude=True` are set by code (the loader's `source_file`), not by users.
    """
    tp = unwrap(tp)
    units = family_units(tp)
    if units is not None:
        keys = [tp.tag, *(name for unit in units for name in keys_of(unit) if name != tp.tag)]
        return list(dict.fromkeys(keys))
    return [name for name, field in tp.model_fields.items() if not field.exclude] if is_model(tp) else []


def literal_choices(tp: Any) -> list[Any]:
    """The allowed values of a Literal type (empty for any other type)."""
    tp = unwrap(tp)
    return list(typing.get_args(tp)) if typing.get_origin(tp) is Literal else []


def is_leaf(tp: Any) -> bool:
    """A value that is set whole (a number, a string, a list, a free mapping, a unit such as
    `data.source`, which a grid axis may switch between kinds), not a section."""
    return not is_model(unwrap(tp)) or family_units(unwrap(tp)) is not None
