"""A training data source from outside the package: `kind: jsonl`, one {"image": path, "caption": text} per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from oner_lab.data.sources import files_fingerprint
from oner_lab.data.train_sources.base import FileSource, TrainContext
from oner_lab.spec.units import register


class JsonlPairs:
    """Random access over the file's lines; images are read when a sample is loaded."""

    def __init__(self, path: str, key: str) -> None:
        self.path = Path(path)
        self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        self.key = key
        self.fingerprint = files_fingerprint([self.path], "jsonl", key)
        self.group_starts = np.arange(len(self.rows))
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> dict:
        row = self.rows[index]
        image = self.path.parent / row["image"]
        return {
            "__key__": str(index),
            "__url__": str(self.path),
            image.suffix.lstrip("."): image.read_bytes(),
            "txt": row[self.key].encode(),
        }

    def where(self, index: int) -> tuple[str, str]:
        return str(self.path), f"line {index + 1}"

    def captions(self) -> Iterator[bytes]:
        return (row[self.key].encode() for row in self.rows)


@register
class JsonlSource(FileSource):
    kind: Literal["jsonl"] = "jsonl"
    example: ClassVar[str] = "/data/pairs.jsonl"
    caption_key: str = Field(default="caption", description="the key of each line's caption")

    def open(self, pattern: str, context: TrainContext) -> JsonlPairs:
        return JsonlPairs(pattern, self.caption_key)
