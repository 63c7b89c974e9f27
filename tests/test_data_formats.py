"""Real data formats: webdataset shards, open_clip CSV, retrieval JSON (ALBEF, Karpathy), class folders.

Every dataset here is written by the test in the real format; training runs go through
`oner_lab.train.run` with a micro model, and retrieval numbers are checked against a brute-force
reference computed from the saved checkpoint.
"""

from __future__ import annotations

import io
import json
import re
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from oner_lab import train
from oner_lab.checkpoint import load
from oner_lab.contract import ConfigError
from oner_lab.data import CorruptSampleError, TextTokenizer, prepare
from oner_lab.data.eval_sources import SLIP_TEMPLATES
from oner_lab.data.indexed_stream import batch_quotas, epoch_order
from oner_lab.data.shards import (
    CorruptSample,
    decode_image_bytes,
    decode_text,
    write_shards,
)
from oner_lab.data.sources import expand_urls
from oner_lab.model import OneTower, TowerConfig
from oner_lab.spec.config import DataConfig, RunConfig

SIZE = 24  # the tiny preset's image size
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "stripe", "dot")


# ---- writing small datasets in the real formats ----


def picture(colour: str, shape: str, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    image = Image.new("RGB", size, (20, 20, 20))
    w, h = size
    box = {
        "square": (w // 4, h // 4, 3 * w // 4, 3 * h // 4),
        "stripe": (0, h // 3, w, 2 * h // 3),
        "dot": (w // 3, h // 3, 2 * w // 3, 2 * h // 3),
    }[shape]
    image.paste(COLOURS[colour], box)
    return image


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def scenes(count: int) -> list[tuple[str, str]]:
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    return [pairs[i % len(pairs)] for i in range(count)]


def write_webdataset(directory: Path, count: int, per_shard: int, tag: str = "item", fmt: str = "jpg") -> list[Path]:
    """Shards of `<key>.jpg` (larger than SIZE, so decoding resizes) + `<key>.txt` naming the sample."""
    directory.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, (colour, shape) in enumerate(scenes(count)):
        image = encoded(picture(colour, shape, (40, 32)), "JPEG" if fmt == "jpg" else "PNG")
        samples.append({"__key__": f"{tag}{i:05d}", fmt: image, "txt": f"{tag} {i} a {colour} {shape}".encode()})
    return write_shards(directory, samples, per_shard)


def write_csv(directory: Path, count: int, separator: str = "\t") -> Path:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = [f"filepath{separator}title"]
    for i, (colour, shape) in enumerate(scenes(count)):
        picture(colour, shape).save(directory / "images" / f"{i}.png")
        lines.append(f"images/{i}.png{separator}row {i} a {colour} {shape}")
    path = directory / "train.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_coco_style(directory: Path, count: int) -> tuple[Path, Path, list[tuple[str, list[str]]]]:
    """The same images with five captions each, as an ALBEF per-image list and as a Karpathy dataset_coco.json."""
    (directory / "val2014").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (colour, shape) in enumerate(scenes(count)):
        name = f"COCO_val2014_{i:012d}.png"
        picture(colour, shape).save(directory / "val2014" / name)
        # Distinct across images: a caption shared by two images ties exactly, and float noise would
        # decide the tie differently in the eval's batches and in the brute-force reference.
        captions = [
            f"a {colour} {shape}",
            f"{colour} {shape} on dark",
            f"the {shape} is {colour}",
            f"one {shape} {i}",
            f"a {colour} thing {i}",
        ]
        entries.append((f"val2014/{name}", captions))
    albef = directory / "coco_test.json"
    albef.write_text(json.dumps([{"image": image, "caption": captions} for image, captions in entries]))
    karpathy_images = [
        {
            "filepath": "val2014",
            "filename": image.split("/")[1],
            "split": "test",
            "sentences": [{"raw": c} for c in captions],
        }
        for image, captions in entries
    ]
    karpathy_images.append(
        {"filepath": "val2014", "filename": "unused.jpg", "split": "train", "sentences": [{"raw": "x"}]}
    )
    karpathy = directory / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": karpathy_images, "dataset": "coco"}))
    return albef, karpathy, entries


def write_class_folders(root: Path, per_class: int = 2) -> list[str]:
    folders = [f"n0000000{i}" for i in range(len(COLOURS))]
    for folder, colour in zip(folders, COLOURS, strict=True):
        (root / folder).mkdir(parents=True)
        for j in range(per_class):
            picture(colour, SHAPES[j % len(SHAPES)]).save(root / folder / f"{j}.JPEG", format="JPEG", quality=95)
    return folders


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but carries almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def micro_run_config(cache: Path, data: dict, eval_sets: list[str], **train_settings: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"width": 32, "depth": 1, "num_heads": 2, "proj_dim": 16},
            "objective": {"variant": "oner"},
            "data": {"cache_dir": str(cache), "vocab_size": 120, "workers": 2, "shuffle_buffer": 8, **data},
            "train": {
                "batch_size": 8,
                "steps": 4,
                "warmup_steps": 1,
                "checkpoint_every": 2,
                "log_every": 1,
                **train_settings,
            },
            "eval": {"sets": eval_sets, "batch_size": 64},
        }
    )


def sample_numbers(tokenizer: TextTokenizer, text_ids: torch.Tensor) -> list[tuple[str, int]]:
    """(tag, number) of each row, read back from its caption `<tag> <number> ...`."""
    return [(text.split()[0], int(text.split()[1])) for text in tokenizer.decode(text_ids)]


# ---- url patterns ----


def test_urls_expand_braces_and_globs_and_name_what_is_missing(tmp_path: Path) -> None:
    shards = write_webdataset(tmp_path / "wds", 12, 4)
    assert expand_urls(str(tmp_path / "wds" / "shard-{000000..000002}.tar")) == shards
    assert expand_urls(str(tmp_path / "wds" / "*.tar")) == shards
    with pytest.raises(FileNotFoundError, match="shard-000003.tar: no such file"):
        expand_urls(str(tmp_path / "wds" / "shard-{000000..000003}.tar"))
    with pytest.raises(FileNotFoundError, match=r"\*\.tgz: the glob matches no file"):
        expand_urls(str(tmp_path / "wds" / "*.tgz"))


# ---- the streaming training source ----


def test_every_epoch_visits_each_sample_once_across_ranks_and_batches_are_pure_functions_of_step(
    tmp_path: Path,
) -> None:
    write_webdataset(tmp_path / "wds", 24, 7)  # shards of 7, 7, 7, 3
    config = DataConfig(
        source={"kind": "webdataset", "urls": str(tmp_path / "wds" / "*.tar")},
        cache_dir=str(tmp_path / "cache"),
        shuffle_buffer=5,
        workers=2,
    )
    data = prepare(config, SIZE, 16, [])
    assert data.train.num_samples == 24
    seen = []
    for step in range(6):  # 6 steps x 8 = two epochs
        for rank in range(2):
            seen += sample_numbers(data.tokenizer, data.train.batch(step, 8, seed=3, rank=rank, world_size=2).text_ids)
    first, second = seen[:24], seen[24:]
    assert sorted(n for _, n in first) == list(range(24)) and sorted(n for _, n in second) == list(range(24))
    assert first != second  # each epoch has its own order

    fresh = prepare(config, SIZE, 16, [])  # a resumed process: new objects, the index read from the cache
    for step in (4, 1):
        a, b = fresh.train.batch(step, 8, seed=3), data.train.batch(step, 8, seed=3)
        for name in ("images", "images_target", "text_ids", "text_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (step, name)
    halves = [data.train.batch(2, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    whole = data.train.batch(2, 8, seed=3)
    assert torch.equal(torch.cat([h.images for h in halves]), whole.images)  # the global batch ignores the world size


def test_epoch_order_keeps_shards_together_up_to_the_shuffle_window() -> None:
    starts = np.array([0, 10, 20, 30])
    order = epoch_order(starts, 40, window=10, seed=0, source=0, epoch=0)
    assert sorted(order.tolist()) == list(range(40))
    windows = [set((order[i : i + 10] // 10).tolist()) for i in range(0, 40, 10)]
    assert all(len(w) == 1 for w in windows)  # a window of one shard's size reads one shard
    assert len({min(w) for w in windows}) == 4
    assert not np.array_equal(order, epoch_order(starts, 40, 10, seed=0, source=0, epoch=1))


def test_sources_are_mixed_by_weight_in_every_batch(tmp_path: Path) -> None:
    write_webdataset(tmp_path / "cc", 30, 10, tag="cc")
    write_webdataset(tmp_path / "sbu", 6, 3, tag="sbu")
    urls = [str(tmp_path / "cc" / "shard-{000000..000002}.tar"), str(tmp_path / "sbu" / "*.tar")]
    config = DataConfig(
        source={"kind": "webdataset", "urls": urls, "weights": [3, 1]}, cache_dir=str(tmp_path / "cache"), workers=2
    )
    data = prepare(config, SIZE, 16, [])
    assert (
        batch_quotas([3, 1], 8) == [6, 2]
        and batch_quotas([30, 6], 8) == [7, 1]
        and batch_quotas([1, 1, 1], 8) == [3, 3, 2]
    )
    drawn = []
    for step in range(6):
        rows = sample_numbers(data.tokenizer, data.train.batch(step, 8, seed=0).text_ids)
        assert sum(tag == "sbu" for tag, _ in rows) == 2
        drawn += rows
    sbu = [n for tag, n in drawn if tag == "sbu"]
    assert sorted(sbu[:6]) == list(range(6)) and sorted(sbu[6:]) == list(range(6))  # sbu's own epochs, no repeats
    assert len({n for tag, n in drawn if tag == "cc"}) == 30  # 36 cc rows: a full epoch, then the next begins


def test_csv_source_reads_open_clip_columns_relative_to_the_file(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "csv", 10, separator=",")
    config = DataConfig(
        source={"kind": "csv", "urls": str(csv), "separator": ","}, cache_dir=str(tmp_path / "cache"), workers=2
    )
    data = prepare(config, SIZE, 16, [])
    assert data.train.num_samples == 10
    batch = data.train.batch(0, 10, seed=0)
    numbers = [n for _, n in sample_numbers(data.tokenizer, batch.text_ids)]
    assert sorted(numbers) == list(range(10))
    config_whole = DataConfig(
        source={"kind": "csv", "urls": str(csv), "separator": ","},
        cache_dir=str(tmp_path / "cache"),
        crop_scale=(1.0, 1.0),
    )
    whole = prepare(config_whole, SIZE, 16, []).train.batch(0, 10, seed=0)
    row = numbers.index(4)
    stored = torch.from_numpy(np.array(Image.open(tmp_path / "csv" / "images" / "4.png").convert("RGB"))).permute(
        2, 0, 1
    )
    assert torch.allclose(whole.images[row], stored.float() * 2 / 255 - 1, atol=1e-5)  # the file at the relative path


# ---- corrupt content: handled, or skipped and counted ----


def test_unusual_image_modes_are_converted_to_the_right_rgb() -> None:
    grey16 = np.full((SIZE, SIZE), 0x8000, dtype=np.uint16)
    assert decode_image_bytes(encoded(Image.fromarray(grey16)), SIZE)[:, 0, 0].tolist() == [128, 128, 128]
    grey = Image.new("L", (SIZE, SIZE), 77)
    assert decode_image_bytes(encoded(grey), SIZE)[:, 3, 3].tolist() == [77, 77, 77]
    rgba = Image.new("RGBA", (SIZE, SIZE), (255, 0, 0, 0))  # fully transparent red: the background shows
    rgba.paste((0, 0, 255, 255), (0, 0, SIZE // 2, SIZE))
    pixels = decode_image_bytes(encoded(rgba), SIZE)
    assert pixels[:, 0, 0].tolist() == [0, 0, 255] and pixels[:, 0, SIZE - 1].tolist() == [255, 255, 255]
    cmyk = Image.new("CMYK", (SIZE, SIZE), (0, 255, 255, 0))  # pure red in CMYK
    red = decode_image_bytes(encoded(cmyk, "JPEG", quality=95), SIZE)[:, 5, 5]
    assert red[0] > 230 and red[1] < 25 and red[2] < 25
    webp = decode_image_bytes(encoded(picture("green", "square"), "WEBP", lossless=True), SIZE)
    assert webp[:, SIZE // 2, SIZE // 2].tolist() == list(COLOURS["green"])
    wide = decode_image_bytes(encoded(picture("blue", "stripe", (96, 48))), SIZE)  # resize shorter side, centre crop
    assert wide.shape == (3, SIZE, SIZE) and wide[:, SIZE // 2, 0].tolist() == list(COLOURS["blue"])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "cannot be decoded"),
        (encoded(picture("red", "dot"), "JPEG")[:200], "cannot be decoded"),
        (b"this is not an image", "cannot be decoded"),
        (png_header_only(20_000, 20_000), "20000 x 20000 pixels|decompression bomb"),
        (png_header_only(10_000, 9_000), "10000 x 9000 pixels, above"),
    ],
    ids=["zero-byte", "truncated-jpeg", "not-an-image", "bomb-20000", "over-limit-90M"],
)
def test_undecodable_images_raise_corrupt_sample(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptSample, match=reason):
        decode_image_bytes(data, SIZE)


def test_a_one_megabyte_caption_is_cut_before_tokenising_with_the_same_tokens(tmp_path: Path) -> None:
    words = "a red square on a dark background " * 30_000
    caption = decode_text({"txt": words.encode()})
    assert len(words) > 1_000_000 and 0 < len(caption) <= 4096
    tokenizer = TextTokenizer.train([words[:2000]], 100)
    assert torch.equal(tokenizer.encode([caption], 20)[0], tokenizer.encode([words], 20)[0])


def corrupt_samples() -> dict[str, dict[str, bytes]]:
    good = encoded(picture("red", "dot"))
    return {
        "zero": {"png": b"", "txt": b"bad zero"},
        "trunc": {"jpg": encoded(picture("red", "dot"), "JPEG")[:150], "txt": b"bad trunc"},
        "bomb": {"png": png_header_only(20_000, 20_000), "txt": b"bad bomb"},
        "nocap": {"png": good},
        "emptycap": {"png": good, "txt": b"   \n"},
        "latin1": {"png": good, "txt": "bad caf\xe9".encode("latin-1")},
        "noimage": {"txt": b"bad noimage"},
    }


def test_corrupt_samples_in_shards_are_skipped_and_counted_or_fail_naming_shard_and_key(tmp_path: Path) -> None:
    good = [
        {"__key__": f"good{i:03d}", "png": encoded(picture("blue", SHAPES[i % 3])), "txt": f"item {i} fine".encode()}
        for i in range(10)
    ]
    odd = [
        {
            "__key__": "cmyk",
            "jpg": encoded(Image.new("CMYK", (SIZE, SIZE), (0, 255, 255, 0)), "JPEG"),
            "txt": b"item 10 cmyk",
        },
        {"__key__": "grey16", "png": encoded(Image.fromarray(np.full((8, 8), 999, np.uint16))), "txt": b"item 11 grey"},
        {"__key__": "rgba", "png": encoded(Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))), "txt": b"item 12 rgba"},
        {"__key__": "longcap", "png": encoded(picture("red", "dot")), "txt": ("item 13 " + "long " * 250_000).encode()},
    ]
    bad = [{"__key__": key, **fields} for key, fields in corrupt_samples().items()]
    (tmp_path / "wds").mkdir()
    write_shards(tmp_path / "wds", good[:5] + bad[:4] + odd + bad[4:] + good[5:], 8)
    config = DataConfig(
        source={"kind": "webdataset", "urls": str(tmp_path / "wds" / "*.tar")},
        cache_dir=str(tmp_path / "cache"),
        workers=2,
    )
    data = prepare(config, SIZE, 16, [])
    assert data.train.num_samples == 14 + 5  # "nocap" and "noimage" are left out (and counted) while indexing
    assert data.skipped_samples == 2
    numbers = []
    for step in range(4):  # 32 rows: every position of the 19-sample epoch at least once
        numbers += [n for _, n in sample_numbers(data.tokenizer, data.train.batch(step, 8, seed=0).text_ids)]
    assert set(numbers) == set(range(14))  # every readable sample, the odd ones included; never a corrupt one
    assert data.skipped_samples == 2 + 5  # zero-byte, truncated, bomb, empty caption, non-UTF-8 caption

    strict = {**config.model_dump(), "on_corrupt": "fail"}
    with pytest.raises(ConfigError, match=r"shard-000001\.tar: sample 'nocap': missing \.txt"):  # found by validation
        prepare(DataConfig(**{**strict, "cache_dir": str(tmp_path / "strict")}), SIZE, 16, [])
    (tmp_path / "one_bad").mkdir()
    write_shards(tmp_path / "one_bad", good[:3] + bad[1:2], 8)
    strict_stream = DataConfig(
        **{
            **strict,
            "source": {"kind": "webdataset", "urls": str(tmp_path / "one_bad" / "*.tar")},
            "cache_dir": str(tmp_path / "strict"),
        }
    )
    stream = prepare(strict_stream, SIZE, 16, []).train
    with pytest.raises(CorruptSampleError, match=r"shard-000000\.tar: sample 'trunc': image \.jpg cannot be decoded"):
        stream.batch(0, 4, seed=0)


def test_corrupt_csv_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "csv", 6)
    picture("red", "dot").save(tmp_path / "csv" / "images" / "cmyk.jpg")
    Image.new("CMYK", (SIZE, SIZE), (0, 255, 255, 0)).save(tmp_path / "csv" / "images" / "cmyk.jpg")
    (tmp_path / "csv" / "images" / "zero.png").write_bytes(b"")
    extra = [
        b"images/missing.png\trow 90 gone",
        b"images/zero.png\trow 91 zero",
        b"images/0.png\t",
        b"images/1.png\trow 92 caf\xe9",
        b"\trow 93 no path",
        ("/" + str(tmp_path / "csv" / "images" / "cmyk.jpg").lstrip("/") + "\trow 6 absolute cmyk").encode(),
    ]
    csv.write_bytes(csv.read_bytes() + b"\n".join(extra) + b"\n")
    config = DataConfig(source={"kind": "csv", "urls": str(csv)}, cache_dir=str(tmp_path / "cache"), workers=2)
    data = prepare(config, SIZE, 16, [])
    assert data.train.num_samples == 9 and data.skipped_samples == 3  # empty caption, non-UTF-8, empty path
    numbers = [n for _, n in sample_numbers(data.tokenizer, data.train.batch(0, 9, seed=0).text_ids)]
    numbers += [n for _, n in sample_numbers(data.tokenizer, data.train.batch(1, 9, seed=0).text_ids)]
    assert set(numbers) == set(range(7))  # the six rows and the absolute-path CMYK image, never 90 or 91
    assert data.skipped_samples == 3 + 2  # plus the missing and the zero-byte image files
    strict = DataConfig(**{**config.model_dump(), "on_corrupt": "fail"})
    with pytest.raises(
        ConfigError, match=r"train\.tsv: row 10: caption column 'title' is empty"
    ):  # found by validation
        prepare(strict, SIZE, 16, [])


# ---- bad input: one clear error before training ----


def bad_input_cases(tmp_path: Path) -> dict[str, tuple[dict, list[str], str, str]]:
    """name -> (data settings, eval sets, the ConfigError's key, a regex its message must match)."""
    write_webdataset(tmp_path / "wds", 4, 4)
    (tmp_path / "empty.tar").write_bytes(b"")
    csv = write_csv(tmp_path / "csv", 2)
    albef, karpathy, _ = write_coco_style(tmp_path / "coco", 3)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"image": "val2014/x.png", "caption": ["a"]}, {"caption": ["b"]}]))
    write_class_folders(tmp_path / "classes")
    (tmp_path / "classes" / "n00000009").mkdir()
    (tmp_path / "classes" / "n00000009" / "notes.txt").write_text("no image here")
    write_class_folders(tmp_path / "classes_ok")
    (tmp_path / "vocabless").mkdir()
    wds = {"source": {"kind": "webdataset", "urls": str(tmp_path / "wds" / "*.tar")}}
    return {
        "glob-matches-nothing": (
            {"source": {"kind": "webdataset", "urls": str(tmp_path / "nowhere" / "*.tar")}},
            [],
            "data.source.urls",
            r"nowhere/\*\.tar: the glob matches no file",
        ),
        "brace-part-missing": (
            {"source": {"kind": "webdataset", "urls": str(tmp_path / "wds" / "shard-{000000..000001}.tar")}},
            [],
            "data.source.urls",
            r"shard-000001\.tar: no such file",
        ),
        "empty-shard": (
            {"source": {"kind": "webdataset", "urls": str(tmp_path / "empty.tar")}},
            [],
            "data.source.urls",
            r"empty\.tar.*an empty file; expected a webdataset tar shard",
        ),
        "no-urls": ({"source": {"kind": "csv"}}, [], "data.source.urls", "for data.source.kind: csv"),
        "weights-count": (
            {"source": {**wds["source"], "weights": [1.0, 2.0]}},
            [],
            "data.source.weights",
            r"one weight per data\.source\.urls entry \(1\)",
        ),
        "csv-column": (
            {"source": {"kind": "csv", "urls": str(csv), "caption_key": "caption"}},
            [],
            "data.source.urls",
            r"no column 'caption' \(header has \['filepath', 'title'\]",
        ),
        "json-missing-key": (
            {"eval_sources": {"coco": {"format": "retrieval_json", "path": str(broken)}}},
            ["coco"],
            "data.eval_sources.coco",
            r"broken\.json: entry 1 lacks key 'image'",
        ),
        "json-missing-image": (
            {"eval_sources": {"coco": {"format": "retrieval_json", "path": str(albef), "image_root": str(tmp_path)}}},
            ["coco"],
            "data.eval_sources.coco",
            r"val2014/COCO_val2014_000000000000\.png does not exist",
        ),
        "karpathy-split": (
            {"eval_sources": {"coco": {"format": "karpathy", "path": str(karpathy), "split": "val"}}},
            ["coco"],
            "data.eval_sources.coco",
            r"no image in split 'val' \(splits present: \['test', 'train'\]\)",
        ),
        "class-folder-without-images": (
            {"eval_sources": {"inet": {"format": "class_folders", "path": str(tmp_path / "classes")}}},
            ["inet"],
            "data.eval_sources.inet",
            r"n00000009: class folder holds no image",
        ),
        "class-names-count": (
            {
                "eval_sources": {
                    "inet": {"format": "class_folders", "path": str(tmp_path / "classes_ok"), "class_names": str(csv)}
                }
            },
            ["inet"],
            "data.eval_sources.inet",
            r"train\.tsv: 3 names for 4 class folders",
        ),
        "unknown-eval-set": (
            {"eval_sources": {"coco": {"format": "karpathy", "path": str(karpathy)}}},
            ["flickr"],
            "eval.sets",
            r"data\.eval_sources defines coco",
        ),
        "built-in-name-taken": (
            {"eval_sources": {"shapes": {"format": "karpathy", "path": str(karpathy)}}},
            [],
            "data.eval_sources.shapes",
            "taken",
        ),
        "tokenizer-without-vocab": (
            {"tokenizer": str(tmp_path / "vocabless")},
            [],
            "data.tokenizer",
            "neither tokenizer.json nor vocab.txt",
        ),
    }


BAD_INPUT_NAMES = [
    "glob-matches-nothing",
    "brace-part-missing",
    "empty-shard",
    "no-urls",
    "weights-count",
    "csv-column",
    "json-missing-key",
    "json-missing-image",
    "karpathy-split",
    "class-folder-without-images",
    "class-names-count",
    "unknown-eval-set",
    "built-in-name-taken",
    "tokenizer-without-vocab",
]


@pytest.mark.parametrize("case", BAD_INPUT_NAMES)
def test_bad_input_is_a_config_error_naming_the_file_before_training(tmp_path: Path, case: str) -> None:
    data, eval_sets, key, message = bad_input_cases(tmp_path)[case]
    config = micro_run_config(tmp_path / "cache", data, eval_sets)
    with pytest.raises(ConfigError) as error:
        train.validate(config)
    assert error.value.key == key
    assert re.search(message, str(error.value)), str(error.value)
    assert not (tmp_path / "cache").exists()  # nothing was indexed or generated


def test_a_tar_without_samples_stops_prepare_naming_the_shard(tmp_path: Path) -> None:
    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "notes.tar", "w") as archive:
        info = tarfile.TarInfo("README")
        archive.addfile(info, io.BytesIO(b""))
    config = DataConfig(
        source={"kind": "webdataset", "urls": str(tmp_path / "wds" / "notes.tar")}, cache_dir=str(tmp_path / "cache")
    )
    with pytest.raises(ConfigError, match=r"notes\.tar: holds no usable sample \(expected webdataset members"):
        prepare(config, SIZE, 16, [])  # found by validation, before any run is created


# ---- training through each loader; evaluation against a brute-force reference ----


def trained_tower(run_dir: Path) -> OneTower:
    state = load(run_dir / "checkpoints" / "last.pt")
    assert state is not None
    model = OneTower(TowerConfig(**state["tower"]))
    model.load_state_dict(state["model"])
    return model.eval()


def stored_pixels(paths: list[Path]) -> torch.Tensor:
    """The eval transform by hand for SIZE x SIZE files: RGB, scaled to [-1, 1]."""
    arrays = [np.array(Image.open(p).convert("RGB")) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def brute_force_recall(sim: list[list[float]], owner: list[int], k: int) -> tuple[float, float]:
    """(text R@k, image R@k) in %, one item at a time; ties count against the model."""
    images, captions = len(sim), len(owner)
    text_hits = 0
    for i in range(images):
        best = max(sim[i][j] for j in range(captions) if owner[j] == i)
        text_hits += sum(sim[i][j] >= best for j in range(captions) if owner[j] != i) < k
    image_hits = 0
    for j in range(captions):
        best = sim[owner[j]][j]
        image_hits += sum(sim[i][j] >= best for i in range(images) if i != owner[j]) < k
    return 100 * text_hits / images, 100 * image_hits / captions


def training_data(tmp_path: Path, kind: str) -> dict:
    if kind == "webdataset":
        write_webdataset(tmp_path / "cc", 20, 6, tag="cc")
        write_webdataset(tmp_path / "sbu", 8, 4, tag="sbu", fmt="png")
        urls = [str(tmp_path / "cc" / "shard-{000000..000003}.tar"), str(tmp_path / "sbu" / "*.tar")]
        return {"source": {"kind": "webdataset", "urls": urls, "weights": [3.0, 1.0]}}
    return {"source": {"kind": "csv", "urls": str(write_csv(tmp_path / "csv", 20))}}


@pytest.mark.parametrize("kind", ["webdataset", "csv"])
def test_training_runs_through_each_loader_and_evaluation_matches_a_brute_force_reference(
    tmp_path: Path, kind: str
) -> None:
    albef, karpathy, entries = write_coco_style(tmp_path / "coco", 10)
    folders = write_class_folders(tmp_path / "inet")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(COLOURS) + "\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("a {} picture.\nsomething {}.\n")
    eval_sources = {
        "coco5k": {"format": "retrieval_json", "path": str(albef)},
        "coco_karpathy": {"format": "karpathy", "path": str(karpathy), "image_root": str(tmp_path / "coco")},
        "inet": {
            "format": "class_folders",
            "path": str(tmp_path / "inet"),
            "class_names": str(names),
            "templates": str(templates),
        },
    }
    config = micro_run_config(
        tmp_path / "cache",
        {**training_data(tmp_path, kind), "eval_sources": eval_sources},
        ["coco5k", "coco_karpathy", "inet"],
    )
    final = train.run(config, tmp_path / "run")
    assert final["train/steps"] == 4 and final["data/skipped_samples"] == 0
    assert all(np.isfinite(final[f"train/loss_{term}"]) for term in ("itc", "mlm", "mim"))

    model = trained_tower(tmp_path / "run")
    tokenizer = TextTokenizer.load(next((tmp_path / "cache").glob("tokenizer-*")))
    captions = [c for _, image_captions in entries for c in image_captions]
    owner = [i for i, (_, image_captions) in enumerate(entries) for _ in image_captions]
    with torch.no_grad():
        image_emb = F.normalize(
            model.encode_image(stored_pixels([tmp_path / "coco" / image for image, _ in entries])), dim=-1
        )
        text_emb = F.normalize(model.encode_text(*tokenizer.encode(captions, model.cfg.max_text_len)), dim=-1)
    sim = (image_emb @ text_emb.T).tolist()
    for k in (1, 5, 10):
        text_recall, image_recall = brute_force_recall(sim, owner, k)
        for name in ("coco5k", "coco_karpathy"):
            assert final[f"eval/{name}/tr_r{k}"] == pytest.approx(text_recall), (name, k)
            assert final[f"eval/{name}/ir_r{k}"] == pytest.approx(image_recall), (name, k)

    prompts = [t.format(c) for c in COLOURS for t in ("a {} picture.", "something {}.")]
    images = sorted((tmp_path / "inet").glob("*/*.JPEG"))
    with torch.no_grad():
        prompt_emb = F.normalize(model.encode_text(*tokenizer.encode(prompts, model.cfg.max_text_len)), dim=-1)
        class_emb = F.normalize(prompt_emb.view(len(COLOURS), 2, -1).mean(1), dim=-1)
        pixels = torch.from_numpy(np.stack([np.array(Image.open(p).convert("RGB")) for p in images])).permute(
            0, 3, 1, 2
        )
        predicted = (F.normalize(model.encode_image(pixels.float() / 127.5 - 1), dim=-1) @ class_emb.T).argmax(1)
    labels = torch.tensor([folders.index(p.parent.name) for p in images])
    assert final["eval/inet/top1"] == pytest.approx(100 * (predicted == labels).float().mean().item())


class StopAfter:
    """Asks the loop to stop after `steps` steps, as a preemption signal does."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def should_stop(self) -> bool:
        self.left -= 1
        return self.left <= 0


def test_a_resumed_webdataset_run_ends_with_the_same_parameters(tmp_path: Path) -> None:
    config = micro_run_config(
        tmp_path / "cache", training_data(tmp_path, "webdataset"), [], steps=5, checkpoint_every=5
    )
    train.run(config, tmp_path / "straight")
    with pytest.raises(train.Interrupted):
        train.run(config, tmp_path / "resumed", control=StopAfter(2))
    train.run(config, tmp_path / "resumed")
    straight, resumed = (
        load(tmp_path / "straight" / "checkpoints" / "last.pt"),
        load(tmp_path / "resumed" / "checkpoints" / "last.pt"),
    )
    assert straight is not None and resumed is not None and straight["step"] == resumed["step"] == 5
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_class_folder_names_from_imagenet_ids_and_slip_templates_by_default(tmp_path: Path) -> None:
    for wnid, colour in (("n01440764", "red"), ("n01443537", "yellow")):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        picture(colour, "dot").save(tmp_path / "val" / wnid / "a.JPEG", format="JPEG")
    (tmp_path / "val" / "n01443537" / "b.png").write_bytes(b"")  # corrupt: skipped and counted
    source = {"format": "class_folders", "path": str(tmp_path / "val"), "class_names": "imagenet1k"}
    config = DataConfig(cache_dir=str(tmp_path / "cache"), train_size=16, eval_sources={"inet": source})
    data = prepare(config, SIZE, 16, ["inet"])
    inet = data.eval_sets["inet"]
    assert (
        inet.class_names == ["tench", "goldfish"]
        and inet.templates == list(SLIP_TEMPLATES)
        and len(SLIP_TEMPLATES) == 7
    )
    assert inet.labels.tolist() == [0, 1] and data.skipped_samples == 1
    assert data.tokenizer.decode(inet.prompt_ids[7:8]) == ["itap of a goldfish."]
