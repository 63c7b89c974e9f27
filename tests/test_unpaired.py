"""Unpaired sources: text-only caption files (MLM only) and image-only folders or shards (MIM only).

Every file is written by the test in its real format. The data tests identify each served row by
its content (a caption's number, an image's uniform colour); the objective tests check that the
unpaired rows reach the masked single-modality passes and nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_data_formats import SIZE, StopAfter, encoded, micro_run_config, write_csv, write_webdataset

from oner_lab import train
from oner_lab.checkpoint import load
from oner_lab.contract import ConfigError
from oner_lab.data import CorruptSampleError, prepare
from oner_lab.data.shards import write_shards
from oner_lab.distributed import DistInfo
from oner_lab.model import OneTower, momentum_copy, tower_config
from oner_lab.objectives import Objective, StepInputs, Views, ViewSettings, masked_views
from oner_lab.objectives.masking import IGNORE
from oner_lab.spec.config import DataConfig

COLOUR_STEP = 8  # image n is uniformly (8n, 255 - 8n, 100): its number survives resizing, cropping and JPEG


# ---- writing unpaired data in the real formats ----


def write_captions(path: Path, numbers: range, extra_lines: tuple[bytes, ...] = ()) -> Path:
    """`zebra <n> grazes` per line, with blank and CRLF lines between and `extra_lines` appended."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for n in numbers:
        lines.append(f"zebra {n} grazes".encode() + (b"\r" if n % 3 == 0 else b""))
        if n % 4 == 0:
            lines.append(b"   ")
    path.write_bytes(b"\n".join([*lines, *extra_lines]) + b"\n")
    return path


def numbered_image(n: int, size: tuple[int, int] = (SIZE + 8, SIZE)) -> Image.Image:
    return Image.new("RGB", size, (COLOUR_STEP * n, 255 - COLOUR_STEP * n, 100))


def write_image_folder(root: Path, numbers: range) -> Path:
    """Images spread over nested folders, in PNG / JPEG / WEBP with mixed-case suffixes, plus a non-image file."""
    formats = (("png", "PNG"), ("JPG", "JPEG"), ("webp", "WEBP"))
    for n in numbers:
        folder = root / f"class{n % 3}" / ("deeper" if n % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        suffix, fmt = formats[n % 3]
        numbered_image(n).save(folder / f"img{n}.{suffix}", format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    (root / "README.txt").write_text("not an image")
    return root


def write_image_shards(directory: Path, numbers: range, per_shard: int) -> list[Path]:
    """Webdataset shards of images; a caption where present is ignored."""
    directory.mkdir(parents=True, exist_ok=True)
    samples = [
        {"__key__": f"im{n:04d}", "png": encoded(numbered_image(n)), **({"txt": b"ignored"} if n % 2 else {})}
        for n in numbers
    ]
    return write_shards(directory, samples, per_shard)


def image_numbers(images: torch.Tensor) -> list[int]:
    """Each normalised image's number, from its mean red value."""
    red = (images[:, 0].mean(dim=(1, 2)) + 1) * 255 / 2
    return [round(v / COLOUR_STEP) for v in red.tolist()]


def caption_numbers(tokenizer, text_ids: torch.Tensor) -> list[int]:
    return [int(text.split()[1]) for text in tokenizer.decode(text_ids)]


def shapes_data(tmp_path: Path, **unpaired: object) -> DataConfig:
    return DataConfig(
        cache_dir=str(tmp_path / "cache"),
        train_size=32,
        vocab_size=150,
        workers=2,
        shuffle_buffer=4,
        crop_scale=(1.0, 1.0),
        **unpaired,
    )


# ---- reading ----


def test_text_only_captions_are_non_blank_lines_with_corrupt_ones_skipped_and_counted(tmp_path: Path) -> None:
    long_line = b"zebra 100 " + b"runs far " * 120_000  # ~1 MB: cut to MAX_CAPTION_CHARS like a paired caption
    path = write_captions(tmp_path / "caps" / "a.txt", range(12), (b"zebra 101 caf\xe9", long_line, b"\t\t"))
    data = prepare(shapes_data(tmp_path, text_only={"urls": str(path), "batch_size": 5}), SIZE, 16, [])
    text = data.unpaired.text
    assert (
        text is not None and text.num_samples == 14
    )  # 12 + non-UTF-8 + long; blank and whitespace lines are not captions
    assert data.unpaired.sample_counts() == {"text_only": 14}
    seen = []
    for step in range(6):  # 30 rows: two epochs of the 13 readable captions and more
        batch = data.unpaired.batch(step, seed=0)
        assert batch.text_ids.shape == (5, 16) and batch.text_mask.dtype == torch.bool and batch.images is None
        seen += caption_numbers(data.tokenizer, batch.text_ids)
    assert set(seen) == set(range(12)) | {100}  # the 1 MB line is read (cut), the non-UTF-8 line never
    assert data.skipped_samples == 1

    strict = shapes_data(tmp_path, text_only={"urls": str(path), "batch_size": 14}, on_corrupt="fail")
    with pytest.raises(CorruptSampleError, match=r"a\.txt: sample 'line 16': \.txt is not UTF-8"):
        prepare(strict, SIZE, 16, []).unpaired.batch(0, seed=0)


def test_image_only_folders_and_shards_serve_every_image_with_corrupt_ones_skipped_and_counted(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "folder", range(9))
    (folder / "class0" / "zero.png").write_bytes(b"")  # corrupt: met when drawn, skipped and counted
    write_image_shards(tmp_path / "shards", range(10, 16), per_shard=4)
    bad = [
        {"__key__": "trunc", "jpg": encoded(numbered_image(30), "JPEG")[:100]},
        {"__key__": "noimage", "json": b"{}"},
    ]
    (tmp_path / "bad").mkdir()
    write_shards(tmp_path / "bad", bad + [{"__key__": "good", "png": encoded(numbered_image(16))}], 8)
    urls = [str(folder), str(tmp_path / "shards" / "shard-{000000..000001}.tar"), str(tmp_path / "bad" / "*.tar")]
    data = prepare(shapes_data(tmp_path, image_only={"urls": urls, "batch_size": 6}), SIZE, 16, [])
    images = data.unpaired.images
    assert images is not None and [len(s) for s in images.sources] == [10, 6, 2]  # "noimage" left out while indexing
    assert data.skipped_samples == 1
    seen = []
    for step in range(8):
        batch = data.unpaired.batch(step, seed=0).images
        assert batch.shape == (6, 3, SIZE, SIZE) and batch.dtype == torch.float32
        seen += image_numbers(batch)
    assert set(seen) == set(range(9)) | set(range(10, 17))  # every readable image of every source, never a corrupt one
    assert data.skipped_samples == 1 + 2  # plus the zero-byte PNG and the truncated JPEG
    assert data.unpaired.sample_counts() == {"image_only": 18}


def test_unpaired_batches_are_pure_functions_of_step_split_by_rank_and_cover_each_epoch_once(tmp_path: Path) -> None:
    captions = write_captions(tmp_path / "caps.txt", range(12))
    folder = write_image_folder(tmp_path / "folder", range(8))
    config = shapes_data(
        tmp_path, text_only={"urls": str(captions), "batch_size": 6}, image_only={"urls": str(folder), "batch_size": 4}
    )
    data = prepare(config, SIZE, 16, [])
    texts, images = [], []
    for step in range(4):  # two epochs of each source
        halves = [data.unpaired.batch(step, seed=5, rank=rank, world_size=2) for rank in range(2)]
        whole = data.unpaired.batch(step, seed=5)
        assert torch.equal(torch.cat([h.text_ids for h in halves]), whole.text_ids)
        assert torch.equal(torch.cat([h.images for h in halves]), whole.images)
        texts += caption_numbers(data.tokenizer, whole.text_ids)
        images += image_numbers(whole.images)
    assert sorted(texts[:12]) == sorted(texts[12:]) == list(range(12)) and texts[:12] != texts[12:]
    assert sorted(images[:8]) == sorted(images[8:]) == list(range(8)) and images[:8] != images[8:]

    fresh = prepare(config, SIZE, 16, [])  # a resumed process: new objects, the same batches
    for step in (3, 1):
        a, b = fresh.unpaired.batch(step, seed=5), data.unpaired.batch(step, seed=5)
        assert (
            torch.equal(a.text_ids, b.text_ids)
            and torch.equal(a.text_mask, b.text_mask)
            and torch.equal(a.images, b.images)
        )
    assert not torch.equal(data.unpaired.batch(0, seed=6).text_ids, data.unpaired.batch(0, seed=5).text_ids)


def test_a_trained_tokenizer_learns_the_text_only_words_and_is_cached_under_their_files(tmp_path: Path) -> None:
    captions = write_captions(tmp_path / "caps.txt", range(4))
    plain = prepare(shapes_data(tmp_path), SIZE, 16, [])
    with_text = prepare(shapes_data(tmp_path, text_only={"urls": str(captions), "batch_size": 2}), SIZE, 16, [])
    assert plain.tokenizer.unk_id in plain.tokenizer.encode(["zebra grazes"], 8)[0]  # shapes captions never say zebra
    assert with_text.tokenizer.unk_id not in with_text.tokenizer.encode(["zebra grazes"], 8)[0]
    assert plain.tokenizer.directory != with_text.tokenizer.directory
    assert "-text" in with_text.tokenizer.directory.name and "-text" not in plain.tokenizer.directory.name
    captions.write_text("okapi 0 sleeps\n")  # changed file: a new tokenizer, never the stale one
    changed = prepare(shapes_data(tmp_path, text_only={"urls": str(captions), "batch_size": 1}), SIZE, 16, [])
    assert changed.tokenizer.directory != with_text.tokenizer.directory
    assert changed.tokenizer.unk_id not in changed.tokenizer.encode(["okapi"], 4)[0]


# ---- the objective: unpaired rows reach MLM and MIM only ----

VOCAB = 60
SPECIAL = torch.tensor([0, 1, 2, 3, 4])


def step_inputs(batch: int, extra_text: int, extra_images: int) -> StepInputs:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    ids = torch.randint(5, VOCAB, (batch, 8), generator=g)
    ids[:, 7] = 2  # [SEP]
    inputs = StepInputs(images, images.roll(1, dims=-1), ids, torch.ones(batch, 8, dtype=torch.bool))
    if extra_text:
        extra_ids = torch.randint(5, VOCAB, (extra_text, 8), generator=g)
        extra_ids[:, 5], extra_ids[:, 6:] = 2, 0  # shorter captions, padded
        inputs.extra_text_ids, inputs.extra_text_mask = extra_ids, extra_ids != 0
    if extra_images:
        inputs.extra_images = torch.randn(extra_images, 3, 32, 32, generator=g)
    return inputs


@pytest.mark.parametrize("contrast_masked_views", [False, True])
def test_unpaired_rows_change_mlm_and_mim_but_no_contrastive_term_nor_mmm(contrast_masked_views: bool) -> None:
    torch.manual_seed(0)
    model = OneTower(
        tower_config("tiny", width=32, depth=2, num_heads=2, vocab_size=VOCAB, max_text_len=8, image_size=32)
    )
    target = momentum_copy(model)
    terms = ("itc", "xmc", "cic", "cmc", "mlm", "mim", "mmm")
    settings = ViewSettings(masked_views(terms), contrast_masked_views, "momentum", 0.15, 0.6, 4, VOCAB, SPECIAL)
    objective = Objective(dict.fromkeys(terms, 1.0), settings)

    def values(inputs: StepInputs) -> dict[str, float]:
        with torch.no_grad():
            _, found = objective(model, target, inputs, torch.Generator().manual_seed(7))
        return {name: value.item() for name, value in found.items()}

    paired = values(step_inputs(6, 0, 0))
    with_text = values(step_inputs(6, 5, 0))
    with_both = values(step_inputs(6, 5, 4))
    for name in ("itc", "xmc", "cic", "cmc", "mmm"):
        assert with_text[name] == pytest.approx(paired[name], rel=1e-5) and with_both[name] == pytest.approx(
            paired[name], rel=1e-5
        ), name
    assert with_text["mlm"] != pytest.approx(paired["mlm"], rel=1e-3) and with_text["mim"] == pytest.approx(
        paired["mim"], rel=1e-5
    )
    assert with_both["mlm"] == pytest.approx(with_text["mlm"], rel=1e-5) and with_both["mim"] != pytest.approx(
        paired["mim"], rel=1e-3
    )


def test_mlm_and_mim_with_unpaired_rows_are_the_losses_over_paired_and_unpaired_rows_together() -> None:
    torch.manual_seed(0)
    model = OneTower(
        tower_config("tiny", width=32, depth=2, num_heads=2, vocab_size=VOCAB, max_text_len=8, image_size=32)
    )
    settings = ViewSettings(masked_views({"mlm", "mim"}), False, "momentum", 0.15, 0.6, 4, VOCAB, SPECIAL)
    inputs = step_inputs(6, 5, 4)
    paired_only = Views(
        model, model, step_inputs(6, 0, 0), settings, torch.tensor(0.0), torch.Generator().manual_seed(7)
    )
    views = Views(model, model, inputs, settings, torch.tensor(0.0), torch.Generator().manual_seed(7))
    with torch.no_grad():
        mlm = views.mlm_loss(views.output("T", masked=True))
        mim = views.mim_loss(views.output("I", masked=True))
        ids, text_mask, labels = views.masked_text(11)
        assert torch.equal(ids[:6], paired_only.text_corruption()[0])  # the paired rows' masking ignores the extra rows
        assert torch.equal(text_mask[6:], inputs.extra_text_mask) and (labels[6:] != IGNORE).any()
        assert (labels[6:][~inputs.extra_text_mask] == IGNORE).all()  # padding is never predicted
        tokens = model("T", text_ids=ids, text_mask=text_mask).text_tokens
        chosen = labels != IGNORE
        assert mlm.item() == pytest.approx(
            F.cross_entropy(model.mlm_head(tokens[chosen]), labels[chosen]).item(), rel=1e-5
        )

        images, patch_mask = views.masked_images(10)
        assert torch.equal(images[6:], inputs.extra_images) and torch.equal(patch_mask[:6], paired_only.patch_mask())
        out = model("I", images=images, patch_mask=patch_mask).image_tokens
        p = model.cfg.patch_size
        pixels = images.reshape(10, 3, 32 // p, p, 32 // p, p).permute(0, 2, 4, 3, 5, 1).reshape(10, -1, p * p * 3)
        assert mim.item() == pytest.approx(
            F.l1_loss(model.mim_head(out[patch_mask]), pixels[patch_mask]).item(), rel=1e-5
        )


# ---- training ----


def unpaired_files(tmp_path: Path) -> dict:
    captions = write_captions(tmp_path / "text" / "captions.txt", range(20))
    write_image_folder(tmp_path / "folder", range(6))
    write_image_shards(tmp_path / "imshards", range(6, 12), per_shard=3)
    image_urls = [str(tmp_path / "folder"), str(tmp_path / "imshards" / "*.tar")]
    return {
        "text_only": {"urls": str(captions.parent / "*.txt"), "batch_size": 4},
        "image_only": {"urls": image_urls, "batch_size": 4},
    }


def paired_data(tmp_path: Path, kind: str) -> dict:
    if kind == "webdataset":
        write_webdataset(tmp_path / "wds", 12, 5)
        return {"source": {"kind": "webdataset", "urls": str(tmp_path / "wds" / "*.tar")}}
    if kind == "csv":
        return {"source": {"kind": "csv", "urls": str(write_csv(tmp_path / "csv", 12))}}
    return {"train_size": 24}


@pytest.mark.parametrize("kind", ["shapes", "webdataset", "csv"])
def test_training_mixes_unpaired_sources_with_each_paired_source(tmp_path: Path, kind: str) -> None:
    config = micro_run_config(
        tmp_path / "cache", {**paired_data(tmp_path, kind), **unpaired_files(tmp_path)}, [], steps=3
    )
    final = train.run(config, tmp_path / "run")
    assert final["train/steps"] == 3 and final["data/skipped_samples"] == 0
    assert final["data/text_only_samples"] == 20 and final["data/image_only_samples"] == 12
    assert all(np.isfinite(final[f"train/loss_{term}"]) for term in ("itc", "cmc", "mlm", "mim", "mmm"))


def test_a_resumed_run_with_unpaired_sources_ends_with_the_same_parameters(tmp_path: Path) -> None:
    data = {**paired_data(tmp_path, "shapes"), **unpaired_files(tmp_path)}
    config = micro_run_config(tmp_path / "cache", data, [], steps=4, checkpoint_every=4)
    train.run(config, tmp_path / "straight")
    with pytest.raises(train.Interrupted):
        train.run(config, tmp_path / "resumed", control=StopAfter(2))
    train.run(config, tmp_path / "resumed")
    straight, resumed = (
        load(tmp_path / "straight" / "checkpoints" / "last.pt"),
        load(tmp_path / "resumed" / "checkpoints" / "last.pt"),
    )
    assert straight is not None and resumed is not None and straight["step"] == resumed["step"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    without = micro_run_config(tmp_path / "cache", paired_data(tmp_path, "shapes"), [], steps=4, checkpoint_every=4)
    train.run(without, tmp_path / "paired_only")
    paired_only = load(tmp_path / "paired_only" / "checkpoints" / "last.pt")
    assert paired_only is not None
    assert not torch.equal(
        paired_only["model"]["mlm_head.bias"], straight["model"]["mlm_head.bias"]
    )  # the unpaired rows trained


# ---- bad input: one clear error before training ----


def bad_unpaired_cases(tmp_path: Path) -> dict[str, tuple[dict, dict, str, str]]:
    """name -> (data settings, objective, the ConfigError's key, a regex its message must match)."""
    captions = write_captions(tmp_path / "caps.txt", range(3))
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "no_images" / "sub").mkdir(parents=True)
    (tmp_path / "no_images" / "sub" / "notes.txt").write_text("no image here")
    folder = write_image_folder(tmp_path / "folder", range(2))
    oner = {"variant": "oner"}
    return {
        "text-without-mlm": (
            {"text_only": {"urls": str(captions), "batch_size": 2}},
            {"terms": {"itc": 1.0, "mim": 1.0}},
            "data.text_only",
            r"mlm term only",
        ),
        "text-with-masked-terms-off": (
            {"text_only": {"urls": str(captions), "batch_size": 2}},
            {**oner, "masked_terms": False},
            "data.text_only",
            r"mlm term only",
        ),
        "images-without-mim": (
            {"image_only": {"urls": str(folder), "batch_size": 2}},
            {"terms": {"itc": 1.0, "mlm": 1.0}},
            "data.image_only",
            r"mim term only",
        ),
        "text-file-missing": (
            {"text_only": {"urls": str(tmp_path / "gone.txt"), "batch_size": 2}},
            oner,
            "data.text_only.urls",
            r"gone\.txt: no such file",
        ),
        "text-glob-matches-nothing": (
            {"text_only": {"urls": str(tmp_path / "cc3m" / "*.txt"), "batch_size": 2}},
            oner,
            "data.text_only.urls",
            r"cc3m/\*\.txt: the glob matches no file",
        ),
        "text-file-empty": (
            {"text_only": {"urls": [str(captions), str(tmp_path / "empty.txt")], "batch_size": 2}},
            oner,
            "data.text_only.urls",
            r"empty\.txt.*an empty file; expected captions, one per line",
        ),
        "folder-without-images": (
            {"image_only": {"urls": str(tmp_path / "no_images"), "batch_size": 2}},
            oner,
            "data.image_only.urls",
            r"no_images'.*a directory holding image files",
        ),
        "image-path-missing": (
            {"image_only": {"urls": str(tmp_path / "imagenet" / "train"), "batch_size": 2}},
            oner,
            "data.image_only.urls",
            r"imagenet/train: no such file",
        ),
        "image-shard-empty": (
            {"image_only": {"urls": str(tmp_path / "empty.tar"), "batch_size": 2}},
            oner,
            "data.image_only.urls",
            r"empty\.tar.*an empty file; expected a webdataset tar shard",
        ),
    }


BAD_UNPAIRED = [
    "text-without-mlm",
    "text-with-masked-terms-off",
    "images-without-mim",
    "text-file-missing",
    "text-glob-matches-nothing",
    "text-file-empty",
    "folder-without-images",
    "image-path-missing",
    "image-shard-empty",
]


@pytest.mark.parametrize("case", BAD_UNPAIRED)
def test_bad_unpaired_input_is_a_config_error_naming_the_key_and_path_before_training(
    tmp_path: Path, case: str
) -> None:
    data, objective, key, message = bad_unpaired_cases(tmp_path)[case]
    config = micro_run_config(tmp_path / "cache", data, [])
    config = config.model_copy(update={"objective": config.objective.model_validate({**objective})})
    with pytest.raises(ConfigError) as error:
        train.validate(config)
    assert error.value.key == key
    assert re.search(message, str(error.value)), str(error.value)
    assert not (tmp_path / "cache").exists()  # nothing was indexed or generated


def test_a_caption_file_of_blank_lines_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    config = shapes_data(tmp_path, text_only={"urls": str(tmp_path / "blank.txt"), "batch_size": 2})
    with pytest.raises(ConfigError, match=r"blank\.txt.*one caption per line; it has none") as error:
        prepare(config, SIZE, 16, [])
    assert error.value.key == "data.text_only.urls"


def test_unpaired_batch_sizes_must_divide_among_the_ranks(tmp_path: Path) -> None:
    captions = write_captions(tmp_path / "caps.txt", range(3))
    config = micro_run_config(tmp_path / "cache", {"text_only": {"urls": str(captions), "batch_size": 3}}, [])
    with pytest.raises(ConfigError, match=r"divisible by the number of ranks \(2\)") as error:
        train.Trainer(config, tmp_path / "run", DistInfo(rank=0, world_size=2, local_rank=0))
    assert error.value.key == "data.text_only.batch_size"
