"""Unpaired training data: captions without images (trained with MLM only) and images without captions (MIM only).

`data.text_only` names plain-text files of one caption per line; `data.image_only` names webdataset
shards (a caption, if any, is ignored) or directories of image files. Each step draws
`batch_size` unpaired samples beside the paired batch by the paired stream's rule (indexed_stream.py):
a pure function of (seed, step), so resuming is exact; each rank takes its contiguous rows; every
source is visited in a fresh order each epoch; a corrupt sample is skipped, counted and replaced by
the next one. Their order and crops come from a seed derived from the run's, so they are
independent of the paired rows'.
"""

from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from oner_lab.contract import ConfigError
from oner_lab.host_copy import to_device
from oner_lab.seeds import DataStream
from oner_lab.spec.config import DataConfig, UnpairedSourceConfig

from .indexed_stream import IndexedStream
from .memory_stream import augmented_views
from .shards import IMAGE_EXTENSIONS, CorruptSample, OnCorrupt, RawSample, decode_image, decode_text
from .sources import TarSource, expand_urls, files_fingerprint, url_patterns
from .tokenizer import TextTokenizer

# ---- sources -------------------------------------------------------------------------------


class TextLinesSource:
    """The non-blank lines of the files a pattern matches, each a caption; a caption is one `os.pread`.

    Only line offsets are held (16 bytes a caption: CC3M's 3.3M captions take ~50 MB).
    """

    def __init__(self, pattern: str) -> None:
        self.files = expand_urls(pattern)
        self.fingerprint = files_fingerprint(self.files, "text lines")
        starts, sizes, lines, file_starts = array("q"), array("i"), array("i"), []
        for path in self.files:
            file_starts.append(len(starts))
            offset = 0
            with path.open("rb") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():  # blank lines are layout, not captions: left out, not counted
                        starts.append(offset)
                        sizes.append(len(line.rstrip(b"\r\n")))
                        lines.append(number)
                    offset += len(line)
            if len(starts) == file_starts[-1]:
                raise ConfigError(
                    "data.text_only.urls", str(path), "a text file with one caption per line; it has none"
                )
        self._starts, self._sizes, self._lines = (np.asarray(a) for a in (starts, sizes, lines))
        self._file_starts = np.asarray(file_starts)
        self.group_starts = np.arange(len(self._starts))  # a line is its own shard: each epoch a full permutation
        self.skipped = 0
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._starts)

    def load(self, index: int) -> RawSample:
        file = self._file(index)
        url, key = self.where(index)
        return {
            "__key__": key,
            "__url__": url,
            "txt": os.pread(self._fd(file), int(self._sizes[index]), int(self._starts[index])),
        }

    def where(self, index: int) -> tuple[str, str]:
        return str(self.files[self._file(index)]), f"line {self._lines[index]}"

    def captions(self) -> Iterator[bytes]:
        """Every caption in file order, read sequentially (the tokenizer's training corpus)."""
        for path in self.files:
            with path.open("rb") as handle:
                yield from (line.rstrip(b"\r\n") for line in handle if line.strip())

    def _file(self, index: int) -> int:
        return int(np.searchsorted(self._file_starts, index, side="right")) - 1

    def _fd(self, file: int) -> int:
        with self._lock:
            if file not in self._fds:
                self._fds[file] = os.open(self.files[file], os.O_RDONLY)
            return self._fds[file]

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)


class ImageFolderSource:
    """Every image file (.png, .jpg, .jpeg, .webp, any case) below a directory, recursively, in sorted path order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.paths = sorted(image_files(directory))
        if not self.paths:
            raise ConfigError(
                "data.image_only.urls",
                str(directory),
                f"a directory holding image files (.{', .'.join(IMAGE_EXTENSIONS)})",
            )
        self.group_starts = np.arange(len(self.paths))
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> RawSample:
        path = self.paths[index]
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CorruptSample(f"image {path} cannot be read: {error.strerror or error}") from None
        url, key = self.where(index)
        return {"__key__": key, "__url__": url, path.suffix.lower().lstrip("."): data}

    def where(self, index: int) -> tuple[str, str]:
        return str(self.directory), str(self.paths[index].relative_to(self.directory))


def image_files(directory: Path) -> Iterator[Path]:
    """Image files below `directory` in walk order (symbolic links to directories followed)."""
    for folder, _, names in os.walk(directory, followlinks=True):
        for name in names:
            if os.path.splitext(name)[1][1:].lower() in IMAGE_EXTENSIONS:
                yield Path(folder) / name


def image_only_source(pattern: str, cache_dir: Path, on_corrupt: OnCorrupt) -> ImageFolderSource | TarSource:
    """A directory is an image folder; anything else a shard pattern, indexed without needing captions."""
    if Path(pattern).is_dir():
        return ImageFolderSource(Path(pattern))
    return TarSource(pattern, cache_dir, on_corrupt, captions=False)


def check_unpaired(cfg: DataConfig, files: bool = True) -> None:
    """ConfigError naming the key and the path for a text_only / image_only entry that cannot be read
    (`files=False`: only that some path is given)."""
    for key, section in (("data.text_only", cfg.text_only), ("data.image_only", cfg.image_only)):
        if section is None:
            continue
        patterns = url_patterns(section.urls)
        if not patterns:
            raise ConfigError(f"{key}.urls", section.urls, "one or more paths")
        for pattern in patterns if files else ():
            if key == "data.image_only" and Path(pattern).is_dir():
                if next(image_files(Path(pattern)), None) is None:
                    raise ConfigError(
                        f"{key}.urls", pattern, f"a directory holding image files (.{', .'.join(IMAGE_EXTENSIONS)})"
                    )
                continue
            try:
                paths = expand_urls(pattern)
            except FileNotFoundError as error:
                what = "text files" if key == "data.text_only" else "directories or webdataset tar shards"
                raise ConfigError(f"{key}.urls", pattern, f"existing {what} ({error})") from None
            empty = next((p for p in paths if p.stat().st_size == 0), None)
            if empty is not None:
                expected = "captions, one per line" if key == "data.text_only" else "a webdataset tar shard"
                raise ConfigError(f"{key}.urls", str(empty), f"an empty file; expected {expected}")


# ---- streams -------------------------------------------------------------------------------


def _stream_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed % 2**64, int(stream)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class TextOnlyStream(IndexedStream):
    """Tokenised captions, `batch(step, ...)` -> (text_ids, text_mask) of this rank's rows."""

    def __init__(
        self,
        sources: Sequence[TextLinesSource],
        tokenizer: TextTokenizer,
        max_text_len: int,
        window: int,
        on_corrupt: OnCorrupt,
    ) -> None:
        super().__init__(
            sources,
            None,
            tokenizer,
            image_size=0,
            max_text_len=max_text_len,
            crop_scale=(1.0, 1.0),
            hflip=False,
            window=window,
            workers=1,
            on_corrupt=on_corrupt,
        )

    def batch(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return super().batch(step, batch_size, _stream_seed(seed, DataStream.TEXT_ONLY), rank, world_size)

    def _decode(self, sample: RawSample) -> str:
        return decode_text(sample)

    def _collate(
        self, loaded: list[str], step: int, batch_size: int, seed: int, rows: slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_ids, text_mask = self.tokenizer.encode(loaded, self.max_text_len)
        return text_ids.to(self.device), text_mask.to(self.device)


class ImageOnlyStream(IndexedStream):
    """Decoded images with one random resized crop, `batch(step, ...)` -> [b, 3, H, W] of this rank's rows."""

    def __init__(
        self,
        sources: Sequence[ImageFolderSource | TarSource],
        image_size: int,
        crop_scale: tuple[float, float],
        hflip: bool,
        window: int,
        workers: int,
        on_corrupt: OnCorrupt,
    ) -> None:
        super().__init__(
            sources,
            None,
            None,
            image_size=image_size,
            max_text_len=0,
            crop_scale=crop_scale,
            hflip=hflip,
            window=window,
            workers=workers,
            on_corrupt=on_corrupt,
        )

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        return super().batch(step, batch_size, _stream_seed(seed, DataStream.IMAGE_ONLY), rank, world_size)

    def _decode(self, sample: RawSample) -> np.ndarray:
        return decode_image(sample, self.image_size)

    def _collate(self, loaded: list[np.ndarray], step: int, batch_size: int, seed: int, rows: slice) -> torch.Tensor:
        images = torch.from_numpy(np.stack(loaded)).to(self.device)
        return augmented_views(images, seed, step, batch_size, rows, self.crop_scale, self.hflip)[0]


# ---- what the trainer takes --------------------------------------------------------------


@dataclass
class UnpairedBatch:
    """One rank's unpaired rows of a step; None where that kind is not configured.

    text_ids / text_mask: [b, L] like `Batch.text_ids`; images: [b, 3, H, W] normalised, one augmented view.
    """

    text_ids: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    images: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> UnpairedBatch:
        return UnpairedBatch(
            **{
                f.name: None if getattr(self, f.name) is None else to_device(getattr(self, f.name), device)
                for f in fields(self)
            }
        )


@dataclass
class UnpairedData:
    """The configured unpaired streams and how many rows of each a global step draws."""

    text: TextOnlyStream | None = None
    text_batch_size: int = 0
    images: ImageOnlyStream | None = None
    image_batch_size: int = 0

    def batch(self, step: int, seed: int, rank: int = 0, world_size: int = 1) -> UnpairedBatch:
        text_ids = text_mask = images = None
        if self.text is not None:
            text_ids, text_mask = self.text.batch(step, self.text_batch_size, seed, rank, world_size)
        if self.images is not None:
            images = self.images.batch(step, self.image_batch_size, seed, rank, world_size)
        return UnpairedBatch(text_ids, text_mask, images)

    def to(self, device: torch.device | str) -> UnpairedData:
        """Crop image-only rows on `device` from now on."""
        if self.images is not None:
            self.images.to(device)
        return self

    @property
    def skipped(self) -> int:
        return sum(stream.skipped for stream in (self.text, self.images) if stream is not None)

    def sample_counts(self) -> dict[str, int]:
        """Samples found in each configured source kind: `text_only`, `image_only`."""
        counts = {"text_only": self.text, "image_only": self.images}
        return {name: stream.num_samples for name, stream in counts.items() if stream is not None}


def text_only_sources(section: UnpairedSourceConfig | None) -> list[TextLinesSource]:
    return [TextLinesSource(pattern) for pattern in url_patterns(section.urls)] if section is not None else []


def unpaired_data(
    cfg: DataConfig,
    text_sources: Sequence[TextLinesSource],
    tokenizer: TextTokenizer,
    image_size: int,
    max_text_len: int,
) -> UnpairedData:
    """The streams of `data.text_only` (its sources already read, for the tokenizer) and `data.image_only`."""
    data = UnpairedData()
    if cfg.text_only is not None:
        data.text = TextOnlyStream(text_sources, tokenizer, max_text_len, cfg.shuffle_buffer, cfg.on_corrupt)
        data.text_batch_size = cfg.text_only.batch_size
    if cfg.image_only is not None:
        sources = [image_only_source(p, Path(cfg.cache_dir), cfg.on_corrupt) for p in url_patterns(cfg.image_only.urls)]
        data.images = ImageOnlyStream(
            sources, image_size, cfg.crop_scale, cfg.hflip, cfg.shuffle_buffer, cfg.workers, cfg.on_corrupt
        )
        data.image_batch_size = cfg.image_only.batch_size
    return data
