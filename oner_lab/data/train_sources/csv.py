"""`kind: csv`: open_clip's CSV/TSV files, an image-path column and a caption column."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from oner_lab.spec.config import DataConfig
from oner_lab.spec.errors import ConfigError
from oner_lab.spec.units import register

from ..shards import CorruptSampleError
from ..sources import CsvSource
from .base import FileSource, TrainContext


@register
class CsvFileSource(FileSource):
    """One CSV file per `urls` entry; image paths are relative to the CSV file unless absolute."""

    kind: Literal["csv"] = "csv"
    example = "/data/cc3m/train.tsv"
    separator: str = Field(default="\t", description="open_clip's --csv-separator")
    img_key: str = Field(default="filepath", description="the column of image paths")
    caption_key: str = Field(default="title", description="the column of captions")

    def check_files(self, pattern: str, paths: list[Path], data: DataConfig) -> None:
        if len(paths) != 1:
            raise ConfigError(
                "data.source.urls",
                pattern,
                f"matches {len(paths)} files; a csv source is one file (list several urls to mix them)",
            )
        try:  # every row, before any run exists: a header without rows, or (on_corrupt: fail) a bad row
            CsvSource(str(paths[0]), self.separator, self.img_key, self.caption_key, data.on_corrupt)
        except CorruptSampleError as error:
            raise ConfigError(
                "data.source.urls", pattern, f"every row usable, as data.on_corrupt is 'fail' ({error})"
            ) from None
        except ValueError as error:  # no such columns, or a header without rows
            raise ConfigError(
                "data.source.urls",
                pattern,
                f"a CSV with columns data.source.img_key and data.source.caption_key ({error})",
            ) from None

    def open(self, pattern: str, context: TrainContext) -> CsvSource:
        return CsvSource(pattern, self.separator, self.img_key, self.caption_key, context.data.on_corrupt)
