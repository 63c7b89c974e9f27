"""A decoded copy of a shard directory's samples, so that only the first run pays for reading them.

Why: the built-in training split is 20,000 PNGs in tar shards. Reading them back took 11.6 s of one
core alone, 34-36 s beside another training run (tar headers about half, PNG decoding most of the
rest), in each of the default ablation's 18 runs. The copy holds the decoded images (uint8, one
`.npy`) and each sample's other field (JSON). It is made under the data cache, beside the shards,
and keyed by each shard's path, size and modification time (`sources.files_fingerprint`): a shard
rewritten or corrupted after the copy was made gets a new key and is decoded again.

Decoding runs under the copy's build lock (`cache.build_once`): when two runs start together (the
default ablation runs two at a time), the second sleeps until the first's copy is there instead of
decoding the same shards beside it. Its wait is no shorter (36-38 s in the ablation, where the first
run also generates the shards), but it takes no core from the first.

A copy is made only when no sample was skipped, so a run that reads it gets exactly what decoding
would give under either `data.on_corrupt`. A copy that cannot be read (a torn write on a failing
disk, a hand edit) is set aside with a warning and made again. A full disk costs the next run a
decode, never this run its data. Loading never unpickles (`allow_pickle=False`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cache import build_once
from .shards import OnCorrupt, RawSample, ShardReadError, read_shards
from .sources import files_fingerprint

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_COPY_BYTES = 1 << 30
"""Images past 1 GiB (the built-in data at 224 px is 3 GB) are decoded in every run instead of copied."""
IMAGES, FIELDS = "images.npy", "fields.json"


def read_decoded(
    root: Path,
    shards: Sequence[Path],
    decode: Callable[[RawSample], tuple[np.ndarray, Any]],
    on_corrupt: OnCorrupt,
    what: str,
) -> tuple[np.ndarray, list[Any], int]:
    """`read_shards(shards, decode, on_corrupt)` as (images uint8 [N, 3, S, S], fields, skipped),
    through a decoded copy under `root`. `what` names the decoding (the split and image size):
    another decoding of the same shards gets its own copy."""
    name = f"decoded-{what}-{files_fingerprint(shards, 'decoded', FORMAT_VERSION)[:12]}"
    directory = root / name
    if directory.is_dir():
        loaded = _load(directory)
        if loaded is not None:
            return loaded[0], loaded[1], 0
        _set_aside(directory)
    decoded: list[tuple[np.ndarray, list[Any], int]] = []

    def build(temporary: Path) -> None:
        decoded.append(_decode(shards, decode, on_corrupt))
        images, fields, skipped = decoded[0]
        if skipped or not fields or images.nbytes > MAX_COPY_BYTES:
            raise _NotKept
        _write(temporary, images, fields)

    try:
        path, built = build_once(root, name, build)
    except _NotKept:
        return decoded[0]
    except ShardReadError:
        raise
    except OSError as error:  # a full or read-only disk: this run has its data, the next decodes again
        if not decoded:  # the lock file could not be made
            decoded.append(_decode(shards, decode, on_corrupt))
        log.warning("could not keep a decoded copy of %s in %s (%s); later runs decode the shards", what, root, error)
        return decoded[0]
    if built:
        return decoded[0]
    loaded = _load(path)  # another run made it while this one waited for the lock
    if loaded is None:  # made and then damaged: the next run makes it again
        _set_aside(path)
        return _decode(shards, decode, on_corrupt)
    return loaded[0], loaded[1], 0


def _decode(
    shards: Sequence[Path], decode: Callable[[RawSample], tuple[np.ndarray, Any]], on_corrupt: OnCorrupt
) -> tuple[np.ndarray, list[Any], int]:
    samples, skipped = read_shards(shards, decode, on_corrupt)
    images = np.stack([image for image, _ in samples]) if samples else np.zeros((0, 3, 0, 0), np.uint8)
    return images, [field for _, field in samples], skipped


class _NotKept(Exception):
    """Raised inside the build when the decoded samples are not to be kept, so that nothing is renamed into place."""


def _write(directory: Path, images: np.ndarray, fields: list[Any]) -> None:
    try:
        np.save(directory / IMAGES, images, allow_pickle=False)
        (directory / FIELDS).write_text(json.dumps(fields))
    except OSError as error:  # numpy's own message ("problem writing element N") names neither file nor cause
        free = shutil.disk_usage(directory).free
        raise OSError(f"writing {images.nbytes:,} bytes of images failed with {free:,} bytes free: {error}") from error


def _load(directory: Path) -> tuple[np.ndarray, list[Any]] | None:
    """The copy's images and fields, or None (with a warning naming the file) when it cannot be used."""
    try:
        images = np.load(directory / IMAGES, allow_pickle=False)
        fields = json.loads((directory / FIELDS).read_text())
        if images.dtype != np.uint8 or images.ndim != 4 or not isinstance(fields, list) or len(fields) != len(images):
            raise ValueError(f"{len(fields)} fields for images {images.dtype} {images.shape}")
    except (OSError, ValueError, EOFError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("unreadable decoded copy %s (%s): set aside, the shards are decoded again", directory, error)
        return None
    return images, fields


def _set_aside(directory: Path) -> None:
    """Move an unreadable copy out of the way atomically; the next build under the lock deletes it."""
    try:
        os.rename(directory, directory.parent / f".tmp-{directory.name}-unreadable-{uuid.uuid4().hex[:8]}")
    except OSError:
        pass  # another run set it aside first


__all__ = ["MAX_COPY_BYTES", "read_decoded"]
