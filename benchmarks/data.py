"""Images/s of the full training input pipeline beside plain decoding of the same files, per worker count.

    python benchmarks/data.py [--images 192] [--source-size 500 375] [--image-sizes 32 224] [--workers 1 2]
                              [--batch-size 32] [--repeats 3]

Writes `--images` JPEGs (photo-like: smooth gradients plus noise, quality 90) of `--source-size`
into webdataset shards in a temporary directory, then times, in this process, with W threads:

- plain decode: `PIL.Image.open(bytes).convert("RGB")` of every image, bytes already in memory:
  a full decode, nothing else. The issue's bar: pipeline >= 80% of this.
- draft decode: the same after `draft("RGB", (S, S))`, i.e. JPEG DCT-domain downscaling while both
  sides stay >= S, as the pipeline decodes. Where S is far below the source size (32 px here) this
  is what makes the pipeline faster than a full decode, so its ratio to this baseline is printed too.
- pipeline: `IndexedStream` batches with W decode workers and no prefetch: read from the shard
  (pread), decode, two random resized crops, tokenise, collate, normalise to float on the CPU.

Each figure is the best of `--repeats` interleaved runs: other processes on a shared machine slow
single runs down, and the ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oner_lab.data.indexed_stream import IndexedStream
from oner_lab.data.shards import write_shards
from oner_lab.data.sources import TarSource
from oner_lab.data.tokenizer import TextTokenizer


def photo_like_jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(x * rng.uniform(2, 9) + c) * np.cos(y * rng.uniform(2, 9)) for c in range(3)], axis=-1)
    pixels = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def plain_decode(jpeg: bytes) -> None:
    with Image.open(io.BytesIO(jpeg)) as image:
        image.convert("RGB")


def draft_decoder(size: int) -> Callable[[bytes], None]:
    def decode(jpeg: bytes) -> None:
        with Image.open(io.BytesIO(jpeg)) as image:
            image.draft("RGB", (size, size))
            image.convert("RGB")

    return decode


def best_rate(count: int, work: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return count / min(times)


def measure(
    jpegs: list[bytes],
    source: TarSource,
    tokenizer: TextTokenizer,
    size: int,
    workers: int,
    batch_size: int,
    repeats: int,
) -> tuple[float, float, float]:
    """(plain, draft, pipeline) images/s with `workers` threads, best of `repeats` interleaved rounds each."""
    stream = IndexedStream(
        [source], None, tokenizer, size, 40, (0.5, 1.0), False, window=1000, workers=workers, on_corrupt="skip"
    )
    steps = len(jpegs) // batch_size
    stream._build(0, batch_size, 0, 0, 1)  # warm-up: the epoch order, thread start
    draft = draft_decoder(size)
    rates: list[list[float]] = [[], [], []]
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(repeats):
            rates[0].append(best_rate(len(jpegs), lambda: list(pool.map(plain_decode, jpegs)), 1))
            rates[1].append(best_rate(len(jpegs), lambda: list(pool.map(draft, jpegs)), 1))
            rates[2].append(
                best_rate(steps * batch_size, lambda: [stream._build(s, batch_size, 0, 0, 1) for s in range(steps)], 1)
            )
    plain, drafted, pipeline = (max(r) for r in rates)
    return plain, drafted, pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--source-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    jpegs = [photo_like_jpeg(rng, *args.source_size) for _ in range(args.images)]
    captions = [f"a photo of thing number {i} with some words" for i in range(args.images)]
    print(
        f"{args.images} JPEGs of {args.source_size[0]}x{args.source_size[1]} (mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} kB), "
        f"batches of {args.batch_size}, two views, crop scale (0.5, 1), no flips (the default); best of {args.repeats}"
    )
    print(
        f"{'size':>5} {'workers':>7} {'plain decode/s':>15} {'draft decode/s':>15} {'pipeline/s':>11} {'vs plain':>9} {'vs draft':>9}"
    )

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "wds").mkdir()
        samples = (
            {"__key__": f"{i:06d}", "jpg": jpeg, "txt": caption.encode()}
            for i, (jpeg, caption) in enumerate(zip(jpegs, captions))
        )
        write_shards(root / "wds", samples, 64)
        source = TarSource(str(root / "wds" / "*.tar"), root / "cache", "skip")
        tokenizer = TextTokenizer.train(captions, 200)
        for size in args.image_sizes:
            for workers in args.workers:
                plain, drafted, pipeline = measure(
                    jpegs, source, tokenizer, size, workers, args.batch_size, args.repeats
                )
                print(
                    f"{size:>5} {workers:>7} {plain:>15.0f} {drafted:>15.0f} {pipeline:>11.0f} "
                    f"{100 * pipeline / plain:>8.0f}% {100 * pipeline / drafted:>8.0f}%"
                )
    print("issue bar: pipeline >= 80% of plain decode")


if __name__ == "__main__":
    main()
