"""`prepare`: generate the built-in data once, cache it as shards, read it back, tokenise it.

The cache directory of each split is named by a hash of everything that shapes its contents,
so changing a generation parameter makes a new directory instead of reusing a stale one.
Data is always read back through `shards.read_shards`, the path real datasets take.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from oner_lab.hooks import ConfigError
from oner_lab.spec.config import DataConfig

from . import shapes
from .batch import ClassificationSet, RetrievalSet, normalise
from .cache import build_once
from .shards import (
    OnCorrupt,
    decode_captions,
    decode_image,
    decode_label,
    decode_text,
    encode_png,
    read_shards,
    write_shards,
)
from .stream import TrainStream
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)

EVAL_SET_NAMES = ("shapes", "shapes_cls")
SAMPLES_PER_SHARD = 4096
CLASSES_FILE = "classes.json"
_GENERATOR_VERSION = 2  # bump when shapes.py changes what a seed generates


@dataclass
class DataBundle:
    tokenizer: TextTokenizer
    train: TrainStream
    eval_sets: dict[str, RetrievalSet | ClassificationSet]
    skipped_samples: int  # corrupt samples skipped while reading shards, all splits together


def check_config(cfg: DataConfig, eval_sets: Sequence[str]) -> None:
    """Raise ConfigError for a data config that cannot run, before anything is generated or trained."""
    if cfg.source == "webdataset" and not cfg.urls:
        raise ConfigError("data.urls", cfg.urls, "a shard pattern such as /data/cc3m/{00000..00331}.tar for data.source: webdataset")
    for name in eval_sets:
        if name not in EVAL_SET_NAMES:
            raise ConfigError("eval.sets", name, f"allowed: {', '.join(EVAL_SET_NAMES)}")
    if cfg.max_objects > shapes.MAX_OBJECTS:
        allowed = f"allowed: 1..{shapes.MAX_OBJECTS} (one object per cell of a 3x3 grid)"
        raise ConfigError("data.max_objects", cfg.max_objects, allowed)
    low, high = cfg.crop_scale
    if not 0 < low <= high <= 1:
        raise ConfigError("data.crop_scale", cfg.crop_scale, "allowed: [low, high] with 0 < low <= high <= 1")
    _user_tokenizer(cfg)


def prepare(cfg: DataConfig, image_size: int, max_text_len: int, eval_sets: Sequence[str]) -> DataBundle:
    """Training stream, tokenizer and the named zero-shot eval sets, generating the cache on first use."""
    check_config(cfg, eval_sets)
    if cfg.source != "shapes":
        raise NotImplementedError(
            f"data.source: {cfg.source} validates, but only the built-in `shapes` source can be read so far "
            "(the shard reader for real data is tracked as its own issue; see docs/data.md)"
        )
    root = Path(cfg.cache_dir)
    train_dir = _split_directory(root, "train", cfg, image_size)
    train, skipped = read_shards(
        _shards(train_dir), lambda sample: (decode_image(sample, image_size), decode_text(sample)), cfg.on_corrupt
    )
    if not train:
        raise ValueError(f"{train_dir}: no readable training sample ({skipped} corrupt)")
    captions = [caption for _, caption in train]
    tokenizer = _user_tokenizer(cfg) or _trained_tokenizer(root, train_dir.name, captions, cfg.vocab_size)
    text_ids, text_mask = tokenizer.encode(captions, max_text_len)
    images = torch.from_numpy(np.stack([image for image, _ in train]))
    stream = TrainStream(images, text_ids, text_mask, cfg.crop_scale, cfg.hflip)

    loaded: dict[str, RetrievalSet | ClassificationSet] = {}
    for name in eval_sets:
        directory = _split_directory(root, name, cfg, image_size)
        reader = _read_retrieval if name == "shapes" else _read_classification
        loaded[name], skipped_here = reader(name, directory, tokenizer, image_size, max_text_len, cfg.on_corrupt)
        skipped += skipped_here
    if skipped:
        log.warning("skipped %d corrupt samples while reading %s", skipped, root)
    return DataBundle(tokenizer, stream, loaded, skipped)


def _user_tokenizer(cfg: DataConfig) -> TextTokenizer | None:
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


def _trained_tokenizer(root: Path, train_name: str, captions: list[str], vocab_size: int) -> TextTokenizer:
    name = f"tokenizer-wordpiece{vocab_size}-{train_name}"
    directory, _ = build_once(root, name, lambda d: TextTokenizer.train(captions, vocab_size).save(d))
    return TextTokenizer.load(directory)


# ---- generation: one cache directory per split ----


def _split_size(split: str, cfg: DataConfig) -> int:
    if split == "shapes_cls":
        return len(shapes.CLASS_NAMES) * cfg.cls_images_per_class
    return cfg.train_size if split == "train" else cfg.eval_images


def _split_directory(root: Path, split: str, cfg: DataConfig, image_size: int) -> Path:
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


def _shards(directory: Path) -> list[Path]:
    shards = sorted(directory.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"{directory}: no .tar shards")
    return shards


def _read_retrieval(
    name: str, directory: Path, tokenizer: TextTokenizer, image_size: int, max_text_len: int, on_corrupt: OnCorrupt
) -> tuple[RetrievalSet, int]:
    samples, skipped = read_shards(
        _shards(directory), lambda sample: (decode_image(sample, image_size), decode_captions(sample)), on_corrupt
    )
    if not samples:
        raise ValueError(f"{directory}: no readable sample ({skipped} corrupt)")
    captions = [caption for _, image_captions in samples for caption in image_captions]
    per_image = torch.tensor([len(image_captions) for _, image_captions in samples])
    text_ids, text_mask = tokenizer.encode(captions, max_text_len)
    images = normalise(torch.from_numpy(np.stack([image for image, _ in samples])))
    caption_image = torch.repeat_interleave(torch.arange(len(samples)), per_image)
    return RetrievalSet(name, images, text_ids, text_mask, caption_image, captions), skipped


def _read_classification(
    name: str, directory: Path, tokenizer: TextTokenizer, image_size: int, max_text_len: int, on_corrupt: OnCorrupt
) -> tuple[ClassificationSet, int]:
    classes = json.loads((directory / CLASSES_FILE).read_text())
    class_names, templates = list(classes["class_names"]), list(classes["templates"])
    samples, skipped = read_shards(
        _shards(directory),
        lambda sample: (decode_image(sample, image_size), decode_label(sample, len(class_names))),
        on_corrupt,
    )
    if not samples:
        raise ValueError(f"{directory}: no readable sample ({skipped} corrupt)")
    images = normalise(torch.from_numpy(np.stack([image for image, _ in samples])))
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    prompts = [template.format(class_name) for class_name in class_names for template in templates]
    prompt_ids, prompt_mask = tokenizer.encode(prompts, max_text_len)
    prompt_class = torch.arange(len(class_names)).repeat_interleave(len(templates))
    loaded = ClassificationSet(name, images, labels, class_names, templates, prompt_ids, prompt_mask, prompt_class)
    return loaded, skipped
