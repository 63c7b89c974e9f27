"""Zero-shot eval sets read from files: retrieval JSON (ALBEF per-image list, Karpathy splits) and class folders.

Parsing (`pair_entries`, `class_entries`) checks the structure and that every image file
exists, raising `EvalSourceError` naming the file, the entry and what was expected; the eval set
formats (oner_lab/evaluators) call these, and `check_config` turns the error into a ConfigError
before training. Reading decodes the images (Resize shorter side +
CenterCrop, as the paper's protocol) with the corrupt-sample rule of the shard reader.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .batch import ClassificationSet, RetrievalSet, retrieval_set
from .shards import (
    IMAGE_EXTENSIONS,
    CorruptSample,
    CorruptSampleError,
    OnCorrupt,
    decode_image_bytes,
)
from .tokenizer import TextTokenizer

SLIP_TEMPLATES = (  # SLIP's seven ImageNet prompts (docs/paper.md, Evaluation protocols)
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
IMAGENET1K = "imagenet1k"


class EvalSourceError(ValueError):
    """An eval source whose files do not have the expected structure; the message names file and entry."""


class EmptySplitError(EvalSourceError):
    """A Karpathy split asked for holds no image."""


class MissingImageError(EvalSourceError):
    """The JSON lists an image file that does not exist under the image root."""


@dataclass(frozen=True)
class ClassEntries:
    class_names: list[str]
    templates: list[str]
    images: list[tuple[Path, int]]


def pair_entries(path: Path, fmt: str, image_root: str | None, splits: Sequence[str]) -> list[tuple[Path, list[str]]]:
    """(image path, captions) per image of a `retrieval_json` file, or of the `splits` of a `karpathy` one.

    Also what a training source of these formats reads. Raises EvalSourceError naming the file and
    entry: EmptySplitError for a split without images, MissingImageError for an image file that is
    not there (every one is checked, so a wrong `image_root` is found before any work).
    """
    data = _load_json(str(path), _mtime(path))
    root = Path(image_root) if image_root else path.parent
    if fmt == "retrieval_json":
        entries = _albef_entries(path, data, root)
    else:
        entries = _karpathy_entries(path, data, root, splits)
    for image, _ in entries:
        if not image.is_file():
            raise MissingImageError(f"{path}: image {image} does not exist (image_root is {root})")
    return entries


def _albef_entries(path: Path, data: object, root: Path) -> list[tuple[Path, list[str]]]:
    expected = 'a JSON list of {"image": path, "caption": [captions]} (ALBEF/ViLT per-image format)'
    if not isinstance(data, list) or not data:
        raise EvalSourceError(f"{path}: expected {expected}")
    entries = []
    for number, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise EvalSourceError(f"{path}: entry {number} is not an object; expected {expected}")
        for key in ("image", "caption"):
            if key not in entry:
                raise EvalSourceError(f"{path}: entry {number} lacks key {key!r}; expected {expected}")
        captions = [entry["caption"]] if isinstance(entry["caption"], str) else entry["caption"]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise EvalSourceError(f"{path}: entry {number}: 'caption' must be a string or a list of strings")
        entries.append((root / str(entry["image"]), captions))
    return entries


def _karpathy_entries(path: Path, data: object, root: Path, wanted: Sequence[str]) -> list[tuple[Path, list[str]]]:
    expected = "Karpathy's format: {images: [{filepath?, filename, split, sentences: [{raw}]}]}"
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise EvalSourceError(f"{path}: no 'images' list; expected {expected}")
    entries, splits = [], set()
    for number, image in enumerate(data["images"]):
        for key in ("filename", "split", "sentences"):
            if not isinstance(image, dict) or key not in image:
                raise EvalSourceError(f"{path}: images[{number}] lacks key {key!r}; expected {expected}")
        splits.add(image["split"])
        if image["split"] not in wanted:
            continue
        captions = []
        for index, sentence in enumerate(image["sentences"]):
            if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
                raise EvalSourceError(
                    f"{path}: images[{number}].sentences[{index}] lacks a string 'raw'; expected {expected}"
                )
            captions.append(sentence["raw"])
        entries.append((root / image.get("filepath", "") / image["filename"], captions))
    empty = next((split for split in wanted if split not in splits), None)
    if empty is not None:
        raise EmptySplitError(f"{path}: no image in split {empty!r} (splits present: {sorted(splits)})")
    return entries


def class_entries(path: str, class_names: str | None, templates: str | None) -> ClassEntries:
    """Class names, templates and (image, label) from a class-per-folder tree."""
    root = Path(path)
    if not root.is_dir():
        raise EvalSourceError(f"{root}: not a directory (expected one folder of images per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise EvalSourceError(f"{root}: no class folder (expected one folder of images per class)")
    images: list[tuple[Path, int]] = []
    for label, folder in enumerate(folders):
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
        if not found:
            raise EvalSourceError(f"{folder}: class folder holds no image (.{', .'.join(IMAGE_EXTENSIONS)})")
        images.extend((image, label) for image in found)
    names = _class_names(class_names, [f.name for f in folders])
    return ClassEntries(names, _templates(templates), images)


def _class_names(spec: str | None, folders: list[str]) -> list[str]:
    if spec is None:
        return [folder.replace("_", " ") for folder in folders]
    if spec == IMAGENET1K:
        from timm.data import (
            ImageNetInfo,  # a maintained copy of the WordNet synsets and their lemmas
        )

        info = ImageNetInfo()
        known = set(info.label_names())
        unknown = [f for f in folders if f not in known]
        if unknown:
            raise EvalSourceError(
                f"class_names: {IMAGENET1K} needs folders named by WordNet id (n01440764, ...); got {unknown[:3]}"
            )
        return [info.label_name_to_description(f).split(",")[0].strip() for f in folders]
    path = Path(spec)
    if not path.is_file():
        raise EvalSourceError(
            f"{path}: class names file does not exist (or use {IMAGENET1K!r}, or null for folder names)"
        )
    if path.suffix == ".json":
        data = _load_json(str(path), _mtime(path))
        if isinstance(data, dict):
            missing = [f for f in folders if f not in data]
            if missing:
                raise EvalSourceError(f"{path}: no name for class folder(s) {missing[:3]}")
            return [str(data[f]) for f in folders]
        names = data if isinstance(data, list) else None
    else:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if names is None or len(names) != len(folders):
        count = "not a list or mapping" if names is None else f"{len(names)} names"
        raise EvalSourceError(
            f"{path}: {count} for {len(folders)} class folders (one name per folder, sorted folder order)"
        )
    return [str(name) for name in names]


def _templates(spec: str | None) -> list[str]:
    if spec is None:
        return list(SLIP_TEMPLATES)
    path = Path(spec)
    if not path.is_file():
        raise EvalSourceError(f"{path}: templates file does not exist (or null for SLIP's seven)")
    templates = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = next((t for t in templates if t.count("{}") != 1 or "{" in t.replace("{}", "")), None)
    if not templates or bad is not None:
        raise EvalSourceError(
            f"{path}: template {bad!r} must hold exactly one {{}} and no other braces"
            if bad
            else f"{path}: no template"
        )
    return templates


def read_retrieval(
    name: str,
    path: str,
    entries: list[tuple[Path, list[str]]],
    tokenizer: TextTokenizer,
    image_size: int,
    max_text_len: int,
    on_corrupt: OnCorrupt,
    workers: int,
) -> tuple[RetrievalSet, int]:
    """The set of `entries` (from `pair_entries` of `path`) with the paper's protocol: every non-empty
    caption of every decodable image."""
    decoded = _decode_all([image for image, _ in entries], image_size, on_corrupt, workers)
    kept = [
        (pixels, [c.strip() for c in captions if c.strip()])
        for pixels, (_, captions) in zip(decoded, entries, strict=True)
    ]
    kept = [(pixels, captions) for pixels, captions in kept if pixels is not None and captions]
    if not kept:
        raise ValueError(f"{path}: no readable image with a caption")
    images, captions = [pixels for pixels, _ in kept], [image_captions for _, image_captions in kept]
    return retrieval_set(name, images, captions, tokenizer, max_text_len), len(entries) - len(kept)


def read_classification(
    name: str,
    path: str,
    entries: ClassEntries,
    tokenizer: TextTokenizer,
    image_size: int,
    max_text_len: int,
    on_corrupt: OnCorrupt,
    workers: int,
) -> tuple[ClassificationSet, int]:
    readable = _readable([image for image, _ in entries.images], image_size, on_corrupt, workers)
    kept = [(image, label) for ok, (image, label) in zip(readable, entries.images, strict=True) if ok]
    if not kept:
        raise ValueError(f"{path}: no readable image")
    images = FileImages([image for image, _ in kept], image_size, workers)  # an ImageNet-size set is never held whole
    labels = torch.tensor([label for _, label in kept], dtype=torch.int64)
    prompts = [template.format(c) for c in entries.class_names for template in entries.templates]
    prompt_ids, prompt_mask = tokenizer.encode(prompts, max_text_len)
    prompt_class = torch.arange(len(entries.class_names)).repeat_interleave(len(entries.templates))
    loaded = ClassificationSet(
        name, images, labels, entries.class_names, entries.templates, prompt_ids, prompt_mask, prompt_class
    )
    return loaded, len(entries.images) - len(kept)


class FileImages(Sequence[torch.Tensor]):
    """A class-folder set's images, decoded when a slice is read: evaluation holds one batch of
    uint8 pixels, not the set (ImageNet val at 224 px is 7.5 GB as uint8, 30 GB as float32)."""

    def __init__(self, paths: Sequence[Path], image_size: int, workers: int) -> None:
        self.paths = list(paths)
        self.image_size = image_size
        self.workers = workers

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 3, self.image_size, self.image_size)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, int):
            return self[index : index + 1][0]
        decoded = _decode_all(self.paths[index], self.image_size, "fail", self.workers)
        return torch.from_numpy(np.stack(decoded)) if decoded else torch.empty((0, *self.shape[1:]), dtype=torch.uint8)


def _readable(paths: Sequence[Path], image_size: int, on_corrupt: OnCorrupt, workers: int) -> list[bool]:
    """Which images decode, each decoded once and dropped (the set decodes them again per batch)."""

    def check(chunk: Sequence[Path]) -> list[bool]:
        return [pixels is not None for pixels in _decode_all(chunk, image_size, on_corrupt, workers)]

    step = max(64, workers * 16)
    return [ok for start in range(0, len(paths), step) for ok in check(paths[start : start + step])]


def _decode_all(paths: Sequence[Path], image_size: int, on_corrupt: OnCorrupt, workers: int) -> list[np.ndarray | None]:
    def decode(path: Path) -> np.ndarray | None:
        try:
            return decode_image_bytes(path.read_bytes(), image_size, "image")
        except CorruptSample as why:
            if on_corrupt == "fail":
                raise CorruptSampleError(f"{path}: {why} (data.on_corrupt is 'fail')") from None
            return None

    with ThreadPoolExecutor(workers, thread_name_prefix="eval-decode") as pool:
        return list(pool.map(decode, paths))


def _mtime(path: Path) -> int:
    if not path.is_file():
        raise EvalSourceError(f"{path}: no such file")
    return path.stat().st_mtime_ns


@functools.lru_cache(maxsize=8)
def _load_json(path: str, mtime_ns: int) -> object:
    """Parsed once per (file, mtime): validation of every grid point and the read share it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EvalSourceError(f"{path}: not valid UTF-8 JSON: {error}") from error
