"""Images/s of the full training input pipeline on one worker, beside plain decoding of the same files.

    python benchmarks/data.py [--images 256] [--source-size 500 375] [--image-size 224] [--batch-size 32] [--device cpu]

Writes `--images` JPEGs (photo-like: smooth gradients plus noise, quality 90) of `--source-size`
into webdataset shards in a temporary directory, then times, in this process on one thread:

- plain decode: `PIL.Image.open(bytes).convert("RGB")` of every image, bytes already in memory;
- decode + fit: the same plus resize (shorter side) and centre crop to `--image-size`, as the
  pipeline's decoder does (with JPEG draft decoding);
- pipeline: `IndexedStream` batches without prefetch: read from the shard (pread), decode, fit,
  tokenise, two random resized crops, collate. This is one decode worker's throughput; the
  trainer runs `data.workers` such threads plus one prefetching thread. With `--device cuda` the
  crops run on the GPU (`stream.to("cuda")`), as they should at 224 px.

The issue's bar: pipeline >= 80% of plain decode.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oner_lab.data.shards import decode_image_bytes, write_shards
from oner_lab.data.sources import TarSource
from oner_lab.data.streaming import IndexedStream
from oner_lab.data.tokenizer import TextTokenizer


def photo_like_jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(x * rng.uniform(2, 9) + c) * np.cos(y * rng.uniform(2, 9)) for c in range(3)], axis=-1)
    pixels = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def timed(label: str, count: int, work) -> float:
    start = time.perf_counter()
    work()
    rate = count / (time.perf_counter() - start)
    print(f"{label:<34} {rate:8.1f} images/s")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--source-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="where the random resized crops run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    jpegs = [photo_like_jpeg(rng, *args.source_size) for _ in range(args.images)]
    captions = [f"a photo of thing number {i} with some words" for i in range(args.images)]
    print(f"{args.images} JPEGs of {args.source_size[0]}x{args.source_size[1]} (mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} kB) "
          f"-> {args.image_size}px, batches of {args.batch_size}, one thread, crops on {args.device}")

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "wds").mkdir()
        samples = ({"__key__": f"{i:06d}", "jpg": jpeg, "txt": caption.encode()} for i, (jpeg, caption) in enumerate(zip(jpegs, captions)))
        write_shards(root / "wds", samples, 64)
        source = TarSource(str(root / "wds" / "*.tar"), root / "cache", "skip")
        stream = IndexedStream(
            [source], None, TextTokenizer.train(captions, 200), args.image_size, 40, (0.5, 1.0), False,
            window=1000, workers=1, on_corrupt="skip",
        ).to(args.device)
        stream._build(0, args.batch_size, 0, 0, 1)  # warm-up: the epoch order, thread start
        steps = args.images // args.batch_size

        def plain() -> None:
            for jpeg in jpegs:
                with Image.open(io.BytesIO(jpeg)) as image:
                    image.convert("RGB")

        def decode_fit() -> None:
            for jpeg in jpegs:
                decode_image_bytes(jpeg, args.image_size)

        def pipeline() -> None:
            for step in range(steps):
                stream._build(step, args.batch_size, 0, 0, 1)
            if stream.device.type == "cuda":
                torch.cuda.synchronize()

        base = timed("plain decode (PIL convert RGB)", args.images, plain)
        timed("decode + fit (pipeline's decoder)", args.images, decode_fit)
        full = timed("full pipeline (one worker)", steps * args.batch_size, pipeline)
        print(f"pipeline / plain decode: {100 * full / base:.0f}%")


if __name__ == "__main__":
    main()
