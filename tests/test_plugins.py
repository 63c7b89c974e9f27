"""Every registered unit keeps its contract, and units from outside the package (tests/lab_plugins: a term,
a training source, an evaluator) run end to end through the real CLI, named by YAML only."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from oner_lab import evaluate
from oner_lab.data import prepare
from oner_lab.data.sample_corpora import write_samples
from oner_lab.model import OneTower, momentum_copy, tower_config
from oner_lab.objectives import TERMS, StepInputs, Views, ViewSettings, masked_views
from oner_lab.spec.config import DataConfig, EvalSourceConfig, TrainSourceConfig

PLUGINS = ["lab_plugins.align_term", "lab_plugins.jsonl_source", "lab_plugins.cosine_eval"]
for _name in PLUGINS:  # registered like a spec's base.plugins would: the contracts below cover them too
    importlib.import_module(_name)

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample corpora (webdataset, Karpathy, ALBEF JSON), plus a CSV and a JSON-lines file of their pairs."""
    root = write_samples(tmp_path_factory.mktemp("corpora") / "sample", scale=0.02, image_size=SIZE)
    pairs = json.loads((root / "flickr30k" / "flickr30k_test.json").read_text())
    image_dir = root / "flickr30k"
    lines = [(entry["image"], caption) for entry in pairs for caption in entry["caption"]]
    (root / "pairs.csv").write_text("filepath\ttitle\n" + "".join(f"{image_dir / i}\t{c}\n" for i, c in lines))
    (image_dir / "pairs.jsonl").write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in lines))
    return root


def source_settings(kind: str, root: Path) -> dict:
    """A runnable `data.source` of each registered kind on the corpora (a new kind adds its case here)."""
    return {
        "shapes": {},
        "webdataset": {"urls": str(root / "cc3m" / "*.tar")},
        "csv": {"urls": str(root / "pairs.csv")},
        "karpathy": {"urls": str(root / "coco" / "dataset_coco.json")},
        "retrieval_json": {"urls": str(root / "flickr30k" / "flickr30k_test.json")},
        "jsonl": {"urls": str(root / "flickr30k" / "pairs.jsonl")},
    }[kind] | {"kind": kind}


def eval_settings(fmt: str, root: Path) -> dict:
    """A readable eval source of each registered format (built-in sets need none)."""
    return {
        "retrieval_json": {"path": str(root / "flickr30k" / "flickr30k_test.json")},
        "karpathy": {"path": str(root / "coco" / "dataset_coco.json")},
        "class_folders": {"path": str(root / "imagenet" / "val")},
    }.get(fmt, {}) | {"format": fmt}


def data_config(root: Path, cache: Path, **settings: object) -> DataConfig:
    return DataConfig.model_validate(
        {
            "cache_dir": str(cache),
            "train_size": 24,
            "eval_images": 6,
            "cls_images_per_class": 1,
            "vocab_size": 100,
            "workers": 1,
            "shuffle_buffer": 8,
            **settings,
        }
    )


@pytest.mark.parametrize("name", sorted(TERMS))
def test_each_term_returns_finite_named_values_on_real_views(name: str) -> None:
    torch.manual_seed(0)
    model = OneTower(tower_config("tiny", width=32, depth=1, num_heads=2, vocab_size=60, max_text_len=8, image_size=32))
    g = torch.Generator().manual_seed(1)
    images, ids = torch.randn(4, 3, 32, 32, generator=g), torch.randint(5, 60, (4, 8), generator=g)
    inputs = StepInputs(images, images.flip(-1), ids, torch.ones(4, 8, dtype=torch.bool))
    term = TERMS[name]
    settings = ViewSettings(masked_views({name}), False, "momentum", 0.15, 0.6, 4, 60, torch.arange(5))
    views = Views(model, momentum_copy(model), inputs, settings, torch.tensor(math.log(1 / 0.07)), g)
    values = term.loss(views, term.options())
    assert values and all(value.ndim == 0 and torch.isfinite(value) for value in values.values())
    assert all(view in ("I", "T", "I|T", "T|I", "I,T") for view in term.views)


@pytest.mark.parametrize("kind", sorted(TrainSourceConfig.registered()))
def test_each_source_yields_batches_and_a_stable_fingerprint(kind: str, corpora: Path, tmp_path: Path) -> None:
    cfg = data_config(corpora, tmp_path / "cache", source=source_settings(kind, corpora))
    bundle = prepare(cfg, SIZE, 12, [])
    batch = bundle.train.batch(0, 4, seed=0)
    assert batch.images.shape == (4, 3, SIZE, SIZE) and (batch.text_mask.sum(1) > 1).all()
    again = prepare(cfg, SIZE, 12, [])  # the tokenizer and any index come back from the cache, keyed by fingerprints
    assert again.tokenizer.directory == bundle.tokenizer.directory
    torch.testing.assert_close(again.train.batch(3, 4, seed=0).text_ids, bundle.train.batch(3, 4, seed=0).text_ids)


@pytest.mark.parametrize("fmt", sorted(EvalSourceConfig.registered()))
def test_each_evaluator_returns_exactly_its_declared_metrics(fmt: str, corpora: Path, tmp_path: Path) -> None:
    from oner_lab.evaluators import TASKS

    cfg = data_config(
        corpora,
        tmp_path / "cache",
        eval_sources={} if fmt in EvalSourceConfig.builtin_sets() else {"set": eval_settings(fmt, corpora)},
    )
    name = fmt if fmt in EvalSourceConfig.builtin_sets() else "set"
    bundle = prepare(cfg, SIZE, 12, [name])
    generator = torch.Generator().manual_seed(0)
    project = torch.randn(3 * SIZE * SIZE, 8, generator=generator)
    vocab = torch.randn(200, 8, generator=generator)
    metrics = evaluate.evaluate(
        lambda images: images.flatten(1) @ project,
        lambda ids, mask: vocab[ids % 200].mean(1),
        bundle.eval_sets,
        batch_size=16,
    )
    declared = TASKS[EvalSourceConfig.model_validate(eval_settings(fmt, corpora)).task].metric_names
    assert sorted(metrics) == sorted(f"eval/{name}/{metric}" for metric in declared)
    assert all(math.isfinite(value) for value in metrics.values())


SPEC = """
name: plugged
launcher: {{backend: debug}}
base:
  plugins: [lab_plugins.align_term, lab_plugins.jsonl_source, lab_plugins.cosine_eval]
  model: {{width: 32, depth: 1, num_heads: 2, proj_dim: 16, image_size: {size}, patch_size: 8, max_text_len: 12}}
  objective: {{terms: {{itc: 1.0, align: 0.5}}, options: {{align: {{scale: 2.0}}}}}}
  data:
    source: {{kind: jsonl, urls: {jsonl}}}
    cache_dir: {cache}
    eval_images: 6
    vocab_size: 100
    workers: 1
    shuffle_buffer: 8
    eval_sources: {{cosine: {{format: shapes_cosine}}}}
  train: {{batch_size: 8, steps: 3, warmup_steps: 1, log_every: 1, checkpoint_every: 3}}
  eval: {{sets: [shapes, cosine], batch_size: 16}}
grid:
  variants: {{plugged: {{}}}}
"""


@pytest.mark.slow
def test_a_term_a_source_and_an_evaluator_from_a_plugin_module_run_through_the_cli(
    corpora: Path, tmp_path: Path
) -> None:
    spec = SPEC.format(size=SIZE, jsonl=corpora / "flickr30k" / "pairs.jsonl", cache=tmp_path / "cache")
    (tmp_path / "plugged.yaml").write_text(spec)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "oner_lab.run", "plugged.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("plugged").experiment_id])
    assert run.info.status == "FINISHED"
    assert {
        "train/loss_align",
        "train/loss_itc",
        "eval/cosine/mean_cosine",
        "eval/cosine/std_cosine",
        "eval/shapes/tr_r1",
    } <= set(run.data.metrics)
    assert run.data.params["data.source.kind"] == "jsonl" and run.data.params["objective.options.align.scale"] == "2.0"

    (tmp_path / "typo.yaml").write_text(spec.replace("scale: 2.0", "scal: 2.0"))
    refused = subprocess.run(
        [sys.executable, "-m", "oner_lab.run", "typo.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2 and "objective.options.align.scal" in refused.stderr


def test_a_plugin_that_cannot_be_imported_is_named_with_its_key(tmp_path: Path) -> None:
    from oner_lab.spec import SpecError, load_spec

    (tmp_path / "spec.yaml").write_text("name: x\nbase: {plugins: [no_such_module.terms]}\ngrid: {variants: {a: {}}}\n")
    with pytest.raises(SpecError, match=r"base\.plugins: module 'no_such_module\.terms' cannot be imported"):
        load_spec(tmp_path / "spec.yaml")


def test_an_unknown_source_kind_lists_the_registered_ones(tmp_path: Path) -> None:
    from oner_lab.spec import SpecError, load_spec

    (tmp_path / "spec.yaml").write_text("name: x\nbase: {data: {source: {kind: jsonll}}}\ngrid: {variants: {a: {}}}\n")
    with pytest.raises(
        SpecError,
        match=r"base\.data\.source\.kind: 'jsonll' is not allowed; allowed: one of: .*jsonl.*Did you mean 'jsonl'",
    ):
        load_spec(tmp_path / "spec.yaml")


def test_images_of_the_jsonl_fixture_exist(corpora: Path) -> None:
    first = json.loads((corpora / "flickr30k" / "pairs.jsonl").read_text().splitlines()[0])
    assert Image.open(corpora / "flickr30k" / first["image"]).size == (SIZE, SIZE)
