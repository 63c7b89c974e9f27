"""Data: the built-in captioned-shapes dataset, shard reading, tokenizer, augmentation. See docs/data.md."""

from .batch import Batch, ClassificationSet, RetrievalSet
from .prepare import EVAL_SET_NAMES, DataBundle, check_config, prepare
from .shards import CorruptSampleError, ShardReadError
from .stream import TrainStream
from .tokenizer import TextTokenizer

__all__ = [
    "EVAL_SET_NAMES",
    "Batch",
    "ClassificationSet",
    "CorruptSampleError",
    "DataBundle",
    "RetrievalSet",
    "ShardReadError",
    "TextTokenizer",
    "TrainStream",
    "check_config",
    "prepare",
]
