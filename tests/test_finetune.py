"""The fine-tuning stage: retrieval JSON as training data, `train.init_from`, and the CLI running parents
before the runs that start from them, linked in MLflow by `mlflow.parentRunId`.

Every dataset is written here in the real format (Karpathy's dataset_coco.json, ALBEF's list); runs
use a micro tower and MLflow on SQLite.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow_store import copy_store
from PIL import Image

from oner_lab import analysis, train
from oner_lab.checkpoint import load
from oner_lab.contract import ConfigError
from oner_lab.data import CorruptSampleError, TextTokenizer, prepare
from oner_lab.distributed import DistInfo
from oner_lab.run import main
from oner_lab.spec import SpecError, expand, load_spec
from oner_lab.spec.config import DataConfig, RunConfig

SIZE = 24  # the tiny preset's image size
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
EXPERIMENT = "ft-micro"


# ---- data in the real formats ----


def write_image(path: Path, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (SIZE + 8, SIZE), (20, 20, 20))
    image.paste(list(COLOURS.values())[index % len(COLOURS)], (4 + index % 5, 4, 16 + index % 5, 16))
    image.save(path)


def captions_of(split: str, index: int) -> list[str]:
    """Five captions naming their split, image and caption number, so a decoded batch says which pair it holds."""
    colour = list(COLOURS)[index % len(COLOURS)]
    return [f"{split} {index} {number} a {colour} square" for number in range(5)]


def write_karpathy(root: Path, splits: dict[str, int], image_dir: Path | None = None) -> Path:
    """dataset_coco.json with `count` images per split (5 sentences each); images under `image_dir` (default root)."""
    image_dir = image_dir or root
    images, index = [], 0
    for split, count in splits.items():
        folder = "train2014" if split == "train" else "val2014"
        for _ in range(count):
            name = f"COCO_{folder}_{index:012d}.png"
            write_image(image_dir / folder / name, index)
            sentences = [{"raw": text, "sentid": 5 * index + k} for k, text in enumerate(captions_of(split, index))]
            images.append(
                {"filepath": folder, "filename": name, "split": split, "sentences": sentences, "imgid": index}
            )
            index += 1
    root.mkdir(parents=True, exist_ok=True)
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def decoded_pairs(tokenizer: TextTokenizer, text_ids: torch.Tensor) -> list[tuple[str, int, int]]:
    return [(words[0], int(words[1]), int(words[2])) for words in (text.split() for text in tokenizer.decode(text_ids))]


def data_config(tmp_path: Path, **settings: object) -> DataConfig:
    return DataConfig.model_validate(
        {"cache_dir": str(tmp_path / "cache"), "workers": 1, "shuffle_buffer": 8, **settings}
    )


# ---- training sources ----


def test_karpathy_source_serves_every_caption_of_the_chosen_splits_once_per_epoch(tmp_path: Path) -> None:
    images = tmp_path / "images"
    path = write_karpathy(tmp_path / "coco", {"train": 4, "restval": 2, "val": 1, "test": 2}, image_dir=images)
    config = data_config(tmp_path, source={"kind": "karpathy", "urls": str(path), "image_root": str(images)})
    data = prepare(config, SIZE, 16, [])
    wanted = [
        (split, index, number)
        for split, first, count in (("train", 0, 4), ("restval", 4, 2))
        for index in range(first, first + count)
        for number in range(5)
    ]
    assert data.train.num_samples == len(wanted) == 30 and data.skipped_samples == 0

    epoch = data.train.batch(0, len(wanted), seed=3)
    assert sorted(decoded_pairs(data.tokenizer, epoch.text_ids)) == sorted(wanted)  # each (image, caption) pair once
    assert epoch.images.shape == (30, 3, SIZE, SIZE)

    again = prepare(config, SIZE, 16, []).train.batch(2, 6, seed=3)  # a batch is a function of (seed, step) only
    torch.testing.assert_close(again.images, data.train.batch(2, 6, seed=3).images)
    halves = [data.train.batch(2, 6, seed=3, rank=rank, world_size=2) for rank in (0, 1)]
    assert torch.equal(torch.cat([half.text_ids for half in halves]), again.text_ids)  # ranks slice the global batch

    only_train = prepare(
        data_config(
            tmp_path, source={"kind": "karpathy", "urls": str(path), "image_root": str(images), "splits": ["train"]}
        ),
        SIZE,
        16,
        [],
    )
    assert only_train.train.num_samples == 20


def test_retrieval_json_source_reads_albef_lists_and_skips_empty_captions(tmp_path: Path) -> None:
    for index in range(3):
        write_image(tmp_path / "coco" / "train2014" / f"{index}.png", index)
    entries = [
        {
            "image": "train2014/0.png",
            "caption": "train 0 0 a red square",
            "image_id": "coco_0",
        },  # ALBEF's train file: one caption each
        {"image": "train2014/0.png", "caption": "train 0 1 a red square", "image_id": "coco_0"},
        {"image": "train2014/1.png", "caption": ["train 1 0 a green square", "   ", "train 1 2 a green square"]},
        {"image": "train2014/2.png", "caption": ["train 2 0 a blue square"]},
    ]
    path = tmp_path / "coco" / "coco_train.json"
    path.write_text(json.dumps(entries))
    data = prepare(data_config(tmp_path, source={"kind": "retrieval_json", "urls": str(path)}), SIZE, 16, [])
    assert data.train.num_samples == 5 and data.train.skipped == 1  # the blank caption is skipped and counted
    pairs = decoded_pairs(data.tokenizer, data.train.batch(0, 5, seed=0).text_ids)
    assert sorted(pairs) == [("train", 0, 0), ("train", 0, 1), ("train", 1, 0), ("train", 1, 2), ("train", 2, 0)]

    with pytest.raises(CorruptSampleError, match=r"coco_train\.json: image .*1\.png: caption 1 is empty"):
        prepare(
            data_config(tmp_path, source={"kind": "retrieval_json", "urls": str(path)}, on_corrupt="fail"), SIZE, 16, []
        )


def bad_sources(tmp_path: Path) -> dict[str, tuple[dict, str, str]]:
    """name -> (data settings, the ConfigError's key, a regex its message must match)."""
    good = write_karpathy(tmp_path / "coco", {"train": 2, "test": 1})
    broken = tmp_path / "broken" / "dataset_coco.json"
    broken.parent.mkdir()
    data = json.loads(good.read_text())
    del data["images"][1]["sentences"]
    broken.write_text(json.dumps(data))
    albef = tmp_path / "albef.json"
    albef.write_text(json.dumps([{"image": "train2014/COCO_train2014_000000000000.png"}]))
    return {
        "missing-json": (
            {"source": {"kind": "karpathy", "urls": str(tmp_path / "nowhere.json")}},
            "data.source.urls",
            r"nowhere\.json: no such file",
        ),
        "json-missing-key": (
            {"source": {"kind": "karpathy", "urls": str(broken)}},
            "data.source.urls",
            r"broken/dataset_coco\.json: images\[1\] lacks key 'sentences'",
        ),
        "albef-missing-key": (
            {"source": {"kind": "retrieval_json", "urls": str(albef)}},
            "data.source.urls",
            r"albef\.json: entry 0 lacks key 'caption'",
        ),
        "split-without-images": (
            {"source": {"kind": "karpathy", "urls": str(good)}},
            "data.source.splits",
            r"dataset_coco\.json: no image in split 'restval' \(splits present: \['test', 'train'\]\)",
        ),
        "images-missing": (
            {"source": {"kind": "karpathy", "urls": str(good), "splits": ["train"], "image_root": str(tmp_path)}},
            "data.source.image_root",
            r"dataset_coco\.json: image .*train2014/COCO_train2014_000000000000\.png does not exist",
        ),
        "two-files": (
            {"source": {"kind": "karpathy", "urls": str(tmp_path / "*" / "dataset_coco.json")}},
            "data.source.urls",
            r"matches 2 files; a karpathy source is one JSON file",
        ),
        "no-urls": (
            {"source": {"kind": "retrieval_json"}},
            "data.source.urls",
            r"such as /data/albef/coco_train\.json",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing-json",
        "json-missing-key",
        "albef-missing-key",
        "split-without-images",
        "images-missing",
        "two-files",
        "no-urls",
    ],
)
def test_bad_retrieval_json_training_input_is_a_config_error_before_training(tmp_path: Path, case: str) -> None:
    settings, key, message = bad_sources(tmp_path)[case]
    config = RunConfig.model_validate(
        {"objective": {"variant": "itc"}, "data": {"cache_dir": str(tmp_path / "cache"), **settings}}
    )
    with pytest.raises(ConfigError) as error:
        train.validate(config)
    assert error.value.key == key
    assert re.search(message, str(error.value)), str(error.value)
    assert not (tmp_path / "cache").exists()


# ---- starting from a checkpoint ----


def micro_config(tmp_path: Path, **sections: dict) -> RunConfig:
    base = {
        "model": {"width": 32, "depth": 1, "num_heads": 2, "proj_dim": 16},
        "objective": {"variant": "oner"},
        "data": {
            "train_size": 64,
            "eval_images": 8,
            "cls_images_per_class": 1,
            "cache_dir": str(tmp_path / "cache"),
            "workers": 1,
        },
        "train": {"batch_size": 8, "steps": 2, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1},
        "eval": {"sets": ["shapes"], "batch_size": 64},
    }
    for name, values in sections.items():
        base[name] = {**base[name], **values}
    return RunConfig.model_validate(base)


def single_process() -> DistInfo:
    return DistInfo(rank=0, local_rank=0, world_size=1)


def test_a_run_started_from_a_checkpoint_has_its_weights_and_tokenizer_at_step_0_and_resumes_its_own(
    tmp_path: Path,
) -> None:
    train.run(micro_config(tmp_path), tmp_path / "parent")
    parent_path = tmp_path / "parent" / "checkpoints" / "last.pt"
    parent = load(parent_path)
    assert parent is not None

    coco = write_karpathy(tmp_path / "coco", {"train": 4})
    child_config = micro_config(
        tmp_path,
        objective={"variant": "itc"},
        train={"init_from": str(parent_path), "seed": 5, "steps": 3, "checkpoint_every": 1},
        data={"source": {"kind": "karpathy", "urls": str(coco), "splits": ["train"]}, "shuffle_buffer": 8},
    )
    child = train.Trainer(child_config, tmp_path / "child", single_process())
    child.start()
    assert child.step == 0
    for name, value in parent["model"].items():
        assert torch.equal(child.model.state_dict()[name], value), name
    for name, value in parent["target"].items():
        assert torch.equal(child.target.state_dict()[name], value), name
    assert child.data.tokenizer.to_str() == parent["tokenizer"]  # not a vocabulary trained on the COCO captions
    own = prepare(child_config.data, SIZE, 20, [])
    assert own.tokenizer.to_str() != parent["tokenizer"]
    assert child.data.train.batch(0, 8, 5).text_ids.max() < parent["tower"]["vocab_size"]

    class StopAfterTwo:
        def __init__(self) -> None:
            self.calls = 0

        def should_stop(self) -> bool:
            self.calls += 1
            return self.calls >= 2

    with pytest.raises(train.Interrupted):
        train.run(child_config, tmp_path / "child", control=StopAfterTwo())
    stopped = load(tmp_path / "child" / "checkpoints" / "last.pt")
    assert stopped is not None and stopped["step"] == 2
    resumed = train.Trainer(child_config, tmp_path / "child", single_process())
    resumed.start()  # its own last.pt wins over init_from
    assert resumed.step == 2
    for name, value in stopped["model"].items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert resumed.data.tokenizer.to_str() == parent["tokenizer"]  # read from the run's own copy


def test_a_parent_of_another_shape_or_tokenizer_is_refused(tmp_path: Path) -> None:
    train.run(micro_config(tmp_path), tmp_path / "parent")
    parent_path = str(tmp_path / "parent" / "checkpoints" / "last.pt")
    wider = micro_config(tmp_path, model={"width": 64, "num_heads": 2}, train={"init_from": parent_path})
    with pytest.raises(ConfigError, match=r"model\.width: 64 is not allowed; allowed: 32, as in .*last\.pt"):
        train.run(wider, tmp_path / "wider")

    other = tmp_path / "other_tokenizer"
    TextTokenizer.train(["a completely different vocabulary"], 40).save(other)
    with pytest.raises(ConfigError) as error:
        train.run(
            micro_config(tmp_path, train={"init_from": parent_path}, data={"tokenizer": str(other)}), tmp_path / "retok"
        )
    assert error.value.key == "data.tokenizer" and "the tokenizer of" in str(error.value)

    with pytest.raises(
        ConfigError, match=r"train\.init_from: '.*nowhere\.pt' is not allowed; allowed: an existing \.pt checkpoint"
    ):
        train.validate(micro_config(tmp_path, train={"init_from": str(tmp_path / "nowhere.pt")}))
    with pytest.raises(ConfigError, match="a variant name is resolved by `python -m oner_lab.run SPEC`"):
        train.run(micro_config(tmp_path, train={"init_from": "pretrain"}), tmp_path / "named")


# ---- the spec: parents first, children linked by mlflow.parentRunId ----


def micro_spec(tmp_path: Path, coco: Path, **variants: dict) -> dict:
    return {
        "name": EXPERIMENT,
        "launcher": {"backend": "debug"},
        "base": {
            "model": {"preset": "tiny", "width": 32, "depth": 1, "num_heads": 2, "proj_dim": 16},
            "objective": {"variant": "oner"},
            "data": {
                "train_size": 64,
                "eval_images": 8,
                "cls_images_per_class": 1,
                "workers": 1,
                "shuffle_buffer": 8,
                "cache_dir": str(tmp_path / "cache"),
                "eval_sources": {"coco5k": {"format": "karpathy", "path": str(coco)}},
            },
            "train": {"batch_size": 8, "steps": 3, "warmup_steps": 1, "checkpoint_every": 3, "log_every": 1},
            "eval": {"sets": ["coco5k"], "batch_size": 64},
        },
        "grid": {
            "variants": variants
            or {
                "pretrain": {},
                "finetune": {  # COCO train with ITC; lr so small that its weights stay the parent's to the bit
                    "objective": {"variant": "itc"},
                    "data": {"source": {"kind": "karpathy", "urls": str(coco), "splits": ["train", "restval"]}},
                    "train": {"init_from": "pretrain", "lr": 1.0e-30, "min_lr": 0.0, "weight_decay": 0.0, "steps": 2},
                },
            },
            "seed": [0],
        },
    }


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    copy_store(mlflow_template, tmp_path)
    return tmp_path


def write_spec(directory: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def runs_by_name(directory: Path) -> dict:
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = [] if experiment is None else client.search_runs([experiment.experiment_id])
    return {run.info.run_name: run for run in runs}


def test_the_cli_runs_the_parent_then_its_fine_tuning_run_linked_by_tag_and_a_rerun_skips_both(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = write_karpathy(workdir / "coco", {"train": 3, "restval": 1, "test": 4})
    spec = write_spec(workdir, micro_spec(workdir, coco))
    assert main([str(spec)]) == 0
    out = capsys.readouterr().out
    assert "starts from" in out and "Parents FINISHED; starting finetune/seed0" in out

    runs = runs_by_name(workdir)
    parent, child = runs["pretrain/seed0"], runs["finetune/seed0"]
    assert parent.info.status == child.info.status == "FINISHED"
    assert child.info.start_time >= parent.info.end_time  # dispatched once the parent had finished
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["oner.parent"] == "pretrain/seed0"

    parent_state = load(Path(parent.data.tags["oner.run_dir"]) / "checkpoints" / "last.pt")
    child_state = load(Path(child.data.tags["oner.run_dir"]) / "checkpoints" / "last.pt")
    assert parent_state is not None and child_state is not None and child_state["step"] == 2
    for name, value in parent_state["model"].items():  # lr 1e-30: the child's weights are still the parent's
        assert torch.equal(child_state["model"][name], value), name
    assert child_state["tokenizer"] == parent_state["tokenizer"]  # the shapes vocabulary, not one trained on COCO
    assert TextTokenizer.load(Path(child.data.tags["oner.run_dir"]) / "tokenizer").to_str() == parent_state["tokenizer"]

    table = analysis.retrieval_table(
        analysis.load_runs(f"sqlite:///{workdir / 'mlflow.db'}", EXPERIMENT), eval_set="coco5k"
    )
    assert list(table.frame.index) == ["pretrain"]  # the child is no row of its own
    assert table.frame.at["pretrain", "fine-tuned n"] == 1
    assert table.frame.at["pretrain", "fine-tuned TR@1"] == pytest.approx(child.data.metrics["eval/coco5k/tr_r1"])

    assert main([str(spec)]) == 0
    assert "All 2 runs already FINISHED" in capsys.readouterr().out
    assert len(runs_by_name(workdir)) == 2


def test_the_parents_config_is_part_of_the_childs_hash(tmp_path: Path) -> None:
    coco = write_karpathy(tmp_path / "coco", {"train": 2, "test": 1})
    spec = write_spec(tmp_path, micro_spec(tmp_path, coco))
    before = {run.variant: run for run in expand(load_spec(spec))}
    after = {run.variant: run for run in expand(load_spec(spec, overrides=["grid.variants.pretrain.train.lr=3e-4"]))}
    assert before["finetune"].config == after["finetune"].config  # the child's own config is unchanged ...
    assert before["finetune"].config_hash != after["finetune"].config_hash  # ... its hash is not
    assert (
        after["finetune"].parent is not None and after["finetune"].parent.config_hash == after["pretrain"].config_hash
    )
    only = expand(load_spec(spec), {"variant": "finetune"})
    assert [run.run_name for run in only] == ["finetune/seed0"] and only[0].config_hash == before[
        "finetune"
    ].config_hash


def spec_error(tmp_path: Path, variants: dict) -> SpecError:
    coco = write_karpathy(tmp_path / "coco", {"train": 2, "test": 1})
    with pytest.raises(SpecError) as error:
        load_spec(write_spec(tmp_path, micro_spec(tmp_path, coco, **variants)))
    return error.value


@pytest.mark.parametrize(
    ("variants", "key", "message"),
    [
        (
            {"pretrain": {}, "finetune": {"train": {"init_from": "pretrian"}}},
            "grid.variants.finetune.train.init_from",
            r"'pretrian' is not a variant of this spec.*Did you mean 'pretrain'",
        ),
        (
            {"finetune": {"train": {"init_from": "finetune"}}},
            "grid.variants.finetune.train.init_from",
            "variant 'finetune' starts from itself",
        ),
        (
            {"a": {"train": {"init_from": "b"}}, "b": {"train": {"init_from": "a"}}},
            "grid.variants.b.train.init_from",
            r"in a cycle \(a -> b -> a\)",
        ),
    ],
    ids=["unknown-variant", "self-reference", "cycle"],
)
def test_init_from_naming_no_variant_itself_or_a_cycle_is_a_spec_error(
    tmp_path: Path, variants: dict, key: str, message: str
) -> None:
    error = spec_error(tmp_path, variants)
    assert error.key == key
    assert re.search(message, str(error)), str(error)


def test_only_the_child_of_an_unfinished_parent_is_refused_naming_what_to_run(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = write_karpathy(workdir / "coco", {"train": 2, "test": 1})
    spec = write_spec(workdir, micro_spec(workdir, coco, pretrain={}, finetune={"train": {"init_from": "pretrain"}}))
    assert main([str(spec), "--only", "variant=finetune"]) == 2
    error = capsys.readouterr().err
    assert (
        "run finetune/seed0 starts from pretrain/seed0 (train.init_from), which has not FINISHED (never run)" in error
    )
    assert "--only variant=pretrain" in error
    assert runs_by_name(workdir) == {}


def test_a_child_of_another_tower_shape_is_refused_before_anything_runs(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = write_karpathy(workdir / "coco", {"train": 2, "test": 1})
    variants = {"pretrain": {}, "finetune": {"train": {"init_from": "pretrain"}, "model": {"depth": 2}}}
    assert main([str(write_spec(workdir, micro_spec(workdir, coco, **variants)))]) == 2
    assert (
        "run finetune/seed0: model.depth: 2 is not allowed; allowed: 1, as in pretrain/seed0" in capsys.readouterr().err
    )
    assert runs_by_name(workdir) == {}


def test_a_failed_parent_leaves_its_child_unstarted_and_says_why(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = write_karpathy(workdir / "coco", {"train": 2, "test": 1})
    variants = {"pretrain": {"train": {"lr": 1.0e30}}, "finetune": {"train": {"init_from": "pretrain"}}}
    assert main([str(write_spec(workdir, micro_spec(workdir, coco, **variants)))]) == 1
    out = capsys.readouterr().out
    assert "pretrain/seed0 FAILED" in out
    assert "finetune/seed0 not started: its parent pretrain/seed0 ended FAILED; fix it, then run" in out
    assert set(runs_by_name(workdir)) == {"pretrain/seed0"}  # no MLflow run for the child


def test_local_backend_no_wait_dispatches_the_parent_only_and_a_later_run_starts_the_child(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = write_karpathy(workdir / "coco", {"train": 2, "test": 2})
    spec = micro_spec(
        workdir,
        coco,
        pretrain={},
        finetune={"objective": {"variant": "itc"}, "train": {"init_from": "pretrain", "steps": 1}},
    )
    spec["launcher"] = {"backend": "local"}
    path = write_spec(workdir, spec)
    assert main([str(path), "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert "finetune/seed0 not started: it starts from pretrain/seed0, dispatched now; run" in out
    deadline = time.monotonic() + 180
    while (parent := runs_by_name(workdir).get("pretrain/seed0")) is None or parent.info.status != "FINISHED":
        assert parent is None or parent.info.status in ("SCHEDULED", "RUNNING"), parent.data.tags.get("oner.error")
        assert time.monotonic() < deadline, "the parent did not finish in time"
        time.sleep(1)
    assert set(runs_by_name(workdir)) == {"pretrain/seed0"}

    assert main([str(path)]) == 0  # the parent is skipped, the child starts from its checkpoint
    runs = runs_by_name(workdir)
    assert runs["finetune/seed0"].info.status == "FINISHED"
    assert runs["finetune/seed0"].data.tags["mlflow.parentRunId"] == runs["pretrain/seed0"].info.run_id


@pytest.mark.slurm
def test_on_slurm_the_child_is_submitted_after_its_parent_finished(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = write_karpathy(workdir / "coco", {"train": 2, "test": 2})
    spec = micro_spec(
        workdir,
        coco,
        pretrain={},
        finetune={"objective": {"variant": "itc"}, "train": {"init_from": "pretrain", "steps": 1}},
    )
    spec["launcher"] = {"backend": "slurm", "runs_dir": str(workdir / "runs"), "slurm": {"cluster": "local"}}
    assert main([str(write_spec(workdir, spec))]) == 0
    assert "Parents FINISHED; starting finetune/seed0" in capsys.readouterr().out
    runs = runs_by_name(workdir)
    parent, child = runs["pretrain/seed0"], runs["finetune/seed0"]
    assert parent.info.status == child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["oner.slurm.job_id"] != parent.data.tags["oner.slurm.job_id"]  # a second submission
    assert child.info.start_time >= parent.info.end_time
