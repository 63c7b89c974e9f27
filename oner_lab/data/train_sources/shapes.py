"""`kind: shapes`: the built-in captioned shapes, generated once (data.train_size scenes, seed
data.generator_seed), cached as shards and read back whole into memory, from a decoded copy after
the first run (data/decoded.py)."""

from __future__ import annotations

from typing import Literal

import torch

from oner_lab.spec.config import TrainSourceConfig
from oner_lab.spec.units import register

from ..decoded import read_decoded
from ..memory_stream import TrainStream
from ..shards import decode_image, decode_text
from .base import TrainContext


@register
class ShapesSource(TrainSourceConfig):
    """No keys of its own: the generator's sizes are `data.train_size`, `data.max_objects`, ... which the
    built-in eval sets share."""

    kind: Literal["shapes"] = "shapes"

    def train(self, context: TrainContext) -> tuple[object, TrainStream, int]:
        from ..bundle import shards_of, split_directory

        cfg, image_size = context.data, context.image_size
        train_dir = split_directory(context.root, "train", cfg, image_size)
        images, captions, skipped = read_decoded(
            context.root,
            shards_of(train_dir),
            lambda sample: (decode_image(sample, image_size), decode_text(sample)),
            cfg.on_corrupt,
            f"{train_dir.name}-{image_size}px",
        )
        if not captions:
            raise ValueError(f"{train_dir}: no readable training sample ({skipped} corrupt)")
        tokenizer = context.tokenizer(train_dir.name, captions)
        text_ids, text_mask = tokenizer.encode(captions, context.max_text_len)
        return tokenizer, TrainStream(torch.from_numpy(images), text_ids, text_mask, cfg.crop_scale, cfg.hflip), skipped
