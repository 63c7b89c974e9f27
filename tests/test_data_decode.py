"""The streaming decoders' fast path: whole-image decoding, crops cut at source resolution, one resize.

It must give the same training images as fitting every image to S x S and cropping that (the path
the in-memory stream keeps), up to resampling differences.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oner_lab.data.augment import resized_crops
from oner_lab.data.indexed_stream import IndexedStream
from oner_lab.data.memory_stream import augmented_views
from oner_lab.data.shards import CorruptSample, decode_image, decode_image_rgb, write_shards
from oner_lab.data.sources import TarSource
from oner_lab.data.tokenizer import TextTokenizer

SIZE = 24


def smooth_image(width: int, height: int, phase: float = 0.0) -> np.ndarray:
    """uint8 [H, W, 3] of slow sinusoids: resampling filters barely differ on it, misplaced crops do."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    waves = [np.sin(x * 7 + phase + c) * np.cos(y * 5 - c) for c in range(3)]
    return np.clip(127 + 110 * np.stack(waves, axis=-1), 0, 255).astype(np.uint8)


def encoded(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_a_box_on_the_fit_square_is_cut_from_the_centre_square_at_source_resolution() -> None:
    noise = np.random.default_rng(0).integers(
        0, 256, (2 * SIZE, 3 * SIZE, 3), dtype=np.uint8
    )  # centre square: columns 12..60
    out = torch.empty(2, 3, SIZE, SIZE, dtype=torch.uint8)
    quarter = torch.tensor(
        [[0, 0, SIZE / 2, SIZE / 2], [SIZE / 2, SIZE / 2, SIZE, SIZE]]
    )  # 2x source pixels: no resampling
    resized_crops(noise, quarter, torch.tensor([False, True]), out)
    half = SIZE // 2
    assert torch.equal(out[0], torch.from_numpy(noise[:SIZE, half : half + SIZE]).permute(2, 0, 1))
    flipped = noise[SIZE:, half + SIZE : half + 2 * SIZE][:, ::-1]
    assert torch.equal(out[1], torch.from_numpy(flipped.copy()).permute(2, 0, 1))


def test_resizing_is_pil_bilinear_up_to_rounding() -> None:
    image = smooth_image(5 * SIZE, 3 * SIZE)  # the fit square is 72 px: a 3x antialiased downscale
    out = torch.empty(1, 3, SIZE, SIZE, dtype=torch.uint8)
    resized_crops(image, torch.tensor([[0.0, 0.0, SIZE, SIZE]]), None, out)
    side = 3 * SIZE
    reference = Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=(SIZE, 0, SIZE + side, side))
    difference = np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - np.asarray(reference))
    assert difference.max() <= 3 and difference.mean() < 0.5


def test_whole_image_decoding_reduces_only_while_both_sides_stay_at_least_the_size() -> None:
    wide = smooth_image(400, 200)
    assert decode_image_rgb({"jpg": encoded(wide, "JPEG", quality=95)}, SIZE).shape == (25, 50, 3)  # DCT scale 1/8
    assert decode_image_rgb({"png": encoded(wide, "PNG")}, SIZE).shape == (25, 50, 3)  # box-reduced by 8
    assert decode_image_rgb({"png": encoded(wide, "PNG")}, 150).shape == (200, 400, 3)  # 200 // 150: no reduction
    assert decode_image_rgb({"png": encoded(smooth_image(10, 7), "PNG")}, SIZE).shape == (7, 10, 3)  # small: as is
    reduced = decode_image_rgb({"png": encoded(wide, "PNG")}, SIZE).astype(int)
    assert np.abs(reduced - np.asarray(Image.fromarray(wide).resize((50, 25), Image.Resampling.BOX))).max() <= 1
    with pytest.raises(CorruptSample, match=r"image \.jpg cannot be decoded"):
        decode_image_rgb({"jpg": encoded(wide, "JPEG")[:400]}, SIZE)  # truncated


def test_streamed_views_are_the_fit_then_crop_views_up_to_resampling(tmp_path: Path) -> None:
    sizes = [(60, 40), (40, 64), (24, 24), (100, 30), (33, 90), (48, 48)]
    images = [smooth_image(w, h, phase=i) for i, (w, h) in enumerate(sizes)]
    (tmp_path / "wds").mkdir()
    samples = [
        {"__key__": f"{i:04d}", "png": encoded(image, "PNG"), "txt": f"sample {i}".encode()}
        for i, image in enumerate(images)
    ]
    write_shards(tmp_path / "wds", samples, 4)
    captions = [f"sample {i}" for i in range(len(images))]
    source = TarSource(str(tmp_path / "wds" / "*.tar"), tmp_path / "cache", "fail")
    tokenizer = TextTokenizer.train(captions, 60)
    stream = IndexedStream([source], None, tokenizer, SIZE, 8, (0.3, 1.0), True, window=4, workers=2, on_corrupt="fail")

    for step in (0, 1):
        batch = stream.batch(step, 6, seed=5)
        order = [int(text.split()[-1]) for text in tokenizer.decode(batch.text_ids)]
        fitted = torch.from_numpy(np.stack([decode_image(samples[i], SIZE) for i in order]))
        reference = augmented_views(fitted, 5, step, 6, slice(0, 6), (0.3, 1.0), True)
        # Differences: boxes rounded to whole source pixels (up to 2% of a 24 px image), and detail that
        # fitting to 24 px first blurred away. Crops of another step differ by 0.1 - 0.5.
        for streamed, expected in zip((batch.images, batch.images_target), reference, strict=True):
            error = (streamed - expected).abs().mean(dim=(1, 2, 3))  # per image, in [-1, 1] units
            assert error.max() < 0.06 and error.mean() < 0.03, error
        other = augmented_views(fitted, 5, step + 7, 6, slice(0, 6), (0.3, 1.0), True)[0]
        assert (batch.images - other).abs().mean() > 0.1
