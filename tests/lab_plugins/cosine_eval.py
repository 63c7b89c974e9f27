"""An evaluator from outside the package: format `shapes_cosine`, the built-in shapes retrieval set scored
by a task of its own, `cosine`, whose metrics are the mean and spread of matched image-caption cosines."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Literal

from oner_lab import evaluate
from oner_lab.data.batch import RetrievalSet
from oner_lab.data.bundle import read_retrieval_shards, split_directory
from oner_lab.evaluators import Task, register_task
from oner_lab.evaluators.registry import ReadContext
from oner_lab.metric_names import Metric
from oner_lab.spec.config import EvalSourceConfig
from oner_lab.spec.units import register


@dataclass
class CosineSet(RetrievalSet):
    task: ClassVar[str] = "cosine"


def score(encode_image, encode_text, data, batch_size, device) -> dict[str, float]:
    images = evaluate.encode(encode_image, (data.images,), batch_size, device)
    texts = evaluate.encode(encode_text, (data.text_ids, data.text_mask), batch_size, device)
    cosine = (images[data.caption_image.to(images.device)] * texts).sum(-1)
    return {"mean_cosine": cosine.mean().item(), "std_cosine": cosine.std().item()}


register_task(Task("cosine", (Metric("mean_cosine"), Metric("std_cosine")), score))


@register
class ShapesCosineEval(EvalSourceConfig):
    task = "cosine"
    format: Literal["shapes_cosine"] = "shapes_cosine"

    def read(self, name: str, context: ReadContext):
        c = context
        directory = split_directory(c.cache_root, "shapes", c.data, c.image_size)
        loaded, skipped = read_retrieval_shards(
            name, directory, c.tokenizer, c.image_size, c.max_text_len, c.on_corrupt
        )
        return CosineSet(**{field.name: getattr(loaded, field.name) for field in fields(loaded)}), skipped
