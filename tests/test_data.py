"""Built-in data: generation, caching, shard reading, tokenizer and the deterministic train stream."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from small_disk import tmpfs
from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing

from oner_lab.contract import ConfigError
from oner_lab.data import (
    ClassificationSet,
    CorruptSampleError,
    RetrievalSet,
    ShardReadError,
    TextTokenizer,
    TrainStream,
    check_config,
    prepare,
    shapes,
)
from oner_lab.data.augment import crop_boxes
from oner_lab.data.batch import normalise
from oner_lab.data.bundle import shards_of
from oner_lab.data.cache import build_once
from oner_lab.data.decoded import read_decoded
from oner_lab.data.shards import (
    decode_image,
    decode_text,
    encode_png,
    read_shards,
    write_shards,
)
from oner_lab.spec.config import DataConfig

IMAGE_SIZE = 32
TEXT_LEN = 24


def tiny_config(cache_dir: Path, **overrides: object) -> DataConfig:
    settings: dict[str, object] = dict(cache_dir=str(cache_dir), train_size=64, eval_images=8, cls_images_per_class=2)
    settings.update(overrides)
    return DataConfig(**settings)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


@pytest.fixture(scope="module")
def bundle(cache: Path):
    return prepare(tiny_config(cache), IMAGE_SIZE, TEXT_LEN, ["shapes", "shapes_cls"])


def indexed_stream(count: int, crop_scale=(1.0, 1.0), hflip: bool = False) -> TrainStream:
    """Images whose every pixel holds the sample index, so a batch reveals which samples it drew."""
    images = torch.arange(count, dtype=torch.uint8)[:, None, None, None].expand(count, 3, 8, 8).contiguous()
    ids = torch.arange(count)[:, None].repeat(1, 4)
    return TrainStream(images, ids, torch.ones(count, 4, dtype=torch.bool), crop_scale, hflip)


def drawn_indices(images: torch.Tensor) -> torch.Tensor:
    return ((images[:, 0, 0, 0] + 1) * 255 / 2).round().long()


# ---- the train stream ----


def test_same_seed_and_step_give_identical_batches_even_after_resuming(bundle, cache: Path) -> None:
    fresh = prepare(tiny_config(cache), IMAGE_SIZE, TEXT_LEN, []).train  # a second read of the same cache
    for step in range(3):
        bundle.train.batch(step, 16, seed=7)  # a run that got to step 3 the long way
    resumed = bundle.train.batch(3, 16, seed=7)
    direct = fresh.batch(3, 16, seed=7)
    for name in ("images", "images_target", "text_ids", "text_mask"):
        assert torch.equal(getattr(resumed, name), getattr(direct, name)), name
    assert not torch.equal(bundle.train.batch(4, 16, seed=7).images, direct.images)
    assert not torch.equal(bundle.train.batch(3, 16, seed=8).images, direct.images)


def test_global_batch_is_the_same_for_every_world_size(bundle) -> None:
    whole = bundle.train.batch(5, 24, seed=1)
    for world_size in (2, 3, 4):
        parts = [bundle.train.batch(5, 24, seed=1, rank=r, world_size=world_size) for r in range(world_size)]
        for name in ("images", "images_target", "text_ids", "text_mask"):
            joined = torch.cat([getattr(p, name) for p in parts])
            assert torch.equal(joined, getattr(whole, name)), (world_size, name)
    with pytest.raises(ValueError, match="not divisible"):
        bundle.train.batch(0, 24, seed=1, rank=0, world_size=5)


def test_each_epoch_is_a_fresh_permutation_covering_every_sample_once() -> None:
    stream = indexed_stream(30)
    drawn = torch.cat([drawn_indices(stream.batch(step, 12, seed=3).images) for step in range(5)])  # 60 = 2 epochs
    first, second = drawn[:30], drawn[30:]
    assert sorted(first.tolist()) == list(range(30)) and sorted(second.tolist()) == list(range(30))
    assert not torch.equal(first, second)
    assert torch.equal(drawn_indices(stream.batch(2, 12, seed=3).images), drawn[24:36])  # straddles the epoch end


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_stream_moved_to_a_device_serves_the_same_batches(bundle, device: str) -> None:
    moved = bundle.train.to(device).batch(2, 16, seed=4, rank=1, world_size=2)
    here = bundle.train.batch(2, 16, seed=4, rank=1, world_size=2)
    assert moved.images.device.type == device
    assert torch.allclose(moved.images.cpu(), here.images, atol=1e-4)
    assert torch.equal(moved.text_ids.cpu(), here.text_ids)


def test_text_travels_with_its_image() -> None:
    batch = indexed_stream(20).batch(1, 8, seed=0)
    assert torch.equal(batch.text_ids[:, 0], drawn_indices(batch.images))


def test_full_scale_crop_reproduces_the_stored_image_exactly(bundle) -> None:
    stream = bundle.train
    exact = TrainStream(stream.images, stream.text_ids, stream.text_mask, (1.0, 1.0), hflip=False)
    batch = exact.batch(0, 16, seed=0)
    stored = normalise(stream.images)
    for view in (batch.images, batch.images_target):
        nearest = (view[:, None] - stored[None]).abs().flatten(2).max(-1).values.min(1).values
        assert (nearest < 1e-5).all()  # every crop is exactly some stored image: no half-pixel shift, no blur


def test_flip_only_when_enabled() -> None:
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    ids, mask = torch.zeros(64, 4, dtype=torch.long), torch.ones(64, 4, dtype=torch.bool)
    plain = TrainStream(images, ids, mask, (1.0, 1.0), hflip=False).batch(0, 64, seed=0)
    flipping = TrainStream(images, ids, mask, (1.0, 1.0), hflip=True).batch(0, 64, seed=0)
    same = (flipping.images == plain.images).flatten(1).all(1)
    mirrored = (flipping.images == plain.images.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_the_two_views_are_different_random_crops(bundle) -> None:
    batch = bundle.train.batch(0, 16, seed=0)
    assert batch.images.shape == batch.images_target.shape == (16, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch.images.dtype == torch.float32
    assert not torch.allclose(batch.images, batch.images_target)
    assert batch.images.min() >= -1 and batch.images.max() <= 1


def test_crop_boxes_follow_the_random_resized_crop_distribution() -> None:
    boxes = crop_boxes(torch.Generator().manual_seed(0), 4000, 32, 48, scale=(0.3, 0.8))
    x1, y1, x2, y2 = boxes.unbind(1)
    w, h = x2 - x1, y2 - y1
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 48 + 1e-4).all() and (y2 <= 32 + 1e-4).all()
    area = w * h / (32 * 48)
    assert area.min() >= 0.3 - 1e-4 and area.max() <= 0.8 + 1e-4
    aspect = w / h
    assert aspect.min() >= 3 / 4 - 1e-4 and aspect.max() <= 4 / 3 + 1e-4
    square = crop_boxes(torch.Generator().manual_seed(1), 4000, 32, 32, scale=(0.3, 0.7))  # never rejected
    square_area = (square[:, 2] - square[:, 0]) * (square[:, 3] - square[:, 1]) / 32**2
    assert square_area.mean() == pytest.approx(0.5, abs=0.01)  # area fraction uniform over the scale range
    whole = crop_boxes(torch.Generator().manual_seed(2), 50, 32, 32, scale=(1.0, 1.0))  # no draw fits: fallback
    assert torch.equal(whole, torch.tensor([[0.0, 0.0, 32.0, 32.0]]).expand(50, 4))


# ---- eval sets and captions ----


def test_retrieval_set_has_five_distinct_captions_per_image(bundle) -> None:
    retrieval = bundle.eval_sets["shapes"]
    assert isinstance(retrieval, RetrievalSet)
    assert retrieval.images.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert retrieval.text_ids.shape == retrieval.text_mask.shape == (40, TEXT_LEN)
    assert torch.equal(retrieval.caption_image, torch.arange(8).repeat_interleave(5))
    for image in range(8):
        assert len({c for c, owner in zip(retrieval.captions, retrieval.caption_image) if owner == image}) == 5


def test_classification_set_prompts_every_template_with_every_class(bundle) -> None:
    classes = bundle.eval_sets["shapes_cls"]
    assert isinstance(classes, ClassificationSet)
    assert len(classes.class_names) == 40 and len(set(classes.class_names)) == 40
    assert classes.images.shape == (80, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(torch.bincount(classes.labels), torch.full((40,), 2))
    templates = classes.templates
    assert len(templates) >= 5 and all("{}" in t for t in templates)
    assert classes.prompt_ids.shape == (40 * len(templates), TEXT_LEN)
    decoded = bundle.tokenizer.decode(classes.prompt_ids)
    for row in (0, 7, 199):
        name = classes.class_names[int(classes.prompt_class[row])]
        assert decoded[row] == templates[row % len(templates)].format(name)


def mentioned(caption: str, vocabulary) -> set[str]:
    return {word for word in vocabulary if re.search(rf"\b{word}\b", caption)}


def positions_mentioned(caption: str) -> set[str]:
    found = set()
    caption = re.sub(r"to the (left|right) of", " ", caption)  # a relation, not a position
    for position in sorted(shapes.POSITIONS, key=len, reverse=True):  # "top left" before "top"
        if re.search(rf"\b{position}\b", caption):
            found.add(position)
            caption = re.sub(rf"\b{position}\b", " ", caption)
    return found


def assert_faithful(caption: str, scene: shapes.Scene) -> None:
    objects = scene.objects
    assert mentioned(caption, shapes.COLOURS) == {o.colour for o in objects}, caption
    assert mentioned(caption, shapes.SHAPES) == {o.shape for o in objects}, caption
    assert mentioned(caption, shapes.SIZES) <= {o.size for o in objects}, caption
    assert positions_mentioned(caption) <= {o.position for o in objects}, caption
    for size_colour_shape in re.findall(r"\b(small|large) (\w+) (\w+)", caption):
        assert size_colour_shape in {(o.size, o.colour, o.shape) for o in objects}, caption
    listed = re.findall(r"(\w+ \w+), ((?:top|bottom|center|left|right)(?: left| right)?)", caption)
    for colour_shape, position in listed:
        assert (colour_shape, position) in {(f"{o.colour} {o.shape}", o.position) for o in objects}, caption
    relation = re.fullmatch(r"an? (\w+) (\w+) (above|below|to the left of|to the right of) an? (\w+) (\w+)", caption)
    if relation:
        a_colour, a_shape, where, b_colour, b_shape = relation.groups()
        a = next(o for o in objects if (o.colour, o.shape) == (a_colour, a_shape))
        b = next(o for o in objects if (o.colour, o.shape) == (b_colour, b_shape))
        expected = {"above": a.row < b.row, "below": a.row > b.row}.get(where)
        if expected is None:
            assert a.row == b.row and (a.col < b.col) == (where == "to the left of"), caption
        else:
            assert expected, caption


def test_captions_read_back_are_the_generators_and_faithful_to_its_scenes(bundle) -> None:
    retrieval = bundle.eval_sets["shapes"]
    for image in range(8):
        generated = shapes.make_sample(0, "shapes", image, max_objects=2)
        assert list(generated.captions) == retrieval.captions[image * 5 : image * 5 + 5]
        for caption in generated.captions:
            assert_faithful(caption, generated.scene)


def test_every_caption_family_is_faithful_on_many_scenes() -> None:
    captions = []
    for max_objects in (1, 2, 3):
        for index in range(150):
            generated = shapes.make_sample(11, "shapes", index, max_objects=max_objects)
            assert len(set(generated.captions)) == 5
            for caption in generated.captions:
                assert_faithful(caption, generated.scene)
            captions.extend(generated.captions)
    markers = {  # one tell-tale pattern per phrasing family: all of them actually occur
        "full": r"^an? \w+ \w+ \w+ (in|at|on) the ",
        "there_is": r"^there is ",
        "picture": r"^(a picture|a photo|an image) of ",
        "listing": r"^\w+ \w+, (top|bottom|left|right|center)",
        "counted": r"^(one|two|three) shapes?: ",
        "position_first": r"^(in|at|on) the [\w ]+, an? ",
        "background": r" on a dark background\.$",
        "relation": r" (above|below|to the left of|to the right of) ",
    }
    for family, pattern in markers.items():
        assert any(re.search(pattern, c) for c in captions), family


@pytest.mark.parametrize("image_size", [32, 224])
def test_rendering_puts_each_object_in_its_colour_where_the_scene_says(image_size: int) -> None:
    for index in range(20):
        scene = shapes.make_sample(5, "train", index, max_objects=2).scene
        image = shapes.render(scene, image_size)
        assert image.shape == (image_size, image_size, 3) and image.dtype == np.uint8
        for obj in scene.objects:
            y, x = int(obj.cy * image_size), int(obj.cx * image_size)
            around = image[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).astype(int)  # thin small shapes at 32 px
            assert np.abs(around - shapes.COLOURS[obj.colour]).max(1).min() <= 40, (obj, around)
        empty = set(range(9)) - {o.cell for o in scene.objects}
        cell = min(empty)
        corner = image[int((cell // 3) / 3 * image_size) + 1, int((cell % 3) / 3 * image_size) + 1].astype(int)
        assert np.abs(corner - scene.background).max() <= 2


def test_splits_use_different_generator_streams() -> None:
    train = [shapes.make_sample(0, "train", i, 2).scene for i in range(20)]
    evaluation = [shapes.make_sample(0, "shapes", i, 2).scene for i in range(20)]
    assert train != evaluation
    assert shapes.make_sample(0, "train", 3, 2) == shapes.make_sample(0, "train", 3, 2)
    assert shapes.make_sample(0, "train", 3, 2) != shapes.make_sample(1, "train", 3, 2)


# ---- shards and corrupt samples ----


def good_png() -> bytes:
    return encode_png(shapes.render(shapes.make_sample(0, "train", 0, 2).scene, 16))


def test_reader_skips_and_counts_corrupt_samples_or_fails_naming_shard_and_key(tmp_path: Path) -> None:
    png = good_png()
    samples = [
        {"__key__": "ok0", "png": png, "txt": b"a red circle"},
        {"__key__": "truncated", "png": png[: len(png) // 2], "txt": b"a blue square"},
        {"__key__": "ok1", "png": png, "txt": b"a green star"},
        {"__key__": "empty", "png": png, "txt": b"  "},
        {"__key__": "latin1", "png": png, "txt": "caf\xe9".encode("latin-1")},
        {"__key__": "nocaption", "png": png},
        {"__key__": "ok2", "png": png, "txt": b"a white cross"},
    ]
    shards = write_shards(tmp_path, samples, per_shard=3)
    assert len(shards) == 3

    def decode(sample):
        return decode_image(sample, 16).shape, decode_text(sample)

    decoded, skipped = read_shards(shards, decode, "skip")
    assert [caption for _, caption in decoded] == ["a red circle", "a green star", "a white cross"]
    assert skipped == 4
    with pytest.raises(CorruptSampleError, match=r"shard-000000\.tar: sample 'truncated'.*truncated"):
        read_shards(shards, decode, "fail")


def test_a_broken_tar_stream_is_an_error_naming_the_shard_in_both_modes(tmp_path: Path) -> None:
    png = good_png()
    (shard,) = write_shards(tmp_path, [{"__key__": f"s{i}", "png": png, "txt": b"a red circle"} for i in range(4)], 10)
    shard.write_bytes(shard.read_bytes()[: 512 + len(png) // 2])  # header, then half of the first image
    for mode in ("skip", "fail"):
        with pytest.raises(ShardReadError, match=rf"{shard.name}: unreadable tar stream"):
            read_shards([shard], lambda sample: decode_text(sample), mode)


def rewrite_with_corruption(shard: Path) -> list[str]:
    """Rewrite a cached train shard with one truncated image and one empty caption; returns their keys."""
    samples, _ = read_shards([shard], lambda sample: dict(sample), "fail")
    samples[1]["png"] = samples[1]["png"][:40]
    samples[2]["txt"] = b""
    kept = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"} for s in samples]
    write_shards(shard.parent, kept, per_shard=len(kept))
    return [samples[1]["__key__"], samples[2]["__key__"]]


def test_prepare_counts_corrupt_training_samples_and_fail_mode_raises(tmp_path: Path) -> None:
    first = prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, [])
    assert first.skipped_samples == 0 and first.train.num_samples == 64
    (shard,) = tmp_path.glob("shapes-train-*/shard-*.tar")
    bad_keys = rewrite_with_corruption(shard)

    again = prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, [])
    assert again.skipped_samples == 2 and again.train.num_samples == 62
    assert len(list(tmp_path.glob("decoded-*"))) == 1  # the rewritten shard was decoded, and left no copy
    with pytest.raises(CorruptSampleError, match=rf"{shard.name}: sample '{bad_keys[0]}'"):
        prepare(tiny_config(tmp_path, on_corrupt="fail"), IMAGE_SIZE, TEXT_LEN, [])


# ---- the decoded copy of the training split (data/decoded.py) ----


def same_train(a, b) -> bool:
    return all(torch.equal(getattr(a.train, key), getattr(b.train, key)) for key in ("images", "text_ids", "text_mask"))


def test_later_prepares_read_the_decoded_copy_and_get_what_decoding_gives(tmp_path: Path) -> None:
    first = prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, [])
    (copy,) = tmp_path.glob("decoded-shapes-train-*")
    assert same_train(prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, []), first)
    # proof that the copy, not the shards, is what a later run reads: change its images
    np.save(copy / "images.npy", np.zeros_like(first.train.images.numpy()))
    assert prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, []).train.images.sum() == 0
    # another image size decodes the same shards into a copy of its own
    prepare(tiny_config(tmp_path), 16, TEXT_LEN, [])
    assert len(list(tmp_path.glob("decoded-shapes-train-*"))) == 2


@pytest.mark.parametrize("torn", ["images.npy", "fields.json"])
def test_a_torn_decoded_copy_is_set_aside_with_a_warning_and_made_again(
    tmp_path: Path, torn: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, [])
    (copy,) = tmp_path.glob("decoded-shapes-train-*")
    data = (copy / torn).read_bytes()
    (copy / torn).write_bytes(data[: len(data) // 2])  # what a crash mid-write on a failing disk leaves
    again = prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, [])
    assert same_train(again, first)
    assert f"unreadable decoded copy {copy}" in caplog.text
    assert (copy / torn).read_bytes() == data  # made again under the same key
    assert not list(tmp_path.glob(".tmp-*"))  # the torn copy, set aside, was removed by the rebuild


def test_a_full_disk_keeps_no_decoded_copy_and_the_run_its_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = prepare(tiny_config(tmp_path / "made"), IMAGE_SIZE, TEXT_LEN, [])
    with tmpfs(tmp_path / "small", "1m") as small:
        for made in (tmp_path / "made").glob("[st]*"):  # the shards and the tokenizer, not the decoded copy
            shutil.copytree(made, small / made.name, copy_function=shutil.copy2)  # copy2 keeps mtimes
        free = os.statvfs(small)
        (small / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 16 * 1024))
        again = prepare(tiny_config(small), IMAGE_SIZE, TEXT_LEN, [])
        assert same_train(again, first)
        assert "could not keep a decoded copy" in caplog.text and "bytes of images failed with" in caplog.text
        assert not list(small.glob("decoded-*")) and not list(small.glob(".tmp-*"))


def _read_decoded_in_process(root: str, out: str) -> None:
    """One run's read of the training split, each decoded sample logged, slowly enough that two runs overlap."""

    def decode(sample):
        with open(Path(root) / "decodes.log", "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(0.02)
        return decode_image(sample, IMAGE_SIZE), decode_text(sample)

    (train_dir,) = Path(root).glob("shapes-train-*")
    images, captions, skipped = read_decoded(Path(root), shards_of(train_dir), decode, "skip", "race")
    np.save(out, images)
    Path(out).with_suffix(".json").write_text(json.dumps([captions, skipped]))


def test_two_runs_starting_together_decode_the_shards_once(tmp_path: Path) -> None:
    prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, [])
    context = multiprocessing.get_context("fork")
    outs = [str(tmp_path / f"run{i}.npy") for i in range(2)]
    workers = [context.Process(target=_read_decoded_in_process, args=(str(tmp_path), out)) for out in outs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    decoders = (tmp_path / "decodes.log").read_text().split()
    assert len(decoders) == 64 and len(set(decoders)) == 1  # one run decoded; the other waited and read its copy
    first, second = (np.load(out) for out in outs)
    assert first.shape == (64, 3, IMAGE_SIZE, IMAGE_SIZE) and np.array_equal(first, second)
    assert (tmp_path / "run0.json").read_text() == (tmp_path / "run1.json").read_text()
    assert json.loads((tmp_path / "run0.json").read_text())[1] == 0


# ---- caching ----


def test_second_prepare_reuses_the_cache_and_new_params_get_a_new_directory(tmp_path: Path) -> None:
    prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, ["shapes"])
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, ["shapes"])
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    assert before == after
    assert len(list(tmp_path.glob("shapes-train-*"))) == 1
    prepare(tiny_config(tmp_path, generator_seed=1), IMAGE_SIZE, TEXT_LEN, [])
    assert len(list(tmp_path.glob("shapes-train-*"))) == 2


def test_a_failed_build_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    def broken(directory: Path) -> None:
        (directory / "half.tar").write_bytes(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        build_once(tmp_path, "split", broken)
    assert not (tmp_path / "split").exists() and not list(tmp_path.glob(".tmp-*"))
    (tmp_path / ".tmp-split-999-dead").mkdir()  # what a SIGKILLed builder leaves behind
    path, built = build_once(tmp_path, "split", lambda d: (d / "done").write_text("ok"))
    assert built and (path / "done").read_text() == "ok" and not list(tmp_path.glob(".tmp-*"))


def _slow_build_in_process(root: str) -> None:
    def build(directory: Path) -> None:
        with open(Path(root) / "builds.log", "a") as log:
            log.write("build\n")
        time.sleep(0.3)
        (directory / "data").write_text("ok")

    build_once(Path(root), "split", build)


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_slow_build_in_process, args=(str(tmp_path),)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=20)
        assert worker.exitcode == 0
    assert (tmp_path / "builds.log").read_text() == "build\n"
    assert (tmp_path / "split" / "data").read_text() == "ok"


# ---- tokenizer ----


def test_tokenizer_round_trip_and_layout(bundle) -> None:
    tokenizer = bundle.tokenizer
    captions = bundle.eval_sets["shapes"].captions
    ids, mask = tokenizer.encode(captions, TEXT_LEN)
    assert torch.equal(tokenizer.encode(tokenizer.decode(ids), TEXT_LEN)[0], ids)
    assert tokenizer.decode(tokenizer.encode(["a large red circle in the top left"], TEXT_LEN)[0]) == [
        "a large red circle in the top left"
    ]
    lengths = mask.sum(1)
    assert torch.equal(ids[torch.arange(len(ids)), lengths - 1], torch.full((len(ids),), tokenizer.sep_id))
    assert (ids[~mask] == tokenizer.pad_id).all()
    assert not (ids == tokenizer.cls_id).any()
    assert torch.equal(mask, torch.arange(TEXT_LEN)[None] < lengths[:, None])  # real tokens, then padding


def test_truncation_keeps_sep_last(bundle) -> None:
    tokenizer = bundle.tokenizer
    long = ["there is a large red circle in the top left and a small blue star at the bottom."]
    ids, mask = tokenizer.encode(long, 6)
    full, _ = tokenizer.encode(long, 40)
    assert mask.all() and ids[0, -1] == tokenizer.sep_id
    assert torch.equal(ids[0, :5], full[0, :5])


def test_special_ids_are_never_maskable(bundle) -> None:
    tokenizer = bundle.tokenizer
    specials = {tokenizer.pad_id, tokenizer.sep_id, tokenizer.cls_id, tokenizer.unk_id, tokenizer.mask_id}
    assert specials <= set(tokenizer.special_ids.tolist()) and None not in specials
    assert not tokenizer.maskable(tokenizer.special_ids).any()
    ids, mask = tokenizer.encode(["a red circle", "there is a small blue square at the bottom."], 16)
    assert torch.equal(tokenizer.maskable(ids), mask & (ids != tokenizer.sep_id))  # words only, never [SEP]/[PAD]
    assert tokenizer.vocab_size > int(tokenizer.special_ids.max())


def test_trained_tokenizer_is_saved_beside_the_data_and_reused(bundle, cache: Path) -> None:
    directory = bundle.tokenizer.directory
    assert directory is not None and directory.parent == cache and (directory / "tokenizer.json").is_file()
    reloaded = prepare(tiny_config(cache), IMAGE_SIZE, TEXT_LEN, []).tokenizer
    assert reloaded.directory == directory
    text = ["a small cyan star at the top"]
    assert torch.equal(reloaded.encode(text, 12)[0], bundle.tokenizer.encode(text, 12)[0])


def test_hugging_face_tokenizer_directory_is_used_as_is(bundle, tmp_path: Path) -> None:
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    raw = Tokenizer.from_file(str(bundle.tokenizer.directory / "tokenizer.json"))
    cls_id, sep_id = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    raw.enable_truncation(4)  # a checkpoint's own settings must not leak into our layout
    raw.save(str(hf_dir / "tokenizer.json"))

    cache = tmp_path / "cache"
    loaded = prepare(tiny_config(cache, tokenizer=str(hf_dir)), IMAGE_SIZE, TEXT_LEN, []).tokenizer
    assert loaded.directory == hf_dir and not list(cache.glob("tokenizer-*"))
    text = ["a large red circle in the top left"]
    ids, mask = loaded.encode(text, 16)
    expected_ids, expected_mask = bundle.tokenizer.encode(text, 16)
    assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)
    assert ids[0, 0] != cls_id and int(mask.sum()) > 4


def test_vocab_txt_tokenizer_directory_loads(tmp_path: Path) -> None:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "cir", "##cle"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = TextTokenizer.load(tmp_path)
    ids, _ = tokenizer.encode(["A Red Circle"], 6)
    assert ids[0].tolist() == [5, 6, 7, 3, 0, 0]


@pytest.mark.parametrize("make_dir", [False, True])
def test_missing_tokenizer_is_a_config_error_naming_data_tokenizer(tmp_path: Path, make_dir: bool) -> None:
    directory = tmp_path / "no_such_tokenizer"
    if make_dir:
        directory.mkdir()  # exists, but holds no vocabulary
    config = tiny_config(tmp_path / "cache", tokenizer=str(directory))
    with pytest.raises(ConfigError, match=r"^data\.tokenizer: .*no_such_tokenizer") as error:
        prepare(config, IMAGE_SIZE, TEXT_LEN, [])
    assert error.value.key == "data.tokenizer"
    assert not (tmp_path / "cache").exists()  # refused before generating anything


def test_unknown_eval_set_and_impossible_config_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eval\.sets: 'coco'.*allowed: shapes, shapes_cls"):
        prepare(tiny_config(tmp_path), IMAGE_SIZE, TEXT_LEN, ["shapes", "coco"])
    with pytest.raises(ConfigError, match=r"data\.max_objects: 10.*1\.\.9"):
        check_config(tiny_config(tmp_path, max_objects=10), [])
    with pytest.raises(ConfigError, match=r"data\.crop_scale"):
        check_config(tiny_config(tmp_path, crop_scale=(0.9, 0.5)), [])
    assert not list(tmp_path.iterdir())


def test_generation_parameters_are_recorded_with_the_shards(bundle, cache: Path) -> None:
    (directory,) = cache.glob("shapes-shapes-*")
    params = json.loads((directory / "generation.json").read_text())
    assert params["count"] == 8 and params["image_size"] == IMAGE_SIZE and params["seed"] == 0
