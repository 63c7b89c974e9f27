"""What a training source unit is given (`TrainContext`) and the base of the file-backed kinds (`FileSource`).

A file-backed kind declares its keys and how one `urls` entry opens as a `SampleSource`
(random access, a fingerprint, its captions); `FileSource` does the rest the same way for every
kind: checks that every pattern matches files, trains the tokenizer on the captions (cached under
the sources' fingerprints), and serves deterministic batches through `IndexedStream`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import Field, PositiveFloat

from oner_lab.spec.config import DataConfig, TrainSourceConfig
from oner_lab.spec.errors import ConfigError
from oner_lab.spec.paths import PathStr

from ..indexed_stream import IndexedStream, SampleSource
from ..sources import expand_urls, url_patterns
from ..tokenizer import TextTokenizer


@dataclass(frozen=True)
class TrainContext:
    """The run's data section and sizes, and the tokenizer rule every source follows: a given one (a
    fine-tuning run keeps its parent's), else `data.tokenizer`, else a WordPiece trained on the captions."""

    data: DataConfig
    root: Path
    image_size: int
    max_text_len: int
    given_tokenizer: TextTokenizer | None
    text_only: Sequence[object]  # unpaired caption sources: a trained tokenizer learns their words too

    def tokenizer(self, name: str, captions: Iterable[str]) -> TextTokenizer:
        """The run's tokenizer; `name` keys a trained one's cache entry (a fingerprint of what it learned from)."""
        from ..bundle import trained_tokenizer, user_tokenizer  # prepare imports the sources' registry lazily

        return (
            self.given_tokenizer
            or user_tokenizer(self.data)
            or trained_tokenizer(self.root, name, captions, self.data.vocab_size, self.text_only)
        )


class FileSource(TrainSourceConfig):
    """A kind read from files at `urls` (each entry one source; a list mixes them by `weights`)."""

    example: ClassVar[str] = ""  # an example url for messages, set by each kind
    urls: PathStr | list[PathStr] | None = Field(
        default=None, description="file pattern(s) (brace expansion and globs); a list mixes several sources"
    )
    weights: list[PositiveFloat] | None = Field(
        default=None, description="sampling weight of each `urls` entry; default: proportional to source sizes"
    )

    def open(self, pattern: str, context: TrainContext) -> SampleSource:
        """One `urls` entry as a random-access source."""
        raise NotImplementedError(f"data source {self.kind!r} does not implement open")

    def check_files(self, pattern: str, paths: list[Path], data: DataConfig) -> None:
        """Kind-specific checks of the files one pattern matched (ConfigError naming the key)."""

    def check(self, data: DataConfig, files: bool) -> None:
        patterns = url_patterns(self.urls)
        if not patterns:
            raise ConfigError(
                "data.source.urls",
                self.urls,
                f"one or more paths such as {self.example} for data.source.kind: {self.kind}",
            )
        if self.weights is not None and len(self.weights) != len(patterns):
            raise ConfigError(
                "data.source.weights", self.weights, f"one weight per data.source.urls entry ({len(patterns)})"
            )
        for pattern in patterns if files else ():
            try:
                paths = expand_urls(pattern)
            except FileNotFoundError as error:
                raise ConfigError("data.source.urls", pattern, f"every path must exist ({error})") from None
            self.check_files(pattern, paths, data)

    def train(self, context: TrainContext) -> tuple[TextTokenizer, IndexedStream, int]:
        """Index each `urls` entry as one source (cached), then serve batches decoded on demand."""
        from ..bundle import readable_captions

        cfg = context.data
        sources = [self.open(pattern, context) for pattern in url_patterns(self.urls)]
        name = hashlib.sha256("/".join(s.fingerprint for s in sources).encode()).hexdigest()[:12]
        captions = (caption for source in sources for caption in readable_captions(source.captions()))
        tokenizer = context.tokenizer(f"{self.kind}-{name}", captions)
        stream = IndexedStream(
            sources,
            self.weights,
            tokenizer,
            context.image_size,
            context.max_text_len,
            cfg.crop_scale,
            cfg.hflip,
            cfg.shuffle_buffer,
            cfg.workers,
            cfg.on_corrupt,
        )
        return tokenizer, stream, 0
