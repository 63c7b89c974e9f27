"""Config sections that name their kind: `{kind: csv, urls: ...}` is validated as the class registered as `csv`.

A family of units (training data sources, eval set formats) has one base class here; each unit is
a subclass declaring its own typed fields and a `Literal` tag, registered with `register`. The base
validates a mapping by its tag through the registry at validation time, so a unit defined outside
the package (a plugin module named in `plugins:`) is accepted like a built-in one. Errors keep the
user's dotted key (`data.source.separator`), and an unknown tag lists the registered ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from oner_lab.spec.section import Section


class Unit(Section):
    """Base of one family of units. Subclasses of a family base set `tag` (the discriminating key),
    `builtins` (the module whose import registers the built-in units) and `units` (the registry)."""

    tag: ClassVar[str]
    builtins: ClassVar[str]
    units: ClassVar[dict[str, type[Unit]]]

    @classmethod
    def family(cls) -> type[Unit]:
        """The family base: the class that owns the registry."""
        for klass in cls.__mro__:
            if "units" in vars(klass):
                return klass
        raise TypeError(f"{cls.__name__} belongs to no unit family")

    @classmethod
    def registered(cls) -> dict[str, type[Unit]]:
        """Every registered unit of the family, built-in ones imported on first use."""
        base = cls.family()
        importlib.import_module(base.builtins)
        return base.units

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        if "units" not in vars(cls) or isinstance(data, BaseModel) or not isinstance(data, dict):
            return handler(data)  # a concrete unit, an instance, or a non-mapping (pydantic reports the type)
        units = cls.registered()
        kind = data.get(cls.tag)
        if kind in units:
            try:
                return units[kind].model_validate(data)
            except ValidationError as error:  # an unknown key is named against this kind's keys, not the family's
                raise ValidationError.from_exception_data(
                    cls.__name__,
                    [_unit_key(problem, cls.tag, kind, units[kind]) for problem in error.errors(include_url=False)],
                ) from None
        problem: InitErrorDetails
        if kind is None:
            problem = {"type": "missing", "loc": (cls.tag,), "input": data}
        else:
            problem = {"type": "literal_error", "loc": (cls.tag,), "input": kind, "ctx": {"expected": ", ".join(units)}}
        raise ValidationError.from_exception_data(cls.__name__, [problem])


UNIT_KEY = "unit_extra_forbidden"
"""The error type of a key the unit does not have; its ctx names the unit (`tag`, `kind`) and its `keys`."""


def _unit_key(problem: Any, tag: str, kind: str, unit: type[BaseModel]) -> InitErrorDetails:
    if problem["type"] != "extra_forbidden":
        return {key: problem[key] for key in ("type", "loc", "input", "ctx") if key in problem}  # type: ignore[return-value]
    keys = ", ".join(name for name, field in unit.model_fields.items() if not field.exclude)
    custom = PydanticCustomError(UNIT_KEY, "not a key of {tag}: {kind}", {"tag": tag, "kind": kind, "keys": keys})
    return {"type": custom, "loc": problem["loc"], "input": problem["input"]}


def register(unit: type[Unit]) -> type[Unit]:
    """Class decorator: make `unit` valid under its tag's default value (`kind: Literal["csv"] = "csv"`)."""
    base = unit.family()
    field = unit.model_fields.get(base.tag)
    kind = field.default if field is not None else None
    if not isinstance(kind, str):
        raise TypeError(f"{unit.__name__}: a unit declares `{base.tag}: Literal[<name>] = <name>`")
    known = base.units.get(kind)
    if known is not None and (known.__module__, known.__qualname__) != (unit.__module__, unit.__qualname__):
        raise ValueError(f"{base.__name__} {kind!r} registered twice ({known.__module__} and {unit.__module__})")
    base.units[kind] = unit
    return unit
