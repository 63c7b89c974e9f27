"""A run's identity: which config fields make it a different run, and its config hash.

A field changes a run's identity when it changes what is learned or measured. Fields that only
change how or where a run executes (its device, decoding threads, logging and checkpoint cadence)
carry the `OPERATIONAL` marker on the field itself (`Annotated[str, OPERATIONAL]`): they are still
logged as MLflow params but never hashed, so a finished run is found again after moving it from
CPU to GPU or changing its worker count.

Upgrades keep hashes: the canonical form omits every identity field equal to its *baseline*, the
default it had when it entered the scheme, so a field added later with a default that reproduces
the earlier behaviour leaves every existing hash unchanged. A field whose default is changed on
purpose keeps its old baseline on the field (`Annotated[float, Baseline(0.07)]`): runs relying on
the new default then differ from the baseline and get a new hash, runs that wrote the old value
keep theirs. `tests/golden_hashes.json` holds every baseline and every shipped run's hash, so a
default changed without a `Baseline` fails a test instead of silently renaming runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

SCHEME = 2
"""Version of the canonical text; 1 hashed every field, defaults included (`oner_lab.spec.legacy`)."""


@dataclass(frozen=True)
class Operational:
    """Marks a field that changes how a run executes, never what it learns or measures: not hashed."""

    why: str = ""


OPERATIONAL = Operational()


@dataclass(frozen=True)
class Baseline:
    """The value a field had in the hashing scheme before its default was changed on purpose."""

    value: Any


def is_operational(field: FieldInfo) -> bool:
    """Whether the field carries the `Operational` marker."""
    return any(isinstance(item, Operational) for item in field.metadata)


def baseline(field: FieldInfo) -> Any:
    """The field's identity baseline as JSON: its `Baseline` marker, else its default (PydanticUndefined
    for a required field, which is always hashed)."""
    for item in field.metadata:
        if isinstance(item, Baseline):
            return to_jsonable_python(item.value)
    if field.default_factory is not None:
        return to_jsonable_python(field.default_factory())  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return PydanticUndefined
    return to_jsonable_python(field.default)


def canonical(model: BaseModel) -> dict[str, Any]:
    """The model's identity fields that differ from their baselines, as JSON (sections recursively)."""
    out: dict[str, Any] = {}
    dumped = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        if is_operational(field):
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            inner = canonical(value)
            if inner or baseline(field) is None:  # a present optional section counts even when empty
                out[name] = inner
            continue
        if isinstance(value, dict) and any(isinstance(item, BaseModel) for item in value.values()):
            out[name] = {key: canonical(item) if isinstance(item, BaseModel) else item for key, item in value.items()}
            continue
        if dumped[name] != baseline(field):
            out[name] = dumped[name]
    return out


def canonical_text(model: BaseModel, parent_hash: str | None = None) -> str:
    """What is hashed: the scheme line, the canonical JSON (sorted keys), then `parent <hash>` if any."""
    text = f"oner-config {SCHEME}\n" + json.dumps(canonical(model), sort_keys=True, separators=(",", ":"))
    if parent_hash is not None:
        text += f"\nparent {parent_hash}"
    return text


def config_hash(config: BaseModel, parent_hash: str | None = None) -> str:
    """First 12 hex digits of the sha256 of `canonical_text`: the run's name in MLflow and on disk.

    A run that starts from another variant's run (`train.init_from`) folds in that run's hash, so
    changing the parent's config changes the child's.
    """
    return hashlib.sha256(canonical_text(config, parent_hash).encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class FieldRole:
    """One leaf field of a config model: its dotted key, whether it is hashed, its baseline and help."""

    key: str
    identity: bool
    baseline: Any
    why: str


def field_roles(model: type[BaseModel], prefix: str = "") -> Iterator[FieldRole]:
    """Every field of `model` (sections expanded, in declaration order): what docs/spec.md tabulates."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = (
            field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        )
        if section is not None and not is_operational(field):
            yield from field_roles(section, f"{key}.")
            continue
        marker = next((item for item in field.metadata if isinstance(item, Operational)), None)
        yield FieldRole(key, marker is None, baseline(field), marker.why if marker else "")


def roles_markdown(model: type[BaseModel]) -> str:
    """The tables docs/spec.md shows: identity fields per section, then each operational field and why."""
    roles = list(field_roles(model))
    sections: dict[str, list[str]] = {}
    for role in roles:
        section, _, name = role.key.rpartition(".")
        if role.identity:
            sections.setdefault(section, []).append(f"`{name}`")
    lines = ["| section | identity fields (hashed when not at their baseline) |", "|---|---|"]
    lines += [f"| `{section}` | {', '.join(names)} |" for section, names in sections.items()]
    lines += ["", "| operational field (logged, never hashed) | why it does not change the run |", "|---|---|"]
    lines += [f"| `{role.key}` | {role.why} |" for role in roles if not role.identity]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m oner_lab.spec.identity: the tables to paste into docs/spec.md
    from oner_lab.spec import identity  # the package's copy: its markers are the ones config.py uses
    from oner_lab.spec.config import RunConfig

    print(identity.roles_markdown(RunConfig), end="")
