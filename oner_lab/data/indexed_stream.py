"""Training batches from real sources (tar shards, CSV) that are pure functions of (seed, step).

Resume rule: nothing is carried between batches, so a resumed run at step s reads exactly the
samples and crops the uninterrupted run read at step s.

- Mixing: each source gets a fixed quota of the B rows of every global batch (largest-remainder
  rounding of B * weight), so after s steps source i has served exactly s * quota_i samples.
  Rows are then shuffled across the batch (seeded by step) so every rank sees every source.
- Order within a source: epoch e (of that source) visits its shards in a permutation drawn from
  (seed, source, e), then shuffles the samples within consecutive windows of `data.shuffle_buffer`
  samples: the deterministic counterpart of webdataset's shard shuffle + shuffle buffer, and reads
  stay within a few shards at a time. A CSV row is its own shard (a full permutation).
- Ranks take contiguous rows of the global batch, which does not depend on the world size; no
  sample repeats within an epoch of its source.
- A corrupt sample is skipped and counted (or raises with `on_corrupt: fail`); its row is filled
  by the next position of the same source's stream, so the batch keeps its size.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import torch

from oner_lab.seeds import DataStream

from .augment import resized_crops
from .batch import Batch, cpu_batch_buffer, normalise
from .memory_stream import rows_of_rank, view_draws
from .shards import (
    CorruptSample,
    CorruptSampleError,
    OnCorrupt,
    RawSample,
    decode_image_rgb,
    decode_text,
)
from .tokenizer import TextTokenizer

_CACHED_ORDERS = 2  # per source: the current epoch and the next (a batch may straddle them)
MAX_CONSECUTIVE_CORRUPT = 64


class SampleSource(Protocol):
    """What a training source unit opens for one `urls` entry (oner_lab/data/train_sources): random
    access for the stream, its captions for the tokenizer, and a fingerprint that keys the caches."""

    group_starts: np.ndarray  # first sample index of each shard (a CSV: every row)
    skipped: int  # samples dropped while indexing (no image member, no caption)
    fingerprint: str  # changes when the files (or the settings that read them) change: names cache entries

    def __len__(self) -> int: ...

    def load(self, index: int) -> RawSample: ...

    def where(self, index: int) -> tuple[str, str]: ...  # (file, sample key) for error messages

    def captions(self) -> Iterator[bytes]: ...  # every caption, raw, for training the tokenizer


def batch_quotas(weights: Sequence[float], batch_size: int) -> list[int]:
    """Rows of each source in a batch of `batch_size`: B * w / sum(w), largest remainders rounded up."""
    shares = np.asarray(weights, dtype=np.float64) / float(np.sum(weights)) * batch_size
    quotas = np.floor(shares).astype(np.int64)
    leftover = batch_size - int(quotas.sum())
    quotas[np.argsort(-(shares - quotas), kind="stable")[:leftover]] += 1
    return quotas.tolist()


def epoch_order(group_starts: np.ndarray, count: int, window: int, seed: int, source: int, epoch: int) -> np.ndarray:
    """Sample indices of one epoch: shards in a seeded permutation, then shuffled within windows of `window`."""
    rng = np.random.default_rng([seed % 2**64, int(DataStream.SHARD_ORDER), source, epoch])
    lengths = np.diff(np.append(group_starts, count))
    shard_order = rng.permutation(len(group_starts))
    new_starts = np.cumsum(lengths[shard_order]) - lengths[shard_order]
    sequence = np.arange(count) + np.repeat(group_starts[shard_order] - new_starts, lengths[shard_order])
    within = np.lexsort((rng.random(count), np.arange(count) // window))
    return sequence[within]


class IndexedStream:
    """Augmented batches decoded on demand from random-access sources, with the TrainStream interface."""

    def __init__(
        self,
        sources: Sequence[SampleSource],
        weights: Sequence[float] | None,
        tokenizer: TextTokenizer,
        image_size: int,
        max_text_len: int,
        crop_scale: tuple[float, float],
        hflip: bool,
        window: int,
        workers: int,
        on_corrupt: OnCorrupt,
    ) -> None:
        if weights is not None and len(weights) != len(sources):
            raise ValueError(f"{len(weights)} weights for {len(sources)} sources")
        self.sources = list(sources)
        self.weights = list(weights) if weights is not None else [float(len(s)) for s in sources]
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.crop_scale = crop_scale
        self.hflip = hflip
        self.window = window
        self.on_corrupt = on_corrupt
        self.device = torch.device("cpu")
        self._decoders = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._prefetched: tuple[tuple[int, ...], Future[Batch]] | None = None
        self._orders: dict[tuple[int, int, int], np.ndarray] = {}
        self._corrupt: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    @property
    def num_samples(self) -> int:
        return sum(len(source) for source in self.sources)

    @property
    def skipped(self) -> int:
        """Samples skipped while indexing plus distinct corrupt samples met while decoding so far."""
        return sum(source.skipped for source in self.sources) + len(self._corrupt)

    def to(self, device: torch.device | str) -> IndexedStream:
        """Normalise on `device` from now on (decoding and cropping stay on the CPU threads, in uint8)."""
        self.device = torch.device(device)
        return self

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Batch:
        """Rows [rank*B/W, (rank+1)*B/W) of global batch `step`; the next step is decoded in the background."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rows_of_rank(batch_size, rank, world_size)  # argument checks, before anything is queued
        key = (step, batch_size, seed, rank, world_size)
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] == key:
            result = prefetched[1].result()
        else:
            if prefetched is not None:
                prefetched[1].cancel()
            result = self._build(*key)
        next_key = (step + 1, batch_size, seed, rank, world_size)
        self._prefetched = (next_key, self._prefetcher.submit(self._build, *next_key))
        return result

    def _build(self, step: int, batch_size: int, seed: int, rank: int, world_size: int) -> Batch:
        rows = rows_of_rank(batch_size, rank, world_size)
        plan = self._global_rows(step, batch_size, seed)[rows]
        loaded = list(self._decoders.map(lambda row: self._load(seed, int(row[0]), int(row[1])), plan))
        return self._collate(loaded, step, batch_size, seed, rows)

    def _decode(self, sample: RawSample) -> tuple[np.ndarray, str]:
        """One raw sample as the rows of a batch need it; raises CorruptSample. Unpaired streams override it."""
        return decode_image_rgb(sample, self.image_size), decode_text(sample)

    def _collate(
        self, loaded: list[tuple[np.ndarray, str]], step: int, batch_size: int, seed: int, rows: slice
    ) -> Batch:
        """This rank's decoded rows of global batch `step` as a Batch: two augmented views, tokenised captions.

        The decode threads cut each row's two crops from its whole decoded image (one resize, uint8)
        and, on the CPU, normalise them too (the batch's float conversion would otherwise be serial);
        on another device the uint8 crops travel there and are normalised there.
        """
        size, on_cpu = self.image_size, self.device.type == "cpu"
        boxes, flips = view_draws(seed, step, batch_size, rows, size, size, self.crop_scale, self.hflip)
        shape = (2, len(loaded), 3, size, size)
        views = cpu_batch_buffer(shape, torch.float32 if on_cpu else torch.uint8)

        def cut(row: int) -> None:
            row_flips = None if flips is None else flips[:, row]
            if on_cpu:
                pixels = torch.empty((2, 3, size, size), dtype=torch.uint8)
                resized_crops(loaded[row][0], boxes[:, row], row_flips, pixels)
                normalise(pixels, out=views[:, row])
            else:
                resized_crops(loaded[row][0], boxes[:, row], row_flips, views[:, row])

        list(self._decoders.map(cut, range(len(loaded))))
        text_ids, text_mask = self.tokenizer.encode([caption for _, caption in loaded], self.max_text_len)
        if not on_cpu:
            views = normalise(views.to(self.device))
        return Batch(views[0], views[1], text_ids.to(self.device), text_mask.to(self.device))

    def _global_rows(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """[B, 2] (source, position in that source's endless stream) of every row of global batch `step`."""
        quotas = batch_quotas(self.weights, batch_size)
        if 0 in quotas:
            empty = [i for i, q in enumerate(quotas) if q == 0]
            raise ValueError(f"data.weights {self.weights} give source(s) {empty} no row of a batch of {batch_size}")
        plan = np.concatenate(
            [np.stack([np.full(q, i), step * q + np.arange(q)], axis=1) for i, q in enumerate(quotas)]
        )
        if len(self.sources) > 1:
            plan = plan[np.random.default_rng([seed % 2**64, int(DataStream.SOURCE_MIX), step]).permutation(batch_size)]
        return plan

    def _load(self, seed: int, source_number: int, position: int) -> Any:
        source = self.sources[source_number]
        for attempt in range(MAX_CONSECUTIVE_CORRUPT):
            index = self._sample_index(seed, source_number, position + attempt)
            try:
                return self._decode(source.load(index))
            except CorruptSample as why:
                if self.on_corrupt == "fail":
                    url, key = source.where(index)
                    where = f"{url}: sample {key!r}"
                    raise CorruptSampleError(f"{where}: {why} (data.on_corrupt is 'fail')") from None
                with self._lock:
                    self._corrupt.add((source_number, index))
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_CORRUPT} consecutive corrupt samples in training source {source_number} "
            f"from stream position {position}: is the data readable?"
        )

    def _sample_index(self, seed: int, source_number: int, position: int) -> int:
        source = self.sources[source_number]
        epoch, offset = divmod(position, len(source))
        key = (seed, source_number, epoch)
        with self._lock:
            order = self._orders.get(key)
            if order is None:
                order = epoch_order(source.group_starts, len(source), self.window, seed, source_number, epoch)
                same_source = [k for k in self._orders if k[1] == source_number]
                if len(same_source) >= _CACHED_ORDERS:
                    del self._orders[min(same_source, key=lambda k: k[2])]
                self._orders[key] = order
        return int(order[offset])
