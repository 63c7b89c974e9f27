"""`prepare`: generate the built-in data once, cache it as shards, read it back, tokenise it.

The cache directory of each split is named by a hash of everything that shapes its contents,
so changing a generation parameter makes a new directory instead of reusing a stale one.
Data is always read back through `shards.read_shards`, the path real datasets take.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from oner_lab.contract import ConfigError
from oner_lab.spec.config import DataConfig, EvalSourceConfig

from . import shapes
from .batch import ClassificationSet, RetrievalSet, retrieval_set
from .cache import build_once
from .eval_sources import EvalSourceError
from .indexed_stream import IndexedStream
from .memory_stream import TrainStream
from .shards import (
    CorruptSample,
    OnCorrupt,
    clean_caption,
    decode_captions,
    decode_image,
    decode_label,
    encode_png,
    read_shards,
    write_shards,
)
from .tokenizer import TRAINER_VERSION, TextTokenizer
from .train_sources.base import TrainContext
from .unpaired import TextLinesSource, UnpairedData, check_unpaired, text_only_sources, unpaired_data

log = logging.getLogger(__name__)

SAMPLES_PER_SHARD = 4096
CLASSES_FILE = "classes.json"
_GENERATOR_VERSION = 2  # bump when shapes.py changes what a seed generates


@dataclass
class DataBundle:
    tokenizer: TextTokenizer
    train: TrainStream | IndexedStream
    eval_sets: dict[str, RetrievalSet | ClassificationSet]
    skipped_reading: int  # corrupt samples skipped while reading the eval sets and an in-memory training split
    unpaired: UnpairedData = field(default_factory=UnpairedData)  # data.text_only / data.image_only streams

    @property
    def skipped_samples(self) -> int:
        """All corrupt samples skipped so far: while reading, plus those a streaming source has met."""
        return self.skipped_reading + self.train.skipped + self.unpaired.skipped


def check_config(cfg: DataConfig, eval_sets: Sequence[str], files: bool = True) -> None:
    """Raise ConfigError for a data config that cannot run, before anything is generated or trained.

    `files=False` checks the config alone and reads no data file (a dry run on a machine without
    the data: `run --dry-run` reports missing files separately)."""
    cfg.source.check(cfg, files)
    builtin = EvalSourceConfig.builtin_sets()
    for name in cfg.eval_sources:
        if name in builtin:
            raise ConfigError(
                f"data.eval_sources.{name}", name, f"names of built-in sets ({', '.join(builtin)}) are taken"
            )
    for name in eval_sets:
        if name in cfg.eval_sources:
            if files:
                _check_eval_source(name, cfg.eval_sources[name])
        elif name not in builtin:
            defined = f"; data.eval_sources defines {', '.join(cfg.eval_sources)}" if cfg.eval_sources else ""
            raise ConfigError(
                "eval.sets", name, f"allowed: {', '.join(builtin)} or a key of data.eval_sources{defined}"
            )
    if cfg.max_objects > shapes.MAX_OBJECTS:
        allowed = f"allowed: 1..{shapes.MAX_OBJECTS} (one object per cell of a 3x3 grid)"
        raise ConfigError("data.max_objects", cfg.max_objects, allowed)
    low, high = cfg.crop_scale
    if not 0 < low <= high <= 1:
        raise ConfigError("data.crop_scale", cfg.crop_scale, "allowed: [low, high] with 0 < low <= high <= 1")
    check_unpaired(cfg, files)
    if files:
        user_tokenizer(cfg)


def eval_source(cfg: DataConfig, name: str) -> EvalSourceConfig:
    """The eval set `name` of `eval.sets`: its `data.eval_sources` entry, or the built-in format of that name."""
    source = cfg.eval_sources.get(name)
    return source if source is not None else EvalSourceConfig.model_validate({EvalSourceConfig.tag: name})


def _check_eval_source(name: str, source: EvalSourceConfig) -> None:
    try:
        source.check()
    except EvalSourceError as error:
        raise ConfigError(
            f"data.eval_sources.{name}", source.path, f"readable {source.format} data ({error})"
        ) from None


def prepare(
    cfg: DataConfig,
    image_size: int,
    max_text_len: int,
    eval_sets: Sequence[str],
    tokenizer: TextTokenizer | None = None,
) -> DataBundle:
    """Training stream, tokenizer and the named zero-shot eval sets, generating the built-in cache on first use.

    `tokenizer`: use this one instead of `data.tokenizer` or a trained WordPiece (a fine-tuning run
    keeps its parent's vocabulary)."""
    check_config(cfg, eval_sets)
    root = Path(cfg.cache_dir)
    text_sources = text_only_sources(cfg.text_only)  # read first: a trained tokenizer learns their words too
    context = TrainContext(cfg, root, image_size, max_text_len, tokenizer, text_sources)
    tokenizer, train, skipped = cfg.source.train(context)
    unpaired = unpaired_data(cfg, text_sources, tokenizer, image_size, max_text_len)
    from oner_lab.evaluators.registry import ReadContext  # the formats import this module's readers

    reading = ReadContext(tokenizer, image_size, max_text_len, cfg.on_corrupt, cfg.workers, cfg, root)
    loaded: dict[str, RetrievalSet | ClassificationSet] = {}
    for name in eval_sets:
        loaded[name], skipped_here = eval_source(cfg, name).read(name, reading)
        skipped += skipped_here
    bundle = DataBundle(tokenizer, train, loaded, skipped, unpaired)
    if bundle.skipped_samples:
        log.warning("skipped %d corrupt samples while reading the data", bundle.skipped_samples)
    return bundle


def readable_captions(raw: Iterator[bytes]) -> Iterator[str]:
    """Captions for tokenizer training; unreadable ones are left out (the stream counts them when it meets them)."""
    for data in raw:
        try:
            yield clean_caption(data.decode("utf-8"))
        except (UnicodeDecodeError, CorruptSample):
            continue


def user_tokenizer(cfg: DataConfig) -> TextTokenizer | None:
    if cfg.tokenizer is None:
        return None
    try:
        return TextTokenizer.load(cfg.tokenizer)
    except Exception as error:  # missing files or special tokens, or a malformed file (tokenizers raises Exception)
        raise ConfigError(
            "data.tokenizer",
            cfg.tokenizer,
            "needs a local Hugging Face tokenizer directory with tokenizer.json or vocab.txt, "
            f"or null to train a WordPiece ({error})",
        ) from error


def trained_tokenizer(
    root: Path, train_name: str, captions: Iterable[str], vocab_size: int, text_only: Sequence[TextLinesSource]
) -> TextTokenizer:
    """A WordPiece of the paired captions and any text-only ones (whose files then name the cache entry too)."""
    if text_only:
        key = hashlib.sha256("/".join(source.fingerprint for source in text_only).encode()).hexdigest()[:12]
        train_name = f"{train_name}-text{key}"
        captions = itertools.chain(captions, (c for source in text_only for c in readable_captions(source.captions())))
    name = f"tokenizer-wordpiece{vocab_size}-v{TRAINER_VERSION}-{train_name}"
    directory, _ = build_once(root, name, lambda d: TextTokenizer.train(captions, vocab_size).save(d))
    return TextTokenizer.load(directory)


# ---- generation: one cache directory per split ----


def _split_size(split: str, cfg: DataConfig) -> int:
    if split == "shapes_cls":
        return len(shapes.CLASS_NAMES) * cfg.cls_images_per_class
    return cfg.train_size if split == "train" else cfg.eval_images


def split_directory(root: Path, split: str, cfg: DataConfig, image_size: int) -> Path:
    params = {
        "dataset": "shapes",
        "version": _GENERATOR_VERSION,
        "split": split,
        "seed": cfg.generator_seed,
        "image_size": image_size,
        "count": _split_size(split, cfg),
        "max_objects": cfg.max_objects if split != "shapes_cls" else 1,
        "images_per_class": cfg.cls_images_per_class if split == "shapes_cls" else None,
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    directory, built = build_once(root, f"shapes-{split}-{key}", lambda d: _generate(d, split, cfg, image_size, params))
    if built:
        log.info("generated %s", directory)
    return directory


def _generate(directory: Path, split: str, cfg: DataConfig, image_size: int, params: dict[str, object]) -> None:
    write_shards(directory, _generated_samples(split, cfg, image_size), SAMPLES_PER_SHARD)
    if split == "shapes_cls":
        classes = {"class_names": list(shapes.CLASS_NAMES), "templates": list(shapes.CLASS_TEMPLATES)}
        (directory / CLASSES_FILE).write_text(json.dumps(classes, indent=2))
    (directory / "generation.json").write_text(json.dumps(params, indent=2))


def _generated_samples(split: str, cfg: DataConfig, image_size: int) -> Iterator[dict[str, bytes | str]]:
    for index in range(_split_size(split, cfg)):
        generated = shapes.make_sample(cfg.generator_seed, split, index, cfg.max_objects, cfg.cls_images_per_class)
        png = encode_png(shapes.render(generated.scene, image_size))
        sample: dict[str, bytes | str] = {"__key__": f"{index:08d}", "png": png}
        if split == "train":
            sample["txt"] = generated.captions[0].encode()
        elif split == "shapes":
            sample["json"] = json.dumps(list(generated.captions)).encode()
        else:
            sample["cls"] = str(generated.label).encode()
        yield sample


# ---- reading eval sets back ----


def shards_of(directory: Path) -> list[Path]:
    shards = sorted(directory.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"{directory}: no .tar shards")
    return shards


def read_retrieval_shards(
    name: str, directory: Path, tokenizer: TextTokenizer, image_size: int, max_text_len: int, on_corrupt: OnCorrupt
) -> tuple[RetrievalSet, int]:
    samples, skipped = read_shards(
        shards_of(directory), lambda sample: (decode_image(sample, image_size), decode_captions(sample)), on_corrupt
    )
    if not samples:
        raise ValueError(f"{directory}: no readable sample ({skipped} corrupt)")
    images, captions = [image for image, _ in samples], [image_captions for _, image_captions in samples]
    return retrieval_set(name, images, captions, tokenizer, max_text_len), skipped


def read_classification_shards(
    name: str, directory: Path, tokenizer: TextTokenizer, image_size: int, max_text_len: int, on_corrupt: OnCorrupt
) -> tuple[ClassificationSet, int]:
    classes = json.loads((directory / CLASSES_FILE).read_text())
    class_names, templates = list(classes["class_names"]), list(classes["templates"])
    samples, skipped = read_shards(
        shards_of(directory),
        lambda sample: (decode_image(sample, image_size), decode_label(sample, len(class_names))),
        on_corrupt,
    )
    if not samples:
        raise ValueError(f"{directory}: no readable sample ({skipped} corrupt)")
    images = torch.from_numpy(np.stack([image for image, _ in samples]))  # uint8: evaluate normalises per batch
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    prompts = [template.format(class_name) for class_name in class_names for template in templates]
    prompt_ids, prompt_mask = tokenizer.encode(prompts, max_text_len)
    prompt_class = torch.arange(len(class_names)).repeat_interleave(len(templates))
    loaded = ClassificationSet(name, images, labels, class_names, templates, prompt_ids, prompt_mask, prompt_class)
    return loaded, skipped
