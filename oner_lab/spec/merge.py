"""Deep merge and dotted assignment on plain YAML data (profiles, variants, `--set`, axes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new mapping: `override`'s keys win; where both sides hold a mapping, merge them recursively.

    Lists and scalars are replaced whole (a profile's `seed: [0, 1, 2]` replaces `[0]`).
    Neither input is modified.
    """
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_at(data: Mapping[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
    """A copy of `data` with `value` at `path`, creating missing (or null) mappings on the way.

    Raises TypeError if the path runs through a value that is not a mapping.
    """
    head, *rest = path
    result = dict(data)
    if not rest:
        result[head] = value
        return result
    inner = result.get(head)
    if inner is None:
        inner = {}
    if not isinstance(inner, Mapping):
        raise TypeError(f"{head} holds {inner!r}, not a mapping")
    result[head] = set_at(inner, rest, value)
    return result


def leaf_paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The dotted paths of every non-mapping value (and empty mapping) inside `data`."""
    paths: list[tuple[str, ...]] = []
    for key, value in data.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value:
            paths += leaf_paths(value, path)
        else:
            paths.append(path)
    return paths
