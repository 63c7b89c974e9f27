"""Every random-number stream of a run, by name: one registry instead of numbers kept apart by comments.

A stream number is mixed with a root seed (numpy's SeedSequence), so two streams never share
draws. The numbers are part of what a run computes: changing one changes every batch or mask
drawn from it, so existing numbers never change and a new stream takes a new number.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class DataStream(IntEnum):
    """Streams mixed with `train.seed`: what the data side draws, a pure function of (seed, step)."""

    PERMUTATION = 0  # data/memory_stream.py: the epoch permutation of an in-memory split
    AUGMENTATION = 1  # data/memory_stream.py: crop boxes and flips of a global batch
    SHARD_ORDER = 2  # data/indexed_stream.py: shard order and window shuffle of a source's epoch
    SOURCE_MIX = 3  # data/indexed_stream.py: which source fills which row of a mixed batch
    TEXT_ONLY = 4  # data/unpaired.py: the caption-only stream (data.text_only)
    IMAGE_ONLY = 5  # data/unpaired.py: the image-only stream (data.image_only)


class StepStream(IntEnum):
    """Streams mixed with the training step's generator seed (objectives/views.py): masks of unpaired rows,
    drawn apart from the paired rows' masks so those do not depend on which other rows a step holds."""

    UNPAIRED_TEXT_MASK = 1
    UNPAIRED_IMAGE_MASK = 2


class SplitStream(IntEnum):
    """Streams mixed with `data.generator_seed` (data/shapes.py): one per split of the built-in data,
    so splits never share scenes' randomness."""

    TRAIN = 0
    SHAPES = 1
    SHAPES_CLS = 2


class RankStream(IntEnum):
    """Streams mixed with (`train.seed`, step, rank): what each rank draws from torch's global RNG."""

    GLOBAL_TORCH = 0  # train.py: drop-path (timm's DropPath draws from the global generator)


def global_seed(seed: int, step: int, rank: int) -> int:
    """The global torch RNG's seed for one rank's step. Ranks draw different drop-path masks, and a
    resumed run draws what an uninterrupted one does on every rank (on any number of ranks), with no
    RNG state to carry per rank in a checkpoint that rank 0 alone writes."""
    return int(np.random.SeedSequence([seed, step, rank, RankStream.GLOBAL_TORCH]).generate_state(1)[0])


def step_seed(seed: int, step: int, rank: int) -> int:
    """The root of one rank's step generator (masks of the masked terms): a function of (seed, step, rank)."""
    return hash((seed, step, rank)) & 0x7FFF_FFFF
