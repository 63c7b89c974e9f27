"""`format: retrieval_json`: an ALBEF/ViLT per-image list [{image, caption: [..]}], scored as retrieval."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from oner_lab.data.eval_sources import pair_entries, read_retrieval
from oner_lab.evaluators.registry import ReadContext
from oner_lab.spec.config import EvalSourceConfig
from oner_lab.spec.paths import PathStr
from oner_lab.spec.units import register


@register
class RetrievalJsonEval(EvalSourceConfig):
    """Every caption of every image of the JSON file."""

    task = "retrieval"
    format: Literal["retrieval_json"] = "retrieval_json"
    path: PathStr = Field(description="the JSON file")
    image_root: PathStr | None = Field(
        default=None, description="what image paths are relative to; default: the JSON's directory"
    )

    def entries(self) -> list[tuple[Path, list[str]]]:
        return pair_entries(Path(self.path), self.format, self.image_root, ["test"])

    def check(self) -> None:
        self.entries()

    def read(self, name: str, context: ReadContext):
        c = context
        return read_retrieval(
            name, self.path, self.entries(), c.tokenizer, c.image_size, c.max_text_len, c.on_corrupt, c.workers
        )
