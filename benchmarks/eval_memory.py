"""Peak memory (RSS) per DDP rank while a trainer prepares and evaluates a large zero-shot class-folder set.

    python benchmarks/eval_memory.py [--images 50000] [--classes 1000] [--image-size 224] [--ranks 2]
                                     [--folder DIR]

Writes `--images` photo-like JPEGs (smooth gradients plus noise, quality 90, 1.2x the eval size)
in `--classes` class folders (ImageNet val: 50,000 images, 1,000 classes), then starts `--ranks`
gloo processes on loopback. Each builds the real `train.Trainer` (tiny tower at `--image-size`,
the built-in shapes data for training) with that folder as its only eval set and runs
`Trainer.evaluate()` once. Each rank prints its peak RSS (`ru_maxrss`) and the seconds spent
preparing and evaluating; the issue's bar is at most 4 GB per rank for 50,000 images at 224 px.

Before this benchmark existed every rank decoded the whole set and held it as float32
(50,000 x 3 x 224 x 224 x 4 B = 30 GB per rank). Use `--images 5000` for a quick run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    colour = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    image = ramp[:, None, None] * colour[0] + (1 - ramp[None, :, None]) * colour[1]
    image = np.clip(image + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path, quality=90)


def generate(folder: Path, images: int, classes: int, size: int) -> None:
    """`images` JPEGs of `size` px in `classes` folders (skipped when the folder already holds them)."""
    marker = folder / ".complete.json"
    wanted = {"images": images, "classes": classes, "size": size}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return
    for c in range(classes):
        (folder / f"class{c:04d}").mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"class{i % classes:04d}" / f"{i:06d}.jpg", size, i) for i in range(images)]
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: write_image(*job), jobs))
    marker.write_text(json.dumps(wanted))


def rank_main(args: argparse.Namespace) -> None:
    """One DDP rank: the Trainer with the folder as eval set, then one evaluation."""
    from oner_lab import train
    from oner_lab.distributed import init_from_env
    from oner_lab.spec.config import RunConfig

    config = RunConfig.model_validate(
        {
            "model": {
                "width": 32,
                "depth": 1,
                "num_heads": 2,
                "proj_dim": 16,
                "image_size": args.image_size,
                "patch_size": 16,
            },
            "objective": {"variant": "itc"},
            "data": {
                "cache_dir": str(args.folder.parent / "cache"),
                "train_size": 64,
                "eval_images": 8,
                "cls_images_per_class": 1,
                "vocab_size": 120,
                "workers": 4,
                "eval_sources": {"val": {"format": "class_folders", "path": str(args.folder)}},
            },
            "train": {"batch_size": 8, "steps": 1, "device": "cpu", "threads": 2},
            "eval": {"sets": ["val"], "batch_size": 256},
        }
    )
    dist_info = init_from_env("cpu")
    started = time.perf_counter()
    trainer = train.Trainer(config, args.folder.parent / f"run-{dist_info.world_size}", dist_info)
    prepared = time.perf_counter()
    metrics = trainer.evaluate()
    done = time.perf_counter()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    top1 = metrics.get("eval/val/top1")
    print(
        json.dumps(
            {
                "rank": dist_info.rank,
                "peak_rss_gb": round(peak_gb, 3),
                "prepare_s": round(prepared - started, 1),
                "evaluate_s": round(done - prepared, 1),
                "top1": top1,
            }
        ),
        flush=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument(
        "--folder", type=Path, default=None, help="where the set is written (default: a temporary folder)"
    )
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        rank_main(args)
        return
    with tempfile.TemporaryDirectory(prefix="oner-eval-memory-") as scratch:
        folder = args.folder or Path(scratch) / "val"
        started = time.perf_counter()
        generate(folder, args.images, args.classes, int(args.image_size * 1.2))
        print(
            f"{args.images} images in {args.classes} class folders at {folder} ({time.perf_counter() - started:.0f} s to write)"
        )
        port = free_port()
        ranks = []
        for rank in range(args.ranks):
            env = {
                **os.environ,
                "RANK": str(rank),
                "WORLD_SIZE": str(args.ranks),
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
            command = [
                sys.executable,
                __file__,
                "--rank",
                "--folder",
                str(folder),
                "--image-size",
                str(args.image_size),
            ]
            ranks.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
        for process in ranks:
            out, _ = process.communicate()
            if process.returncode:
                raise SystemExit(f"a rank failed (exit {process.returncode})")
            for line in out.splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    print(
                        f"rank {row['rank']}: peak RSS {row['peak_rss_gb']:.2f} GB, prepare {row['prepare_s']} s, "
                        f"evaluate {row['evaluate_s']} s"
                        + (f", top1 {row['top1']:.2f}" if row["top1"] is not None else "")
                    )


if __name__ == "__main__":
    main()
