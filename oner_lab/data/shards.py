"""Webdataset-style tar shards: writing them, and the one reader every data source goes through.

A sample is the group of consecutive tar members sharing a key (`<key>.png`, `<key>.txt`, ...),
exactly as `webdataset` groups them. The reader hands each raw sample to a decode function;
a sample it cannot decode is skipped and counted, or raises naming the shard and key.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import webdataset as wds
from PIL import Image, ImageOps
from webdataset.tariterators import tarfile_samples

T = TypeVar("T")
RawSample = Mapping[str, Any]  # webdataset's grouping: __key__, __url__, then extension -> bytes
OnCorrupt = Literal["skip", "fail"]
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold (~9,459 x 9,459): larger images are refused, not decoded
MAX_CAPTION_CHARS = 4096  # a caption is cut here before tokenising; max_text_len tokens are far fewer
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class CorruptSample(ValueError):
    """Raised by a decode function: this one sample cannot be used (the reason is the message)."""


class CorruptSampleError(ValueError):
    """A corrupt sample when `data.on_corrupt` is "fail": names the shard file and the sample key."""


class ShardReadError(OSError):
    """A shard whose tar stream itself is unreadable: its samples cannot be counted, so never skipped."""


def write_shards(directory: Path, samples: Iterable[Mapping[str, bytes | str]], per_shard: int) -> list[Path]:
    """Write samples (`{"__key__": key, ext: bytes}`) into `directory/shard-NNNNNN.tar`, `per_shard` each."""
    paths: list[Path] = []
    writer: wds.TarWriter | None = None
    count = 0
    try:
        for sample in samples:
            if writer is None or count == per_shard:
                if writer is not None:
                    writer.close()
                paths.append(directory / f"shard-{len(paths):06d}.tar")
                writer = wds.TarWriter(str(paths[-1]), encoder=False, mtime=0)  # int mtime: no per-member PAX header
                count = 0
            writer.write(dict(sample))
            count += 1
    finally:
        if writer is not None:
            writer.close()
    return paths


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] as PNG bytes (fast compression: shards are a local cache)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def read_shards(shards: Sequence[Path], decode: Callable[[RawSample], T], on_corrupt: OnCorrupt) -> tuple[list[T], int]:
    """Decode every sample of `shards` in order; returns the decoded samples and how many were skipped."""
    decoded: list[T] = []
    skipped = 0
    for shard in shards:
        try:
            for sample in tarfile_samples([{"url": str(shard)}]):
                try:
                    decoded.append(decode(sample))
                except CorruptSample as why:
                    if on_corrupt == "fail":
                        where = f"{shard}: sample {sample['__key__']!r}"
                        hint = "data.on_corrupt is 'fail'; 'skip' skips and counts such samples"
                        raise CorruptSampleError(f"{where}: {why} ({hint})") from None
                    skipped += 1
        except (tarfile.TarError, OSError) as error:
            raise ShardReadError(f"{shard}: unreadable tar stream: {error}") from error
    return decoded, skipped


# ---- field decoders: raise CorruptSample on anything unusable ----


def decode_image(sample: RawSample, image_size: int) -> np.ndarray:
    """The sample's image as uint8 [3, S, S]: resized (shorter side) and centre-cropped if not already S x S."""
    ext = _image_member(sample)
    return decode_image_bytes(bytes(sample[ext]), image_size, f"image .{ext}")


def decode_image_bytes(data: bytes, image_size: int, what: str = "image") -> np.ndarray:
    """Encoded image bytes as uint8 [3, S, S] RGB; raises CorruptSample for anything PIL cannot decode.

    Greyscale, palette, CMYK and 16-bit images are converted to 8-bit RGB; transparent pixels are
    composited on white. An image above MAX_IMAGE_PIXELS is refused from its header, before decoding.
    """
    with _rgb_image(data, image_size, what) as rgb:
        if rgb.size != (image_size, image_size):
            rgb = ImageOps.fit(rgb, (image_size, image_size), Image.Resampling.BICUBIC)
        pixels = np.asarray(rgb)
    return pixels.transpose(2, 0, 1)


def decode_image_rgb(sample: RawSample, min_side: int) -> np.ndarray:
    """The sample's whole image as uint8 [H, W, 3], as decode_image_bytes converts it, but neither cropped nor resized.

    Only reduced while both sides stay >= min_side: JPEGs in the DCT domain (draft), other formats
    by an integer box filter (PIL's reduce, what its `reducing_gap` resizing does first), so a large
    image costs little more than a small one. The training crops cut this and resize once.
    """
    ext = _image_member(sample)
    with _rgb_image(bytes(sample[ext]), min_side, f"image .{ext}") as rgb:
        factor = min(rgb.size) // min_side
        if factor >= 2:
            rgb = rgb.reduce(factor)
        return np.asarray(rgb)


def _image_member(sample: RawSample) -> str:
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise CorruptSample(f"no image (expected one of .{', .'.join(IMAGE_EXTENSIONS)})")
    return ext


@contextmanager
def _rgb_image(data: bytes, min_side: int, what: str) -> Iterator[Image.Image]:
    """The decoded image in 8-bit RGB (JPEGs at the smallest DCT scale keeping both sides >= min_side).

    Any error PIL raises, here or in the caller's block, becomes CorruptSample naming `what`.
    """
    try:  # PIL rather than torchvision.io: torchvision 0.29's PNG decoder segfaults on some corrupt IDAT data
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise CorruptSample(f"{what} is {width} x {height} pixels, above the {MAX_IMAGE_PIXELS:,} pixel limit")
            image.draft("RGB", (min_side, min_side))
            image.load()
            yield _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # PIL raises all of these
        if isinstance(error, CorruptSample):
            raise
        raise CorruptSample(f"{what} cannot be decoded: {error}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_GREY_MODES:  # 16/32-bit greyscale: PIL's convert("RGB") would clip at 255
        wide = np.asarray(image).astype(np.uint32)
        return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_text(sample: RawSample, ext: str = "txt") -> str:
    """A non-empty UTF-8 caption from `<key>.<ext>`, cut to MAX_CAPTION_CHARS (far beyond any token budget)."""
    return clean_caption(_utf8(sample, ext), f".{ext}")


def clean_caption(text: str, what: str = "caption") -> str:
    """Stripped and cut to MAX_CAPTION_CHARS; raises CorruptSample when empty."""
    text = text[:MAX_CAPTION_CHARS].strip()
    if not text:
        raise CorruptSample(f"caption {what} is empty")
    return text


def decode_captions(sample: RawSample, ext: str = "json") -> list[str]:
    """A JSON list of non-empty captions from `<key>.<ext>` (several ground truths per image)."""
    try:
        captions = json.loads(_utf8(sample, ext))
    except json.JSONDecodeError as error:
        raise CorruptSample(f"captions .{ext} are not valid JSON: {error}") from None
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise CorruptSample(f"captions .{ext} must be a non-empty JSON list of non-empty strings")
    return [c.strip() for c in captions]


def decode_label(sample: RawSample, num_classes: int, ext: str = "cls") -> int:
    """An integer class label in [0, num_classes) from `<key>.<ext>`."""
    text = _utf8(sample, ext).strip()
    if not text.isdigit() or int(text) >= num_classes:
        raise CorruptSample(f"label .{ext} is {text!r}; expected an integer in 0..{num_classes - 1}")
    return int(text)


def _utf8(sample: RawSample, ext: str) -> str:
    data = sample.get(ext)
    if data is None:
        raise CorruptSample(f"missing .{ext}")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorruptSample(f".{ext} is not UTF-8: {error}") from None
