"""Units defined outside the package: modules named in `base.plugins`, and the `oner_lab.plugins` entry points.

Importing such a module registers what it defines (an objective term, a training data source, an
eval set format or scoring task) exactly as a built-in module registers itself. The spec loader
imports them before it validates a spec, and `train.run` before it runs one (a job on another
machine or in a subprocess imports the same names). A package that declares entry points in the
group `oner_lab.plugins` is imported without being named.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

from oner_lab.spec.errors import SpecError

GROUP = "oner_lab.plugins"
_entry_points_loaded = False


def load(names: Iterable[str], *, file: Path | None = None, key: str = "base.plugins") -> None:
    """Import every named module (and, once, every entry point of the group); SpecError naming the key otherwise."""
    _load_entry_points()
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise SpecError(
                file,
                key,
                f"module {name!r} cannot be imported ({error})",
                "dotted names of modules importable here (on PYTHONPATH or installed)",
                value=name,
            ) from None


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=GROUP):
        point.load()


def named_in(spec: object) -> list[str]:
    """Module names a raw (unvalidated) spec mapping lists under `plugins` of its base, its grid
    variants and its profiles, so that every unit they name is registered before validation."""
    found: list[str] = []

    def base_of(node: object) -> None:
        if isinstance(node, dict):
            names = node.get("plugins")
            if isinstance(names, list):
                found.extend(str(name) for name in names)

    if isinstance(spec, dict):
        base_of(spec.get("base"))
        grid = spec.get("grid")
        variants = grid.get("variants") if isinstance(grid, dict) else None
        for override in (variants or {}).values() if isinstance(variants, dict) else ():
            base_of(override)
        profiles = spec.get("profiles")
        for override in (profiles or {}).values() if isinstance(profiles, dict) else ():
            found.extend(named_in(override))
    return list(dict.fromkeys(found))
