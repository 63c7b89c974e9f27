"""Small corpora in the paper's real file formats, drawn by the shapes generator.

    python -m oner_lab.data.sample_corpora data/sample [--scale 1.0] [--image-size 64]

The `local` profiles of `experiments/retrieval_4m.yaml` and `experiments/transfer.yaml` read
these files through exactly the loaders the paper-scale runs use (webdataset shards, open_clip
CSV, Karpathy and ALBEF retrieval JSON, class folders, text-only caption files, image-only
folders), so a recipe can be checked end to end on a laptop before GPUs are booked. Each corpus
draws from its own generator seed, so no two corpora share a scene. Writing is idempotent: a
directory that already holds a complete sample set (its `MANIFEST.json`, written last, matches
the arguments) is left as it is.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from . import shapes
from .shards import write_shards

MANIFEST = "MANIFEST.json"
MAX_OBJECTS = 2
PAIRED_CORPORA = ("cc3m", "sbu", "vg", "coco_pairs")
"""The 4M corpus's sources, each written as webdataset shards of (jpg, txt) pairs."""


@dataclass(frozen=True)
class SampleSizes:
    """How many items each corpus gets at `scale` 1.0 (a few minutes of CPU training in all)."""

    cc3m: int = 3000
    sbu: int = 1500
    vg: int = 500
    coco_pairs: int = 1000
    coco_train_images: int = 600
    coco_test_images: int = 200
    flickr_test_images: int = 100
    text_only_captions: int = 3000
    image_only_images: int = 500
    per_class: int = 5
    per_shard: int = 500

    def scaled(self, scale: float) -> SampleSizes:
        return SampleSizes(
            **{
                name: max(1, round(value * scale)) if name != "per_shard" else value
                for name, value in asdict(self).items()
            }
        )


_SEEDS = {  # one generator seed per corpus: no scene is shared between two corpora
    "cc3m": 101,
    "sbu": 102,
    "vg": 103,
    "coco_pairs": 104,
    "coco": 105,
    "flickr30k": 106,
    "text_only": 107,
    "image_only": 108,
    "imagenet": 109,
}


def jpeg(sample: shapes.GeneratedSample, image_size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(shapes.render(sample.scene, image_size)).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def paired(corpus: str, count: int, image_size: int) -> Iterator[dict[str, bytes | str]]:
    """Webdataset samples: `<key>.jpg` + `<key>.txt`, one training caption each."""
    for index in range(count):
        sample = shapes.make_sample(_SEEDS[corpus], "train", index, MAX_OBJECTS)
        yield {"__key__": f"{corpus}{index:07d}", "jpg": jpeg(sample, image_size), "txt": sample.captions[0].encode()}


def write_paired(root: Path, corpus: str, count: int, per_shard: int, image_size: int) -> list[Path]:
    directory = root / corpus
    directory.mkdir(parents=True, exist_ok=True)
    samples = paired(corpus, count, image_size)
    return write_shards(directory, tqdm(samples, total=count, desc=corpus, leave=False), per_shard)


def write_coco(root: Path, train_images: int, test_images: int, image_size: int) -> Path:
    """Karpathy's `dataset_coco.json` layout: train2014/ and val2014/ images, five captions each,
    splits train / restval / val / test (val holds no image here: nothing reads it)."""
    images = []
    total = train_images + test_images
    for index in tqdm(range(total), desc="coco", leave=False):
        sample = shapes.make_sample(_SEEDS["coco"], "shapes", index, MAX_OBJECTS)
        test = index >= train_images
        folder = "val2014" if test else "train2014"
        name = f"COCO_{folder}_{index:012d}.jpg"
        (root / "coco" / folder).mkdir(parents=True, exist_ok=True)
        (root / "coco" / folder / name).write_bytes(jpeg(sample, image_size))
        split = "test" if test else ("restval" if index % 4 == 3 else "train")
        sentences = [{"raw": caption, "tokens": caption.split()} for caption in sample.captions]
        images.append({"filepath": folder, "filename": name, "split": split, "cocoid": index, "sentences": sentences})
    path = root / "coco" / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def write_flickr(root: Path, count: int, image_size: int) -> Path:
    """ALBEF's per-image list (`flickr30k_test.json`): `[{"image": path, "caption": [5 captions]}]`."""
    entries = []
    (root / "flickr30k" / "flickr30k-images").mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(count), desc="flickr30k", leave=False):
        sample = shapes.make_sample(_SEEDS["flickr30k"], "shapes", index, MAX_OBJECTS)
        name = f"flickr30k-images/{1000000 + index}.jpg"
        (root / "flickr30k" / name).write_bytes(jpeg(sample, image_size))
        entries.append({"image": name, "caption": list(sample.captions)})
    path = root / "flickr30k" / "flickr30k_test.json"
    path.write_text(json.dumps(entries))
    return path


def write_text_only(root: Path, count: int) -> Path:
    """Captions only, one per line: the "CC3M captions only" source of the transfer table."""
    lines = [shapes.make_sample(_SEEDS["text_only"], "train", index, MAX_OBJECTS).captions[0] for index in range(count)]
    path = root / "cc3m_captions" / "captions.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_image_only(root: Path, count: int, image_size: int) -> Path:
    """A folder of images without captions (an image-only source, MIM only)."""
    directory = root / "images_only"
    directory.mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(count), desc="images_only", leave=False):
        sample = shapes.make_sample(_SEEDS["image_only"], "train", index, MAX_OBJECTS)
        (directory / f"{index:07d}.jpg").write_bytes(jpeg(sample, image_size))
    return directory


def write_imagenet(root: Path, per_class: int, image_size: int) -> Path:
    """ImageNet's `val/<wnid>/*.JPEG` layout over the 40 colour+shape classes, with `classnames.txt`
    (one name per line, in sorted folder order) and `templates.txt` (the shapes prompts: SLIP's
    seven name objects the shapes vocabulary has no word for)."""
    base = root / "imagenet"
    for label, name in enumerate(tqdm(shapes.CLASS_NAMES, desc="imagenet", leave=False)):
        folder = base / "val" / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            sample = shapes.make_sample(_SEEDS["imagenet"], "shapes_cls", label * per_class + j, 1, per_class)
            (folder / f"ILSVRC2012_val_{label * per_class + j:08d}.JPEG").write_bytes(jpeg(sample, image_size))
    (base / "classnames.txt").write_text("\n".join(shapes.CLASS_NAMES) + "\n")
    (base / "templates.txt").write_text("\n".join(shapes.CLASS_TEMPLATES) + "\n")
    return base / "val"


def write_samples(root: str | Path, scale: float = 1.0, image_size: int = 64) -> Path:
    """Writes every corpus under `root` (skipped when its manifest says it is already complete)."""
    root = Path(root)
    sizes = SampleSizes().scaled(scale)
    manifest = {"version": 1, "scale": scale, "image_size": image_size, "sizes": asdict(sizes)}
    manifest_path = root / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return root
    manifest_path.unlink(missing_ok=True)  # a partial or different set is rewritten, never mixed
    for corpus in PAIRED_CORPORA:
        write_paired(root, corpus, getattr(sizes, corpus), sizes.per_shard, image_size)
    write_coco(root, sizes.coco_train_images, sizes.coco_test_images, image_size)
    write_flickr(root, sizes.flickr_test_images, image_size)
    write_text_only(root, sizes.text_only_captions)
    write_image_only(root, sizes.image_only_images, image_size)
    write_imagenet(root, sizes.per_class, image_size)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oner_lab.data.sample_corpora", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("root", help="where to write, e.g. data/sample (what the local profiles read)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every corpus size (default 1.0)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the written images in pixels (default 64)")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.image_size < 8:
        parser.error("--scale must be > 0 and --image-size >= 8")
    root = write_samples(args.root, args.scale, args.image_size)
    print(f"sample corpora in {root}: " + ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
