"""Real training sources with random access by sample index: webdataset tar shards, open_clip CSVs and
retrieval JSON (every caption of every image is a sample).

A tar source is indexed once (member offsets, read from tar headers without touching image data)
and the index cached beside the data, keyed by each shard's path, size and mtime; a sample is then
two `os.pread` calls. This is what lets a batch be a pure function of its step (exact resume).
A CSV or JSON source holds its (image path, caption) pairs in memory; image paths are relative to the
file (a JSON's to its `image_root`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tarfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext

from .cache import build_once
from .shards import (
    IMAGE_EXTENSIONS,
    CorruptSample,
    CorruptSampleError,
    OnCorrupt,
    RawSample,
    ShardReadError,
    clean_caption,
)

_GLOB_CHARACTERS = frozenset("*?[")
_REPLACEMENT = "\ufffd"  # what pandas puts for bytes that are not UTF-8
_INDEX_VERSION = 1
_INDEX_FIELDS = ("group", "image_offset", "image_size", "image_ext", "text_offset", "text_size")


def expand_urls(pattern: str) -> list[Path]:
    """Brace-expand `pattern` (`{00000..00331}`), then glob each part that holds a wildcard; sorted, deduplicated.

    Raises FileNotFoundError naming the first expanded path (or glob) that matches no file.
    """
    paths: list[Path] = []
    for part in braceexpand(pattern):
        if _GLOB_CHARACTERS & set(part):
            matches = sorted(glob.glob(part))
            if not matches:
                raise FileNotFoundError(f"{part}: the glob matches no file")
            paths.extend(Path(m) for m in matches)
        elif Path(part).is_file():
            paths.append(Path(part))
        else:
            raise FileNotFoundError(f"{part}: no such file")
    return list(dict.fromkeys(paths))


def url_patterns(urls: str | Sequence[str] | None) -> list[str]:
    if urls is None:
        return []
    return [urls] if isinstance(urls, str) else list(urls)


def files_fingerprint(paths: Sequence[Path], *extra: object) -> str:
    """Hash of the files' resolved paths, sizes and mtimes: a changed file gets a new cache entry."""
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    payload = json.dumps([_INDEX_VERSION, stats, *extra]).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


@dataclass
class SourceStats:
    """What indexing found: usable samples and those skipped (no image, no caption) with where."""

    samples: int
    skipped: int


class TarSource:
    """Webdataset shards: samples `<key>.jpg|jpeg|png|webp` + `<key>.txt`, grouped as webdataset groups them.

    `captions=False` indexes every sample with an image, captioned or not (an image-only source).
    """

    def __init__(self, pattern: str, cache_dir: Path, on_corrupt: OnCorrupt, captions: bool = True) -> None:
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        self.pattern = pattern
        self.shards = expand_urls(pattern)
        self.fingerprint = files_fingerprint(self.shards) if captions else files_fingerprint(self.shards, "images only")
        directory, _ = build_once(
            cache_dir, f"tarindex-{self.fingerprint}", lambda d: _write_index(d, self.shards, on_corrupt, captions)
        )
        with np.load(directory / "index.npz") as index:
            self._index = {name: index[name] for name in _INDEX_FIELDS}
            self.keys = index["key"]
        recorded = json.loads((directory / "index.json").read_text())
        if on_corrupt == "fail":  # an index built by a `skip` run: what it left out still fails this run
            _raise_dropped(recorded, directory)
        self.skipped = recorded["skipped"]
        self.group_starts = np.flatnonzero(np.diff(self._index["group"], prepend=-1))  # first sample of each shard

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, index: int) -> RawSample:
        """The raw sample (`__key__`, `__url__`, image ext -> bytes, `txt` -> bytes) at `index`."""
        i = self._index
        shard = int(i["group"][index])
        fd = self._fd(shard)
        ext = IMAGE_EXTENSIONS[int(i["image_ext"][index])]
        return {
            "__key__": str(self.keys[index]),
            "__url__": str(self.shards[shard]),
            ext: os.pread(fd, int(i["image_size"][index]), int(i["image_offset"][index])),
            "txt": os.pread(fd, int(i["text_size"][index]), int(i["text_offset"][index])),
        }

    def where(self, index: int) -> tuple[str, str]:
        return str(self.shards[int(self._index["group"][index])]), str(self.keys[index])

    def captions(self) -> Iterator[bytes]:
        for index in range(len(self)):
            fd = self._fd(int(self._index["group"][index]))
            yield os.pread(fd, int(self._index["text_size"][index]), int(self._index["text_offset"][index]))

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()


def check_shards(pattern: str, cache_dir: Path, on_corrupt: OnCorrupt, captions: bool = True) -> None:
    """What indexing would refuse, found before any run starts: an unreadable or truncated shard, one
    without a usable sample, and (with `on_corrupt: fail`) a sample indexing drops. Reads the cached
    index when there is one for these exact files, else the tar headers (no image data); writes nothing."""
    shards = expand_urls(pattern)
    fingerprint = files_fingerprint(shards) if captions else files_fingerprint(shards, "images only")
    cached = cache_dir / f"tarindex-{fingerprint}" / "index.json"
    if cached.is_file():
        if on_corrupt == "fail":
            _raise_dropped(json.loads(cached.read_text()), cached.parent)
        return
    _scan(shards, on_corrupt, captions)


def _raise_dropped(recorded: dict, directory: Path) -> None:
    """CorruptSampleError for the first sample an index left out (`on_corrupt: fail`)."""
    dropped = recorded.get("dropped")
    if dropped:
        first = dropped[0]
        more = f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else ""
        raise CorruptSampleError(
            f"{first['shard']}: sample {first['key']!r}: {first['why']}{more} (data.on_corrupt is 'fail')"
        )
    if dropped is None and recorded.get("skipped"):  # an index from before samples were named
        raise CorruptSampleError(
            f"{directory}: indexing skipped {recorded['skipped']} samples (data.on_corrupt is 'fail'); delete this cached "
            "index to have them named"
        )


def _write_index(directory: Path, shards: Sequence[Path], on_corrupt: OnCorrupt, captions: bool) -> None:
    keys, columns, dropped = _scan(shards, on_corrupt, captions)
    arrays = {name: np.asarray(values, dtype=np.int64) for name, values in columns.items()}
    np.savez(directory / "index.npz", key=np.asarray(keys), **arrays)
    record = {"shards": [str(s) for s in shards], "skipped": len(dropped), "dropped": dropped}
    (directory / "index.json").write_text(json.dumps(record))


def _scan(
    shards: Sequence[Path], on_corrupt: OnCorrupt, captions: bool
) -> tuple[list[str], dict[str, list[int]], list[dict[str, str]]]:
    """Sample keys, index columns and the samples left out (shard, key, why) of `shards`, from headers."""
    columns: dict[str, list[int]] = {name: [] for name in _INDEX_FIELDS}
    keys: list[str] = []
    dropped: list[dict[str, str]] = []
    for shard_number, shard in enumerate(shards):
        found = 0
        for key, members in _shard_samples(shard):
            image = next(((e, members[e]) for e in IMAGE_EXTENSIONS if e in members), None)
            why = "no image (expected one of ." + ", .".join(IMAGE_EXTENSIONS) + ")" if image is None else None
            if why is None and captions and "txt" not in members:
                why = "missing .txt caption"
            if why is not None:
                if on_corrupt == "fail":
                    raise CorruptSampleError(f"{shard}: sample {key!r}: {why} (data.on_corrupt is 'fail')")
                dropped.append({"shard": str(shard), "key": key, "why": why})
                continue
            ext, (image_offset, image_size) = image
            text_offset, text_size = members.get("txt", (0, 0))
            for name, value in zip(
                _INDEX_FIELDS,
                (shard_number, image_offset, image_size, IMAGE_EXTENSIONS.index(ext), text_offset, text_size),
                strict=True,
            ):
                columns[name].append(value)
            keys.append(key)
            found += 1
        if found == 0:
            expected = "<key>.jpg|jpeg|png|webp with <key>.txt" if captions else "<key>.jpg|jpeg|png|webp"
            raise ShardReadError(f"{shard}: holds no usable sample (expected webdataset members {expected})")
    return keys, columns, dropped


def _shard_samples(shard: Path) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
    """(key, {ext: (data offset, size)}) per sample, consecutive members sharing a key, from headers only."""
    key: str | None = None
    members: dict[str, tuple[int, int]] = {}
    try:
        size = shard.stat().st_size
        with tarfile.open(shard, mode="r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                if info.offset_data + info.size > size:  # tarfile takes the missing tail for the end of the archive
                    raise ShardReadError(
                        f"{shard}: truncated: member {info.name!r} needs bytes up to {info.offset_data + info.size}, "
                        f"the file has {size} (an interrupted copy or download?)"
                    )
                prefix, suffix = base_plus_ext(info.name)
                if prefix is None:
                    continue
                if prefix != key:
                    if key is not None:
                        yield key, members
                    key, members = prefix, {}
                members[suffix.lower()] = (info.offset_data, info.size)
            _check_end_marker(shard, archive.offset, size)
    except ShardReadError:
        raise
    except (tarfile.TarError, OSError) as error:
        raise ShardReadError(f"{shard}: unreadable tar stream: {error}") from error
    if key is not None:
        yield key, members


def _check_end_marker(shard: Path, end: int, size: int) -> None:
    """A tar ends with two zero blocks; tarfile reads a file cut at a member boundary as a shorter archive."""
    with shard.open("rb") as handle:
        handle.seek(end)
        marker = handle.read(1024)
    if len(marker) < 1024 or marker.count(0) != 1024:
        raise ShardReadError(
            f"{shard}: truncated: no end-of-archive blocks after byte {end} (the file has {size} bytes; an "
            "interrupted copy or download?)"
        )


class _PairListSource:
    """(image file, caption) pairs held in memory; an image is read from its file when its sample is loaded."""

    path: Path
    image_paths: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def load(self, index: int) -> RawSample:
        path = Path(self.image_paths[index])
        url, key = self.where(index)
        where = {"__key__": key, "__url__": url}
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CorruptSample(f"image {path} cannot be read: {error.strerror or error}") from None
        ext = path.suffix.lower().lstrip(".")
        return {**where, (ext if ext in IMAGE_EXTENSIONS else "jpg"): data, "txt": self.texts[index].encode()}

    def where(self, index: int) -> tuple[str, str]:
        raise NotImplementedError

    def captions(self) -> Iterator[bytes]:
        return (text.encode() for text in self.texts)


class CsvSource(_PairListSource):
    """open_clip's CSV/TSV: an image-path column and a caption column; relative paths are relative to the file."""

    def __init__(self, path: str, separator: str, img_key: str, caption_key: str, on_corrupt: OnCorrupt) -> None:
        self.path = Path(path)
        self.fingerprint = files_fingerprint([self.path], separator, img_key, caption_key)
        table = read_csv_columns(self.path, separator, img_key, caption_key)
        self.image_paths = []
        self.texts = []
        self.rows: list[int] = []
        self.skipped = 0
        for row, (image, caption) in enumerate(zip(table[img_key], table[caption_key], strict=True)):
            try:
                text = clean_caption(_strict_utf8(caption, caption_key), f"column {caption_key!r}")
                image_path = _strict_utf8(image, img_key).strip()
                if not image_path:
                    raise CorruptSample(f"column {img_key!r} is empty")
            except CorruptSample as why:
                if on_corrupt == "fail":
                    raise CorruptSampleError(f"{self.path}: row {row + 2}: {why} (data.on_corrupt is 'fail')") from None
                self.skipped += 1
                continue
            self.image_paths.append(str(self.path.parent / image_path))  # an absolute path stays absolute
            self.texts.append(text)
            self.rows.append(row + 2)  # 1-based, after the header line: what an editor shows
        if not self.texts:
            if not self.skipped:
                raise ValueError(f"{self.path}: a header but no data row")
            raise ValueError(f"{self.path}: no usable row ({self.skipped} without image path or caption)")
        self.group_starts = np.arange(len(self.texts))

    def where(self, index: int) -> tuple[str, str]:
        return str(self.path), f"row {self.rows[index]}"


class RetrievalJsonSource(_PairListSource):
    """Every (image, caption) pair of a retrieval JSON (Karpathy's splits, or ALBEF's per-image list) as one sample.

    COCO's Karpathy train + restval is 113,287 images with about 5 captions each (566,747 samples).
    Each pair is its own shard of the epoch order, as a CSV row is: an epoch is a full permutation, so
    two captions of one image rarely share a batch (where ITC would count them as negatives). The
    entries are parsed and checked (structure, splits, image files) by `eval_sources.pair_entries`.
    """

    def __init__(
        self, path: str, fmt: str, image_root: str | None, splits: Sequence[str], on_corrupt: OnCorrupt
    ) -> None:
        from .eval_sources import pair_entries  # eval_sources imports the shard decoder, as this module does

        self.path = Path(path)
        entries = pair_entries(self.path, fmt, image_root, splits)
        self.fingerprint = files_fingerprint(
            [self.path], fmt, str(image_root), list(splits) if fmt == "karpathy" else None
        )
        self.image_paths, self.texts, self.keys = [], [], []
        self.skipped = 0
        for image, captions in entries:
            for number, caption in enumerate(captions):
                try:
                    text = clean_caption(caption, str(number))
                except CorruptSample as why:
                    if on_corrupt == "fail":
                        raise CorruptSampleError(
                            f"{self.path}: image {image}: {why} (data.on_corrupt is 'fail')"
                        ) from None
                    self.skipped += 1
                    continue
                self.image_paths.append(str(image))
                self.texts.append(text)
                self.keys.append(f"{image} caption {number}")
        if not self.texts:
            raise ValueError(f"{self.path}: no usable caption ({self.skipped} empty)")
        self.group_starts = np.arange(len(self.texts))

    def where(self, index: int) -> tuple[str, str]:
        return str(self.path), self.keys[index]


def read_csv_columns(path: Path, separator: str, img_key: str, caption_key: str) -> pd.DataFrame:
    """The two columns as strings ('' where missing); bytes that are not UTF-8 become U+FFFD (the row is then skipped)."""
    try:
        table = pd.read_csv(
            path,
            sep=separator,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8",
            encoding_errors="replace",
            usecols=lambda column: column in (img_key, caption_key),
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise ValueError(f"{path}: not a CSV with separator {separator!r}: {error}") from error
    missing = [key for key in (img_key, caption_key) if key not in table.columns]
    if missing:
        header = pd.read_csv(path, sep=separator, nrows=0, encoding_errors="replace").columns.tolist()
        raise ValueError(
            f"{path}: no column {', '.join(map(repr, missing))} (header has {header}, separator {separator!r})"
        )
    return table


def _strict_utf8(value: str, column: str) -> str:
    if _REPLACEMENT in value:
        raise CorruptSample(f"column {column!r} is not UTF-8")
    return value
