"""The shipped experiments: every spec and profile validates today without its data, and the `local`
profiles of retrieval_4m.yaml and transfer.yaml run end to end on the sample corpora, written in the
real formats, through the CLI and the same loaders as the paper-scale recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from cli_in_process import oner_run

from oner_lab import analysis, train
from oner_lab.data.sample_corpora import SampleSizes, write_samples
from oner_lab.spec import expand, load_spec

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


def profiles_of(spec_file: Path) -> list[str | None]:
    return [None, *load_spec(spec_file).profiles]


@pytest.mark.parametrize(
    ("spec_file", "profile"),
    [(spec_file, profile) for spec_file in EXPERIMENTS for profile in profiles_of(spec_file)],
    ids=lambda value: value.stem if isinstance(value, Path) else str(value),
)
def test_every_shipped_spec_and_profile_validates_without_its_data(spec_file: Path, profile: str | None) -> None:
    spec = load_spec(spec_file, profile=profile)
    for run in expand(spec):
        train.validate(run.config, files=False)


PAPER_VOCAB = 30522  # BERT uncased WordPiece, as docs/paper.md reads the paper


@pytest.mark.parametrize(
    ("spec_file", "profile"),
    [(spec_file, profile) for spec_file in EXPERIMENTS for profile in profiles_of(spec_file)],
    ids=lambda value: value.stem if isinstance(value, Path) else str(value),
)
def test_paper_scale_runs_evaluate_on_real_sets_with_a_paper_sized_vocabulary(
    spec_file: Path, profile: str | None
) -> None:
    """A ViT-B/16 run judged on the built-in shapes, or with the 512-entry toy vocabulary, would
    spend A100-days measuring the wrong thing: every eval set must be a file-backed source."""
    for run in expand(load_spec(spec_file, profile=profile)):
        config = run.config
        if config.model.preset != "vit_b16":
            continue
        built_in = [name for name in config.eval.sets if name not in config.data.eval_sources]
        assert not built_in, f"{spec_file.name} [{profile}] {run.name}: evaluates on built-in {built_in}"
        assert config.eval.sets, f"{spec_file.name} [{profile}] {run.name}: no evaluation"
        assert config.data.tokenizer is not None or config.data.vocab_size >= PAPER_VOCAB, (
            f"{spec_file.name} [{profile}] {run.name}: data.vocab_size {config.data.vocab_size}"
        )


def test_a_dry_run_of_a_paper_recipe_lists_the_data_missing_here_and_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = oner_run([str(ROOT / "experiments" / "retrieval_4m.yaml"), "--dry-run"], tmp_path, monkeypatch)
    assert result.returncode == 0, result.stderr
    assert "2 of 2 runs cannot start on this machine" in result.stdout
    assert "data/coco_pairs/*.tar" in result.stdout and "data/coco/dataset_coco.json" in result.stdout
    assert not (tmp_path / "mlflow.db").exists()
    refused = oner_run(
        [str(ROOT / "experiments" / "retrieval_4m.yaml"), "--set", "launcher.backend=local"], tmp_path, monkeypatch
    )
    assert refused.returncode == 2 and "data/coco_pairs/*.tar" in refused.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh working directory holding `data/sample`, as a user's checkout after `python -m oner_lab.data.sample_corpora`."""
    directory = tmp_path_factory.mktemp("experiments")
    write_samples(directory / "data" / "sample")
    return directory


# The local profiles train long enough for their tables to show something (150-200 steps); these
# tests check the plumbing (pretrain, fine-tune, tables, resume) and that each model learned, which
# fewer steps show with room to spare: on a 2 GHz AVX2 CPU the retrieval profile's parent at 80 steps
# reached COCO TR@1 9.0 and IR@1 15.4 (the bar is 2.5), and the transfer runs at 60 steps 10-27.5%
# top-1 on 40 classes (the bar is 2.5); the full profiles took 182 s and 277 s of the suite there.
RETRIEVAL_SHORT = ("--set", "base.train.steps=80", "--set", "base.train.warmup_steps=8")
RETRIEVAL_SHORT += ("--set", "base.train.checkpoint_every=40", "--set", "base.eval.every_steps=40")
TRANSFER_SHORT = ("--set", "base.train.steps=60", "--set", "base.train.warmup_steps=6")


def test_retrieval_local_profile_pretrains_fine_tunes_and_fills_both_table_columns(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    retrieval = (str(ROOT / "experiments" / "retrieval_4m.yaml"), "--profile", "local", *RETRIEVAL_SHORT)
    result = oner_run(retrieval, workdir, monkeypatch)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Parents FINISHED; starting oner_coco_ft/seed0" in result.stdout
    runs = analysis.load_runs(f"sqlite:///{workdir / 'mlflow.db'}", "oner-retrieval-4m-local")
    assert sorted(runs["variant"]) == ["oner", "oner_coco_ft"] and set(runs["status"]) == {"FINISHED"}
    parent = runs[runs["variant"] == "oner"].iloc[0]
    child = runs[runs["variant"] == "oner_coco_ft"].iloc[0]
    assert child["parent_run_id"] == parent["run_id"]
    chance = 100 / SampleSizes().coco_test_images
    for key in ("eval/coco5k/tr_r1", "eval/coco5k/ir_r1", "eval/flickr1k/tr_r1", "eval/flickr1k/ir_r1"):
        assert parent[key] > 5 * chance, (key, parent[key])
    assert child["eval/coco5k/tr_r1"] > 5 * chance
    table = analysis.retrieval_table(runs)
    assert list(table.frame.index) == ["oner"]
    assert table.frame.loc["oner", "fine-tuned TR@1"] == pytest.approx(child["eval/coco5k/tr_r1"])
    assert table.frame.loc["oner", "zero-shot TR@1"] == pytest.approx(parent["eval/coco5k/tr_r1"])

    again = oner_run(retrieval, workdir, monkeypatch)
    assert again.returncode == 0 and "All 2 runs already FINISHED" in again.stdout


def test_transfer_local_profile_trains_with_and_without_text_only_captions(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfer = (str(ROOT / "experiments" / "transfer.yaml"), "--profile", "local", *TRANSFER_SHORT)
    result = oner_run(transfer, workdir, monkeypatch)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = analysis.load_runs(f"sqlite:///{workdir / 'mlflow.db'}", "oner-transfer-local")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    with_captions = runs["variant"].str.endswith("cc3m_captions")
    assert (runs.loc[with_captions, "data/text_only_samples"] == SampleSizes().text_only_captions).all()
    assert runs.loc[~with_captions, "data/text_only_samples"].fillna(0).eq(0).all()
    table = analysis.transfer_table(runs)
    assert len(table.frame.index) == 3 and table.frame.index[-1] == "gain"  # SBU, SBU + captions, gain
    top1 = [column for column in table.frame.columns if column.endswith("top-1") and "std" not in column]
    assert len(top1) == 2  # two heads, one tower
    for column in top1:
        first, second, gain = table.frame[column]
        assert math.isclose(gain, second - first, abs_tol=1e-9)
        assert first > 100 / 40 and second > 100 / 40  # above chance on the 40 classes
