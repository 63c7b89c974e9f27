"""The built-in eval sets of the captioned-shapes data, named directly in `eval.sets`:
`shapes` (retrieval, several captions per image) and `shapes_cls` (classification by shape)."""

from __future__ import annotations

from typing import Literal

from oner_lab.data.bundle import read_classification_shards, read_retrieval_shards, split_directory
from oner_lab.evaluators.registry import ReadContext
from oner_lab.spec.config import EvalSourceConfig
from oner_lab.spec.units import register


@register
class ShapesEval(EvalSourceConfig):
    """`data.eval_images` generated scenes (seed `data.generator_seed`), each with all its captions."""

    task = "retrieval"
    format: Literal["shapes"] = "shapes"

    def read(self, name: str, context: ReadContext):
        c = context
        directory = split_directory(c.cache_root, "shapes", c.data, c.image_size)
        return read_retrieval_shards(name, directory, c.tokenizer, c.image_size, c.max_text_len, c.on_corrupt)


@register
class ShapesClsEval(EvalSourceConfig):
    """`data.cls_images_per_class` single-object scenes per shape class, prompted with the shapes templates."""

    task = "classification"
    format: Literal["shapes_cls"] = "shapes_cls"

    def read(self, name: str, context: ReadContext):
        c = context
        directory = split_directory(c.cache_root, "shapes_cls", c.data, c.image_size)
        return read_classification_shards(name, directory, c.tokenizer, c.image_size, c.max_text_len, c.on_corrupt)
