"""`kind: karpathy` and `kind: retrieval_json`: every (image, caption) pair of a retrieval JSON as one sample."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from oner_lab.spec.config import DataConfig
from oner_lab.spec.errors import ConfigError
from oner_lab.spec.paths import PathStr
from oner_lab.spec.units import register

from ..eval_sources import EmptySplitError, EvalSourceError, MissingImageError, pair_entries
from ..sources import RetrievalJsonSource
from .base import FileSource, TrainContext


class _PairJsonSource(FileSource):
    """One JSON file per `urls` entry; its entries, splits and image files are checked before training."""

    image_root: PathStr | None = Field(
        default=None, description="what the JSON's image paths are relative to; default: the JSON's directory"
    )

    @property
    def splits_read(self) -> list[str]:
        return ["train"]

    def check_files(self, pattern: str, paths: list[Path], data: DataConfig) -> None:
        if len(paths) != 1:
            raise ConfigError(
                "data.source.urls",
                pattern,
                f"matches {len(paths)} files; a {self.kind} source is one JSON file (list several urls to mix them)",
            )
        try:
            pair_entries(paths[0], self.kind, self.image_root, self.splits_read)
        except EmptySplitError as error:
            raise ConfigError("data.source.splits", self.splits_read, f"splits that hold images ({error})") from None
        except MissingImageError as error:
            raise ConfigError(
                "data.source.image_root",
                self.image_root,
                f"the directory the JSON's image paths are relative to ({error})",
            ) from None
        except EvalSourceError as error:
            raise ConfigError("data.source.urls", pattern, f"a readable {self.kind} JSON ({error})") from None

    def open(self, pattern: str, context: TrainContext) -> RetrievalJsonSource:
        return RetrievalJsonSource(pattern, self.kind, self.image_root, self.splits_read, context.data.on_corrupt)


@register
class KarpathyTrainSource(_PairJsonSource):
    """Karpathy's dataset_coco.json / dataset_flickr30k.json: the images of `splits`, each caption a sample."""

    kind: Literal["karpathy"] = "karpathy"
    example = "/data/coco/dataset_coco.json"
    splits: list[str] = Field(
        default_factory=lambda: ["train", "restval"], min_length=1, description="the splits trained on"
    )

    @property
    def splits_read(self) -> list[str]:
        return list(self.splits)


@register
class RetrievalJsonTrainSource(_PairJsonSource):
    """An ALBEF/ViLT per-image list [{image, caption: [..]}]: every caption a sample."""

    kind: Literal["retrieval_json"] = "retrieval_json"
    example = "/data/albef/coco_train.json"
