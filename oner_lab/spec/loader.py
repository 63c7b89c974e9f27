"""load_spec: YAML file -> profile -> `--set` overrides -> validated Spec whose every run is checked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from oner_lab import plugins
from oner_lab.spec import schema
from oner_lab.spec.errors import SpecError, did_you_mean, one_of
from oner_lab.spec.merge import deep_merge, leaf_paths, set_at
from oner_lab.spec.models import Spec
from oner_lab.spec.plan import expand_with_notes
from oner_lab.spec.sweep import check_sweep
from oner_lab.spec.validation import NoteFor, validate
from oner_lab.spec.yaml_io import parse_yaml, read_yaml

SET_SYNTAX = "dotted.key=value with a YAML value, e.g. base.train.lr=3e-4, launcher.backend=slurm, grid.seed=[0,1,2]"
LOADER_FIELDS = ("source_file", "profile")


def load_spec(path: str | Path, profile: str | None = None, overrides: Sequence[str] = ()) -> Spec:
    """Load, merge and validate a spec; every problem is a SpecError raised before anything runs.

    The file's top level must be a complete spec (it is the default recipe). Every profile is
    checked too, selected or not, so a broken `paper` profile is found on the laptop, not on
    the cluster. Then `profile` is deep-merged over the top level and each `--set` override
    (`dotted.key=value`, value parsed as YAML) is applied in order. The grid is expanded once
    so that each variant and axis value is known to build a valid RunConfig.
    """
    file = Path(path)
    raw = _read_mapping(file)
    plugins.load(plugins.named_in(raw), file=file)  # their units are valid values of the spec
    sets = [_parse_set(text, file) for text in overrides]
    plain = _build(raw, file, None, _no_note)
    for name, override in plain.profiles.items():
        if name != profile:
            _build(deep_merge(raw, override), file, name, _profile_note(name, override, "while checking"))
    merged, notes = raw, [_no_note]
    if profile is not None:
        override = _profile(plain, profile, file)
        merged, notes = deep_merge(raw, override), [_profile_note(profile, override, "")]
    for text, parts, value in sets:
        parts = _check_set_path(parts, merged, file, text)
        try:
            merged = set_at(merged, parts, value)
        except TypeError as error:
            raise SpecError(
                file,
                ".".join(parts),
                f"cannot be set: {error}",
                "a path through mappings only",
                note=f"in --set {text}",
            ) from None
        notes.append(_set_note(parts, text))
    # where a key was written more than once, the last writer (a later --set) is the one to name
    return _build(merged, file, profile, lambda key: next((n(key) for n in reversed(notes) if n(key)), ""))


def _no_note(key: str) -> str:
    return ""


def _profile(spec: Spec, name: str, file: Path) -> dict[str, Any]:
    if name not in spec.profiles:
        raise SpecError(
            file,
            "--profile",
            f"{name!r} is not a profile of this spec",
            one_of(spec.profiles),
            value=name,
            suggestion=did_you_mean(name, spec.profiles),
        )
    return spec.profiles[name]


def _read_mapping(file: Path) -> dict[str, Any]:
    raw = read_yaml(file)
    if not isinstance(raw, Mapping):
        found = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise SpecError(file, "(top level)", f"is {found}", "a mapping with at least name and grid (see docs/spec.md)")
    for key in LOADER_FIELDS:
        if key in raw:
            flag = "--profile NAME" if key == "profile" else "the path given to load_spec"
            raise SpecError(
                file, key, "is set by the loader, not the file", f"leave it out and use {flag}", value=raw[key]
            )
    return dict(raw)


def _build(data: Mapping[str, Any], file: Path, profile: str | None, note_for: NoteFor) -> Spec:
    spec = validate(Spec, {**data, "source_file": file, "profile": profile}, file=file, note_for=note_for)
    check_sweep(spec, expand_with_notes(spec, note_for=note_for), note_for)
    return spec


def _profile_note(name: str, override: Mapping[str, Any], verb: str) -> NoteFor:
    leaves = [".".join(path) for path in leaf_paths(override)]
    checking = f"{verb} profile {name!r}; every profile is checked on load" if verb else ""

    def note_for(key: str) -> str:
        source = next((leaf for leaf in leaves if _related(key, leaf)), None)
        origin = f"set by profile {name!r} at profiles.{name}.{source}" if source else ""
        return "; ".join(part for part in (checking, origin) if part)

    return note_for


def _set_note(parts: Sequence[str], text: str) -> NoteFor:
    target = ".".join(parts)
    return lambda key: f"set by --set {text}" if _related(key, target) else ""


def _related(key: str, path: str) -> bool:
    """Whether an error at `key` concerns a value written at `path` (the same, above or below it)."""
    return key == path or key.startswith(path + ".") or path.startswith(key + ".")


def _parse_set(text: str, file: Path) -> tuple[str, list[str], Any]:
    key, equals, value_text = text.partition("=")
    parts = key.strip().split(".")
    if not equals or not all(parts):
        raise SpecError(file, "--set", f"{text!r} is not dotted.key=value", SET_SYNTAX, value=text)
    try:
        value = parse_yaml(value_text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(
            file,
            key.strip(),
            f"value {value_text!r} is not valid YAML ({problem})",
            SET_SYNTAX,
            value=value_text,
            note=f"in --set {text}",
        ) from None
    return text, parts, value


def _check_set_path(parts: list[str], data: Mapping[str, Any], file: Path, text: str) -> list[str]:
    """Check a `--set` path against the spec's schema before merging it; return it normalised.

    Any key the schema allows may be set, whether or not the file writes it. Inside
    `grid.variants` only existing variants can be reached into (a misspelt variant would
    otherwise quietly become a new one); `grid.axes.<dotted.key>` takes the rest as one key.
    """
    note = f"in --set {text}"
    if parts[0] in LOADER_FIELDS or parts[0] == "profiles":
        allowed = "use --profile NAME" if parts[0] != "source_file" else "leave it to the loader"
        raise SpecError(file, parts[0], "cannot be set with --set", allowed, note=note)
    tp: Any = Spec
    here: Any = data
    for index, part in enumerate(parts):
        where = parts[:index]
        if schema.has_dotted_keys(tp):
            return [*where, ".".join(parts[index:])]
        section = schema.unwrap(tp)
        found = schema.child(tp, part)
        if found is None:
            if schema.is_model(section):
                allowed = schema.keys_of(section)
                raise SpecError(
                    file,
                    ".".join(parts[: index + 1]),
                    f"unknown key {part!r}",
                    f"the keys of {'.'.join(where) or 'the top level'}: {', '.join(allowed)}",
                    value=part,
                    suggestion=did_you_mean(part, allowed),
                    note=note,
                )
            raise SpecError(
                file, ".".join(parts), f"{'.'.join(where)} is a single value, not a section", "set it whole", note=note
            )
        is_named_entry = schema.is_mapping(section) and schema.is_model(schema.unwrap(found))
        if is_named_entry and index < len(parts) - 1:
            names = list(here) if isinstance(here, Mapping) else []
            if part not in names:
                raise SpecError(
                    file,
                    ".".join(parts[: index + 1]),
                    f"{part!r} does not exist here to set a key inside",
                    f"{one_of(names)} (add a new entry whole: --set {'.'.join(parts[: index + 1])}={{...}})",
                    value=part,
                    suggestion=did_you_mean(part, names),
                    note=note,
                )
        tp = found
        here = here.get(part) if isinstance(here, Mapping) else None
    return parts
