"""Data: the built-in captioned-shapes dataset, real formats (shards, CSV, retrieval JSON, class folders),
tokenizer, augmentation. See docs/data.md."""

from .batch import Batch, ClassificationSet, RetrievalSet
from .bundle import DataBundle, check_config, eval_source, prepare
from .eval_sources import SLIP_TEMPLATES, EvalSourceError
from .indexed_stream import IndexedStream
from .memory_stream import TrainStream
from .shards import CorruptSampleError, ShardReadError
from .tokenizer import TextTokenizer

__all__ = [
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
    "eval_source",
    "prepare",
]
