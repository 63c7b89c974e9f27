"""The training split in memory, served as deterministic batches addressed by step.

Resuming is exact because a batch is a pure function of (seed, step): the epoch permutation
comes from (seed, epoch) and the augmentation from (seed, step). The global batch is the same
for any world size; each rank takes its contiguous slice of rows.
"""

from __future__ import annotations

import numpy as np
import torch

from oner_lab.seeds import DataStream

from .augment import crop_boxes, crop_views
from .batch import Batch

_CACHED_PERMUTATIONS = 4


def rows_of_rank(batch_size: int, rank: int, world_size: int) -> slice:
    """Rows [rank*B/W, (rank+1)*B/W) of a global batch; checks the arguments."""
    if batch_size % world_size:
        raise ValueError(f"train.batch_size {batch_size} is not divisible by the world size {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    local = batch_size // world_size
    return slice(rank * local, (rank + 1) * local)


def augmented_views(
    images: torch.Tensor,
    seed: int,
    step: int,
    batch_size: int,
    rows: slice,
    crop_scale: tuple[float, float],
    hflip: bool,
) -> torch.Tensor:
    """Two random resized crops [2, b, 3, H, W] of `images` (uint8 [b, 3, H, W], rows `rows` of global batch `step`)."""
    height, width = images.shape[-2:]
    boxes, flips = view_draws(seed, step, batch_size, rows, height, width, crop_scale, hflip)
    return crop_views(images, boxes.to(images.device), None if flips is None else flips.to(images.device))


def view_draws(
    seed: int,
    step: int,
    batch_size: int,
    rows: slice,
    height: int,
    width: int,
    crop_scale: tuple[float, float],
    hflip: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop boxes [2, b, 4] on an H x W image and flips [2, b] (None without hflip) of rows `rows` of global batch `step`.

    The randomness is drawn for the whole global batch from (seed, step) and then sliced, so a row
    gets the same crops whatever the world size.
    """
    generator = seeded_generator(seed, DataStream.AUGMENTATION, step)
    boxes = crop_boxes(generator, 2 * batch_size, height, width, crop_scale).view(2, batch_size, 4)
    flips = torch.rand(2, batch_size, generator=generator) < 0.5  # drawn even when unused: same stream
    return boxes[:, rows], flips[:, rows] if hflip else None


def seeded_generator(seed: int, stream: int, value: int) -> torch.Generator:
    """A torch generator for one (seed, stream, value), well mixed by numpy's SeedSequence."""
    state = np.random.SeedSequence([seed % 2**64, int(stream), value]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class TrainStream:
    """Images (uint8 [N, 3, H, W]) and pre-tokenised captions ([N, L]) served as augmented batches."""

    skipped = 0  # corrupt samples met while serving batches: none, the split was read whole up front

    def __init__(
        self,
        images: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        crop_scale: tuple[float, float],
        hflip: bool,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if not len(images) == len(text_ids) == len(text_mask) > 0:
            raise ValueError(f"need as many captions as images (>0): {len(images)} images, {len(text_ids)} captions")
        self.images = images
        self.text_ids = text_ids
        self.text_mask = text_mask
        self.crop_scale = crop_scale
        self.hflip = hflip
        self._permutations: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> TrainStream:
        """The same stream (same batches) with its tensors on `device`, so cropping runs there: at 224 px
        a 128-image batch takes ~0.3 s on one CPU core."""
        moved = (self.images.to(device), self.text_ids.to(device), self.text_mask.to(device))
        return TrainStream(*moved, self.crop_scale, self.hflip)

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Batch:
        """Rows [rank*B/W, (rank+1)*B/W) of the global batch number `step` (B = batch_size, W = world_size)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rows = rows_of_rank(batch_size, rank, world_size)
        positions = step * batch_size + torch.arange(rows.start, rows.stop)
        device = self.images.device
        index = self._sample_index(seed, positions).to(device)

        views = augmented_views(self.images[index], seed, step, batch_size, rows, self.crop_scale, self.hflip)
        return Batch(views[0], views[1], self.text_ids[index], self.text_mask[index])

    def _sample_index(self, seed: int, positions: torch.Tensor) -> torch.Tensor:
        """Dataset index of each position of the endless stream: epoch e is permutation (seed, e)."""
        epochs = positions // self.num_samples
        offsets = positions % self.num_samples
        index = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            where = epochs == epoch
            index[where] = self._permutation(seed, epoch)[offsets[where]]
        return index

    def _permutation(self, seed: int, epoch: int) -> torch.Tensor:
        key = (seed, epoch)
        if key not in self._permutations:
            if len(self._permutations) >= _CACHED_PERMUTATIONS:
                self._permutations.pop(next(iter(self._permutations)))
            generator = seeded_generator(seed, DataStream.PERMUTATION, epoch)
            self._permutations[key] = torch.randperm(self.num_samples, generator=generator)
        return self._permutations[key]
