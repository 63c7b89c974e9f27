"""The sample corpora writer: every corpus is readable by the loader the local profiles use, and
writing again is a no-op unless the requested set differs."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from oner_lab.data import shapes
from oner_lab.data.eval_sources import class_entries
from oner_lab.data.sample_corpora import MANIFEST, PAIRED_CORPORA, SampleSizes, main, write_samples
from oner_lab.data.shards import decode_image_bytes
from oner_lab.data.sources import expand_urls
from oner_lab.spec.config import EvalSourceConfig

SCALE = 0.05


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_samples(tmp_path_factory.mktemp("samples") / "sample", scale=SCALE, image_size=32)


def test_paired_corpora_are_webdataset_shards_of_jpeg_and_caption(samples: Path) -> None:
    sizes = SampleSizes().scaled(SCALE)
    keys_seen: set[str] = set()
    for corpus in PAIRED_CORPORA:
        shards = expand_urls(str(samples / corpus / "*.tar"))
        members = [name for shard in shards for name in tarfile.open(shard).getnames()]
        keys = {name.rsplit(".", 1)[0] for name in members}
        assert sorted(members) == sorted([f"{key}.jpg" for key in keys] + [f"{key}.txt" for key in keys])
        assert len(keys) == getattr(sizes, corpus)
        assert not keys & keys_seen  # no two corpora share a sample key
        keys_seen |= keys
    with tarfile.open(expand_urls(str(samples / "cc3m" / "*.tar"))[0]) as shard:
        first = sorted(shard.getnames())[:2]
        image = decode_image_bytes(shard.extractfile(first[0]).read(), 24)
        caption = shard.extractfile(first[1]).read().decode()
    assert image.shape == (3, 24, 24)
    assert caption == shapes.make_sample(101, "train", 0, 2).captions[0]


def test_retrieval_sets_read_as_karpathy_and_albef_with_five_captions(samples: Path) -> None:
    sizes = SampleSizes().scaled(SCALE)
    coco = samples / "coco" / "dataset_coco.json"
    test = EvalSourceConfig.model_validate({"format": "karpathy", "path": str(coco), "split": "test"}).entries()
    train = EvalSourceConfig.model_validate({"format": "karpathy", "path": str(coco), "split": "train"}).entries()
    restval = EvalSourceConfig.model_validate({"format": "karpathy", "path": str(coco), "split": "restval"}).entries()
    assert len(test) == sizes.coco_test_images
    assert len(train) + len(restval) == sizes.coco_train_images
    assert all(len(captions) == 5 and path.is_file() for path, captions in test + train)
    assert not {path for path, _ in test} & {path for path, _ in train + restval}
    flickr = EvalSourceConfig.model_validate(
        {"format": "retrieval_json", "path": str(samples / "flickr30k" / "flickr30k_test.json")}
    ).entries()
    assert len(flickr) == sizes.flickr_test_images and all(len(c) == 5 for _, c in flickr)


def test_class_folders_carry_the_shapes_class_names_and_prompts(samples: Path) -> None:
    base = samples / "imagenet"
    entries = class_entries(str(base / "val"), str(base / "classnames.txt"), str(base / "templates.txt"))
    assert entries.class_names == list(shapes.CLASS_NAMES)
    assert entries.templates == list(shapes.CLASS_TEMPLATES)
    per_class = SampleSizes().scaled(SCALE).per_class
    assert len(entries.images) == len(shapes.CLASS_NAMES) * per_class
    assert [label for _, label in entries.images] == [label for label in range(40) for _ in range(per_class)]


def test_unpaired_corpora_hold_captions_only_and_images_only(samples: Path) -> None:
    sizes = SampleSizes().scaled(SCALE)
    lines = (samples / "cc3m_captions" / "captions.txt").read_text().splitlines()
    assert len(lines) == sizes.text_only_captions and all(lines)
    images = sorted((samples / "images_only").iterdir())
    assert len(images) == sizes.image_only_images and {p.suffix for p in images} == {".jpg"}


def test_writing_again_keeps_a_complete_set_and_rewrites_a_different_one(tmp_path: Path) -> None:
    root = write_samples(tmp_path / "s", scale=0.02, image_size=16)
    marker = root / "cc3m" / "shard-000000.tar"
    before = marker.stat().st_mtime_ns
    write_samples(root, scale=0.02, image_size=16)
    assert marker.stat().st_mtime_ns == before
    assert main([str(root), "--scale", "0.03", "--image-size", "16"]) == 0
    assert json.loads((root / MANIFEST).read_text())["scale"] == 0.03
    assert (
        len((root / "cc3m_captions" / "captions.txt").read_text().splitlines())
        == SampleSizes().scaled(0.03).text_only_captions
    )
