"""A run's data as MLflow dataset inputs: every training source (context `training`) and eval set (`eval`).

MLflow 3's convention (`mlflow.log_input`, dataset entities): a dataset is a name, a digest, a source
(its type and where it is) and a profile. Here the digest is the fingerprint the lab already keys its
caches with (files' paths, sizes, mtimes; the generator's settings for the built-in shapes), so two runs
trained on different files, or on files changed in place, show different datasets in the runs list's
Dataset column. The files are not read: a sample count is given where the config fixes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from oner_lab.data import shapes
from oner_lab.data.bundle import _GENERATOR_VERSION, _split_size
from oner_lab.data.sources import expand_urls, files_fingerprint, url_patterns
from oner_lab.spec.config import DataConfig, RunConfig

TRAINING, EVAL = "training", "eval"


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _entity(name: str, digest: str, source_type: str, source: dict, profile: dict) -> Dataset:
    return Dataset(
        name=name,
        digest=digest,
        source_type=source_type,
        source=json.dumps(source),
        profile=json.dumps(profile),
    )


def _shapes(split: str, cfg: DataConfig, image_size: int) -> Dataset:
    """A split of the built-in data: generated from a seed, digested like its cache folder's name."""
    count = _split_size(split, cfg)
    params = {
        "dataset": "shapes",
        "version": _GENERATOR_VERSION,
        "split": split,
        "seed": cfg.generator_seed,
        "image_size": image_size,
        "count": count,
        "max_objects": cfg.max_objects if split != "shapes_cls" else 1,
        "images_per_class": cfg.cls_images_per_class if split == "shapes_cls" else None,
    }
    name = "shapes/train" if split == "train" else split
    source = {"tags": {"generator": shapes.__name__, **{k: str(v) for k, v in params.items()}}}
    return _entity(name, _digest(params), "code", source, {"num_rows": count, "format": "built-in shapes"})


def _files(name: str, pattern: str, fmt: str) -> Dataset:
    """Files at `pattern` (brace/glob): digest of their fingerprint; of the pattern alone when they are
    not on this machine (a dry run's config, a SLURM path), which the profile says."""
    try:
        paths = [Path(pattern)] if Path(pattern).is_dir() else expand_urls(pattern)  # class folders, image folders
    except FileNotFoundError:
        paths = []
    profile: dict[str, object] = {"format": fmt}
    if paths:
        digest = files_fingerprint(paths)
        profile["files"] = len(paths)
    else:
        digest = _digest(["missing", pattern])
        profile["files"] = "not found where the run was created"
    uri = pattern if "://" in pattern else str(Path(pattern).absolute())
    return _entity(name, digest, "local", {"uri": uri}, profile)


def _pattern_name(pattern: str) -> str:
    """`data/cc3m/{00000..00331}.tar` -> `cc3m/{00000..00331}.tar`: short, and tells sources apart."""
    path = Path(pattern)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _input(dataset: Dataset, context: str) -> DatasetInput:
    return DatasetInput(dataset=dataset, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)])


def training_datasets(config: RunConfig, image_size: int) -> list[Dataset]:
    """Every training source: the paired data (one per `data.source.urls` entry), then unpaired text and images."""
    cfg = config.data
    urls = getattr(cfg.source, "urls", None)  # every file-backed kind has urls; the built-in shapes has none
    if cfg.source.kind == "shapes":
        found = [_shapes("train", cfg, image_size)]
    elif urls is None:  # a plugin's source without files: named by its settings
        settings = cfg.source.model_dump(mode="json")
        found = [
            _entity(
                cfg.source.kind,
                _digest(settings),
                "code",
                {"tags": {k: str(v) for k, v in settings.items()}},
                {"format": cfg.source.kind},
            )
        ]
    else:
        found = [_files(_pattern_name(pattern), pattern, cfg.source.kind) for pattern in url_patterns(urls)]
    for kind, section in (("text_only", cfg.text_only), ("image_only", cfg.image_only)):
        if section is not None:
            found += [_files(f"{kind}/{_pattern_name(p)}", p, kind) for p in url_patterns(section.urls)]
    return found


def eval_datasets(config: RunConfig, image_size: int) -> list[Dataset]:
    """Every set of `eval.sets`: a built-in split, or the files of `data.eval_sources.<name>`."""
    found = []
    for name in config.eval.sets:
        source = config.data.eval_sources.get(name)
        path = getattr(source, "path", None)
        if source is None:
            found.append(_shapes(name, config.data, image_size))
        elif path is None:  # a plugin's format without files: named by its settings
            settings = source.model_dump(mode="json")
            found.append(
                _entity(
                    name,
                    _digest(settings),
                    "code",
                    {"tags": {k: str(v) for k, v in settings.items()}},
                    {"format": source.format},
                )
            )
        else:
            found.append(_files(name, path, source.format))
    return found


def dataset_inputs(config: RunConfig) -> list[DatasetInput]:
    """The run's inputs for `MlflowClient.log_inputs`: training sources, then eval sets."""
    from oner_lab.train import resolve_tower  # the image size the shapes cache is generated at

    image_size = resolve_tower(config).image_size
    return [_input(d, TRAINING) for d in training_datasets(config, image_size)] + [
        _input(d, EVAL) for d in eval_datasets(config, image_size)
    ]


__all__ = ["EVAL", "TRAINING", "dataset_inputs", "eval_datasets", "training_datasets"]
