"""Counts kept on disk, so that a config is counted once per version of the code, not once per process.

`cost.count` replays a whole training step on meta tensors: about 12 s per ViT-B/16 config on a
2-core CPU (most of it torch's Python shape functions for element-wise ops, one per op). A dry run,
each SLURM submission, and each training job (its `cost.*` params) are separate processes that count
the same configs again; an ablation of six variants pays over a minute before it is submitted.

An entry is keyed by what the count depends on: the config without its seed, the vocabulary size,
the versions of torch and timm, and a fingerprint of the code that builds and runs the step (every
source file of the `oner_lab` package, and the files of the objective terms the config trains,
plugins included). Change any of them and the entry is not found; the count runs and writes a new one.

Where: `$ONER_COST_CACHE` (a directory, or `off` to count every time), else
`$XDG_CACHE_HOME/oner_lab/cost`, else `~/.cache/oner_lab/cost`. Entries are small JSON files written
atomically; one that cannot be read or does not hold a whole count is counted again and replaced, and
a directory that cannot be written (read-only, full) only means the count is not kept.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import timm
import torch

log = logging.getLogger(__name__)

ENV = "ONER_COST_CACHE"
OFF = "off"
_PACKAGE = Path(__file__).resolve().parent


def directory() -> Path | None:
    """Where entries are kept, or None when `$ONER_COST_CACHE` is `off`."""
    chosen = os.environ.get(ENV)
    if chosen == OFF:
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    if base.startswith("~"):  # no home directory known: nowhere to keep counts
        return None
    return Path(base) / "oner_lab" / "cost"


@functools.cache
def package_fingerprint() -> str:
    """sha256 over every source file of the package, by its relative path: any edit changes it."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _module_files(modules: Iterable[str]) -> list[Path] | None:
    """Source files of the named modules that live outside the package (plugins); the package is hashed
    whole. None when one has no file to read (defined in a notebook or `__main__`): nothing to key it by."""
    files = set()
    for name in modules:
        file = getattr(sys.modules.get(name), "__file__", None)
        if not file or not Path(file).is_file():
            return None
        if not Path(file).resolve().is_relative_to(_PACKAGE):
            files.add(Path(file).resolve())
    return sorted(files)


def key(config_json: str, vocab_size: int, term_modules: Iterable[str]) -> str | None:
    """The entry's name: a digest of the config, the vocabulary, the libraries and the code; None when a
    term's code cannot be read, so that its count is never kept."""
    files = _module_files(term_modules)
    if files is None:
        return None
    digest = hashlib.sha256()
    for part in (config_json, str(vocab_size), torch.__version__, timm.__version__, package_fingerprint()):
        digest.update(part.encode() + b"\0")
    for path in files:
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def load(name: str, fields: Iterable[str]) -> dict[str, int] | None:
    """The kept count `name` if its file holds an integer for every one of `fields`, else None."""
    folder = directory()
    if folder is None:
        return None
    path = folder / f"{name}.json"
    try:
        values: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("cost cache %s cannot be read (%s); counting again", path, error)
        return None
    wanted = list(fields)
    if not isinstance(values, dict) or not all(type(values.get(field)) is int for field in wanted):
        log.warning("cost cache %s does not hold a whole count; counting again", path)
        return None
    return {field: values[field] for field in wanted}


def store(name: str, values: dict[str, int]) -> None:
    """Keep `values` under `name`: written to a temporary file and renamed, so a reader sees all or nothing."""
    folder = directory()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(values, file)
            os.replace(temporary, folder / f"{name}.json")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        log.info("cost cache %s cannot be written (%s); the count is not kept", folder, error)


def kept(name: str | None, fields: Iterable[str], count: Callable[[], dict[str, int]]) -> dict[str, int]:
    """The entry `name` if it is kept whole, else `count()`, kept for the next process (not when `name`
    is None: `key` found nothing to key it by)."""
    if name is None:
        return count()
    wanted = list(fields)
    found = load(name, wanted)
    if found is not None:
        return found
    values = count()
    store(name, values)
    return values


__all__ = ["ENV", "OFF", "directory", "key", "kept", "load", "package_fingerprint", "store"]
