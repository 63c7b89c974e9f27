"""`kind: webdataset`: tar shards of `<key>.jpg|png|webp` + `<key>.txt`, indexed once for random access."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from oner_lab.spec.config import DataConfig
from oner_lab.spec.errors import ConfigError
from oner_lab.spec.units import register

from ..shards import CorruptSampleError, ShardReadError
from ..sources import TarSource, check_shards
from .base import FileSource, TrainContext


@register
class WebdatasetSource(FileSource):
    """Shard patterns such as /data/cc3m/{00000..00331}.tar."""

    kind: Literal["webdataset"] = "webdataset"
    example = "/data/cc3m/{00000..00331}.tar"

    def check_files(self, pattern: str, paths: list[Path], data: DataConfig) -> None:
        empty = next((p for p in paths if p.stat().st_size == 0), None)
        if empty is not None:
            raise ConfigError("data.source.urls", str(empty), "an empty file; expected a webdataset tar shard")
        try:  # truncated shards and (on_corrupt: fail) dropped samples, before any run exists
            check_shards(pattern, Path(data.cache_dir), data.on_corrupt)
        except (ShardReadError, CorruptSampleError) as error:
            raise ConfigError("data.source.urls", pattern, f"readable webdataset shards ({error})") from None

    def open(self, pattern: str, context: TrainContext) -> TarSource:
        return TarSource(pattern, context.root, context.data.on_corrupt)
