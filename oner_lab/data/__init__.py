"""Data: the built-in captioned-shapes dataset, real formats (shards, CSV, retrieval JSON, class folders),
tokenizer, augmentation. See docs/data.md."""

from .batch import Batch, ClassificationSet, RetrievalSet
from .eval_sources import SLIP_TEMPLATES, EvalSourceError
from .prepare import EVAL_SET_NAMES, DataBundle, check_config, prepare
from .shards import CorruptSampleError, ShardReadError
from .stream import TrainStream
from .streaming import IndexedStream
from .tokenizer import TextTokenizer

__all__ = [
    "EVAL_SET_NAMES",
    "SLIP_TEMPLATES",
    "Batch",
    "ClassificationSet",
    "CorruptSampleError",
    "DataBundle",
    "EvalSourceError",
    "IndexedStream",
    "RetrievalSet",
    "ShardReadError",
    "TextTokenizer",
    "TrainStream",
    "check_config",
    "prepare",
]
