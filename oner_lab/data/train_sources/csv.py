"""`kind: csv`: open_clip's CSV/TSV files, an image-path column and a caption column."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from oner_lab.spec.config import DataConfig
from oner_lab.spec.errors import ConfigError
from oner_lab.spec.units import register

from ..sources import CsvSource, read_csv_columns
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
            raise ConfigError("data.source.urls", pattern, f"matches {len(paths)} files; a csv source is one file (list several urls to mix them)")
        try:
            read_csv_columns(paths[0], self.separator, self.img_key, self.caption_key).head(0)
        except ValueError as error:
            raise ConfigError(
                "data.source.urls", pattern, f"a CSV with columns data.source.img_key and data.source.caption_key ({error})"
            ) from None

    def open(self, pattern: str, context: TrainContext) -> CsvSource:
        return CsvSource(pattern, self.separator, self.img_key, self.caption_key, context.data.on_corrupt)
