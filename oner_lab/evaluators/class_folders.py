"""`format: class_folders`: one folder of images per class (ImageNet val), scored as zero-shot classification."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from oner_lab.data.eval_sources import class_entries, read_classification
from oner_lab.evaluators.registry import ReadContext
from oner_lab.spec.config import EvalSourceConfig
from oner_lab.spec.paths import PathStr
from oner_lab.spec.units import register


@register
class ClassFoldersEval(EvalSourceConfig):
    """Class names from the folders (or a file, or timm's ImageNet-1k names), prompts from templates."""

    task = "classification"
    format: Literal["class_folders"] = "class_folders"
    path: PathStr = Field(description="the root holding one folder per class")
    class_names: PathStr | None = Field(
        default=None,
        description="a .txt (one name per line, sorted folder order) or .json (list, or folder -> name) "
        "file, or `imagenet1k` (WordNet folders named by timm's ImageNet-1k info); default: the folder names",
    )
    templates: PathStr | None = Field(
        default=None, description="a file with one prompt template per line, each holding {}; default: SLIP's seven"
    )

    def check(self) -> None:
        class_entries(self.path, self.class_names, self.templates)

    def read(self, name: str, context: ReadContext):
        c = context
        entries = class_entries(self.path, self.class_names, self.templates)
        return read_classification(
            name, self.path, entries, c.tokenizer, c.image_size, c.max_text_len, c.on_corrupt, c.workers
        )
