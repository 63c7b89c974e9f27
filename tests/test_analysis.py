"""oner_lab.analysis and the notebooks in analysis/, on a real MLflow store made by a micro run.

The store: `python -m oner_lab.run experiments/smoke.yaml` (debug backend, in process) with seeds
0 and 1, the two-head variant added, and an evaluation every 2 of its 5 steps, so every table,
curve and the t-SNE figure have real runs, histories and checkpoints to read. Tests that add
runs work on a copy of the database. Notebooks run in a real Jupyter kernel through papermill.
"""

from __future__ import annotations

import html
import math
import shutil
from pathlib import Path

import jupytext
import matplotlib
import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
from mlflow import MlflowClient
from mlflow_store import copy_store

from oner_lab import analysis, checkpoint, tracking
from oner_lab.analysis import paper, tsne
from oner_lab.distributed import DistInfo
from oner_lab.embedding_sample import EmbeddingSample
from oner_lab.run import main as run_cli
from oner_lab.spec import expand, load_spec
from oner_lab.spec.config import RunConfig
from oner_lab.train import Trainer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"
NOTEBOOKS = ROOT / "analysis"
EXPERIMENT = "oner-smoke"
SEEDS = [0, 1]
VARIANTS = ["itc", "oner", "itc_two_heads"]  # the smoke spec's two, then the one added below
TWO_HEADS = "grid.variants.itc_two_heads={objective: {variant: itc_two_heads}, model: {head: per_modality}}"
MICRO_RUN = [
    "--set",
    "launcher.backend=debug",
    "--set",
    f"grid.seed={SEEDS}",
    "--set",
    "base.eval.every_steps=2",
    "--set",
    TWO_HEADS,
]
ABLATION_LABELS = ["top-1", "TR@1", "TR@5", "IR@1", "IR@5"]


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Path:
    """The micro run's folder (mlflow.db, mlruns/, runs/, data_cache/); read only for the tests."""
    directory = tmp_path_factory.mktemp("analysis_store")
    copy_store(mlflow_template, directory)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)  # the spec's relative paths (sqlite:///mlflow.db, runs, data_cache) land here
        assert run_cli([str(SMOKE), *MICRO_RUN]) == 0
    return directory


@pytest.fixture(scope="session")
def uri(store: Path) -> str:
    return f"sqlite:///{store / 'mlflow.db'}"


@pytest.fixture
def store_copy(store: Path, tmp_path: Path) -> str:
    """A copy of the micro run's database (its runs keep their run directories and artifacts)."""
    shutil.copyfile(store / "mlflow.db", tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def logged(uri: str) -> dict[str, dict[str, float]]:
    """Run name -> final metrics, read with MlflowClient directly (not through the code under test)."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return {run.info.run_name: run.data.metrics for run in client.search_runs([experiment.experiment_id])}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def smoke_runs(overrides: list[str]) -> list:
    """Planned runs of the smoke spec with the micro run's overrides plus `overrides`."""
    return expand(
        load_spec(SMOKE, overrides=[item for item in MICRO_RUN[1::2] if not item.startswith("launcher")] + overrides)
    )


def add_run(
    uri: str, planned, metrics: dict[str, float], status: str, error: str | None = None, experiment: str = EXPERIMENT
) -> str:
    """Logs one more run through tracking, as a launcher would (SCHEDULED, metrics, then its end)."""
    client = tracking.connect(uri)
    run_id = tracking.create_run(
        client, experiment, planned, load_spec(SMOKE), Path("/nonexistent") / planned.config_hash
    )
    with tracking.MlflowRunLogger(client, run_id) as logger:
        logger.log_metrics(metrics, planned.config.train.steps)
    tracking.end_run(client, run_id, status, error)
    return run_id


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1))


# --- runs -----------------------------------------------------------------------------------


def test_load_runs_has_one_row_per_run_with_tags_final_metrics_and_params(uri: str, logged: dict) -> None:
    runs = analysis.load_runs(uri, EXPERIMENT)
    assert sorted(runs["run_name"]) == sorted(f"{variant}/seed{seed}" for variant in VARIANTS for seed in SEEDS)
    assert set(runs["status"]) == {tracking.FINISHED}
    assert list(runs["row"]) == list(runs["variant"])  # no grid axes: a row is a variant
    assert sorted(runs["seed"].dropna().astype(int)) == sorted(SEEDS * len(VARIANTS))
    for run in runs.to_dict("records"):
        assert run["eval/shapes/tr_r1"] == logged[run["run_name"]]["eval/shapes/tr_r1"]
        assert Path(run["run_dir"], "checkpoints", "last.pt").is_file()
        assert run["params.train.seed"] == str(run["seed"])
    assert runs.groupby("variant")["recipe"].nunique().eq(1).all()  # seeds of a variant share one recipe
    assert runs.groupby("variant")["config_hash"].nunique().eq(len(SEEDS)).all()


def test_a_missing_experiment_or_store_is_an_empty_frame_that_says_so(uri: str, tmp_path: Path) -> None:
    runs = analysis.load_runs(uri, "no-such-experiment")
    assert runs.empty and not runs.attrs["experiment_found"] and EXPERIMENT in runs.attrs["experiments"]
    assert "does not exist" in analysis.runs_summary(runs)
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    assert analysis.load_runs(absent, EXPERIMENT).empty and not (tmp_path / "absent.db").exists()


def test_metric_history_has_every_logged_step(uri: str) -> None:
    runs = analysis.load_runs(uri, EXPERIMENT)
    history = analysis.metric_history(uri, runs, ["train/loss", "eval/shapes/modality_gap"])
    steps = history.groupby(["run_name", "key"])["step"].apply(list)
    for name in runs["run_name"]:
        assert steps[(name, "train/loss")] == [1, 2, 3, 4, 5]
        assert steps[(name, "eval/shapes/modality_gap")] == [2, 4, 5]  # eval.every_steps=2, then the final step
    assert history["value"].map(math.isfinite).all()


# --- tables ---------------------------------------------------------------------------------


def test_ablation_table_means_stds_and_seeds_per_variant(uri: str, logged: dict) -> None:
    table = analysis.ablation_table(analysis.load_runs(uri, EXPERIMENT))
    frame = table.frame
    assert list(frame.index) == VARIANTS
    assert list(frame.columns) == [
        "n",
        *[name for label in ABLATION_LABELS for name in (label, f"{label} std")],
        "paper row",
    ]
    assert list(frame["n"]) == [len(SEEDS)] * len(VARIANTS)
    for variant in VARIANTS:
        for key, label in frame.attrs["metrics"].items():
            mean, std = mean_std([logged[f"{variant}/seed{seed}"][key] for seed in SEEDS])
            assert frame.at[variant, label] == pytest.approx(mean) and frame.at[
                variant, f"{label} std"
            ] == pytest.approx(std)
    assert list(frame["paper row"]) == [paper.PAPER_ROW_OF_VARIANT[variant] for variant in VARIANTS]
    assert any("not the paper's" in note for note in table.footnotes)  # shapes: no differences to the paper
    first = frame.loc["itc"]
    assert table.display.loc[0, "TR@1"] == f"{first['TR@1']:.1f} ± {first['TR@1 std']:.1f}"


def test_renderings_carry_our_rows_footnotes_and_the_papers_rows(uri: str, tmp_path: Path) -> None:
    table = analysis.ablation_table(analysis.load_runs(uri, EXPERIMENT))
    paths = table.save(tmp_path, "ablation")
    assert [path.suffix for path in paths] == [".csv", ".md", ".tex", ".html"]
    assert pd.read_csv(paths[0], index_col=0).index.tolist() == VARIANTS
    markdown, latex, html = (path.read_text() for path in paths[1:])
    note = table.footnotes[0]
    for variant in VARIANTS:
        assert f"| {variant} | {len(SEEDS)} |" in markdown and f"<td>{variant}</td>" in html
        assert variant.replace("_", r"\_") in latex
    assert f"- *Note:* {note}" in markdown and "<tfoot>" in html and r"\multicolumn{8}" in latex
    assert r"$\pm$" in latex and "±" not in latex
    for method in paper.ABLATION_ROWS:
        assert f"| {method} |" in markdown and f"<td>{method}</td>" in html


def test_failed_runs_missing_metrics_and_mixed_configs_become_footnotes(store_copy: str, logged: dict) -> None:
    extra = {run.variant: run for run in smoke_runs(["grid.seed=[2]"])}
    add_run(store_copy, extra["itc"], {"train/loss": 1.0}, tracking.FAILED, "ValueError: boom")
    partial = {key: value for key, value in logged["oner/seed0"].items() if key != "eval/shapes_cls/top1"}
    add_run(store_copy, extra["oner"], partial, tracking.FINISHED)
    edited = next(run for run in smoke_runs(["base.train.steps=7", "grid.seed=[0]"]) if run.variant == "itc_two_heads")
    add_run(store_copy, edited, logged["itc_two_heads/seed0"], tracking.FINISHED)

    table = analysis.ablation_table(analysis.load_runs(store_copy, EXPERIMENT))
    notes = "\n".join(table.footnotes)
    assert "itc/seed2 is FAILED, not counted: ValueError: boom" in notes
    assert table.frame.at["itc", "n"] == len(SEEDS)
    assert "oner: oner/seed2 logged no eval/shapes_cls/top1; the top-1 cell averages the other run(s) only" in notes
    assert table.frame.at["oner", "n"] == len(SEEDS) + 1
    assert table.frame.at["oner", "top-1"] == pytest.approx(
        np.mean([logged[f"oner/seed{seed}"]["eval/shapes_cls/top1"] for seed in SEEDS])
    )
    assert (
        "itc_two_heads: 2 run(s) of an earlier config left out (itc_two_heads/seed0, itc_two_heads/seed1; train.steps: 5 -> 7)"
        in notes
    )
    assert table.frame.at["itc_two_heads", "n"] == 1  # only the latest config, never averaged with the other
    assert all(note in table.to_markdown() and html.escape(note) in table.to_html() for note in table.footnotes)


def test_a_missing_experiment_gives_a_footnote_and_the_papers_tables(uri: str) -> None:
    runs = analysis.load_runs(uri, "oner-retrieval-4m")
    for build in (analysis.ablation_table, analysis.retrieval_table, analysis.transfer_table, analysis.gap_table):
        table = build(runs)
        assert table.frame.empty
        assert (
            table.footnotes[0].startswith("No experiment 'oner-retrieval-4m'")
            and repr(EXPERIMENT) in table.footnotes[0]
        )
    assert len(analysis.retrieval_table(runs).paper) == len(paper.RETRIEVAL_ROWS)


def test_retrieval_table_zero_shot_and_fine_tuned_columns(store_copy: str, logged: dict) -> None:
    runs = analysis.load_runs(store_copy, EXPERIMENT)
    table = analysis.retrieval_table(runs)
    frame = table.frame
    assert list(frame.index) == VARIANTS and (frame["fine-tuned n"] == 0).all()
    zero_shot = [f"zero-shot {direction}@{k}" for direction in ("TR", "IR") for k in (1, 5, 10)]
    assert np.isfinite(frame[zero_shot].to_numpy(dtype=float)).all()
    mean, _ = mean_std([logged[f"oner/seed{seed}"]["eval/shapes/ir_r10"] for seed in SEEDS])
    assert frame.at["oner", "zero-shot IR@10"] == pytest.approx(mean)
    assert any("No fine-tuning runs" in note for note in table.footnotes)

    # a fine-tuning run names its pretraining run with MLflow's parent tag: its metrics fill the parent's row
    parent = runs.set_index("run_name").loc["oner/seed0", "run_id"]
    child_plan = next(run for run in smoke_runs(["grid.seed=[3]"]) if run.variant == "oner")
    child = add_run(store_copy, child_plan, {"eval/shapes/tr_r1": 61.0, "eval/shapes/ir_r1": 41.0}, tracking.FINISHED)
    MlflowClient(tracking_uri=store_copy).set_tag(child, "mlflow.parentRunId", parent)
    tuned = analysis.retrieval_table(analysis.load_runs(store_copy, EXPERIMENT)).frame
    assert tuned.at["oner", "n"] == len(SEEDS)  # the child is not a pretraining seed
    assert tuned.at["oner", "fine-tuned n"] == 1 and tuned.at["oner", "fine-tuned TR@1"] == 61.0
    assert tuned.at["itc", "fine-tuned n"] == 0 and math.isnan(tuned.at["itc", "fine-tuned TR@1"])


def test_differences_to_the_paper_only_on_its_own_eval_sets(store_copy: str) -> None:
    plans = {run.variant: run for run in smoke_runs(["base.eval.sets=[coco5k, imagenet]", "grid.seed=[0]"])}
    metrics = {
        "eval/imagenet/top1": 20.0,
        **{f"eval/coco5k/{kind}_r{k}": 30.0 + k for kind in ("tr", "ir") for k in (1, 5, 10)},
    }
    for variant in ("itc", "oner"):
        add_run(store_copy, plans[variant], metrics, tracking.FINISHED, experiment="paper-sets")
    runs = analysis.load_runs(store_copy, "paper-sets")
    ablation = analysis.ablation_table(runs)
    assert ablation.frame.at["oner", "Δ TR@1"] == pytest.approx(31.0 - paper.ABLATION_ROWS["+ CMC (OneR)"][1])
    assert ablation.frame.at["itc", "Δ top-1"] == pytest.approx(20.0 - paper.ABLATION_ROWS["ITC"][0])
    assert not any("not the paper's" in note for note in ablation.footnotes)
    retrieval = analysis.retrieval_table(runs)
    assert retrieval.frame.at["oner", "Δ zero-shot IR@10"] == pytest.approx(
        40.0 - paper.RETRIEVAL_ROWS["OneR"].zero_shot_ir[2]
    )
    assert math.isnan(retrieval.frame.at["itc", "Δ zero-shot TR@1"])  # the main table has no ITC row
    assert list(retrieval.display["method"]) == ["itc", "oner", "Δ oner − paper OneR"]


def test_transfer_table_rows_are_training_data_with_a_gain_row(store_copy: str, logged: dict) -> None:
    before = analysis.transfer_table(analysis.load_runs(store_copy, EXPERIMENT))
    assert list(before.frame.index) == ["shapes"] and list(before.display.columns) == [
        "training data",
        "itc",
        "one tower",
        "two heads",
    ]
    for plan in smoke_runs(["grid.axes={data.max_objects: [1]}", "grid.seed=[0]"]):  # a second training-data setting
        if plan.variant in ("oner", "itc_two_heads"):
            shifted = {key: value + 1.0 for key, value in logged[f"{plan.variant}/seed0"].items()}
            add_run(store_copy, plan, shifted, tracking.FINISHED)
    frame = analysis.transfer_table(analysis.load_runs(store_copy, EXPERIMENT)).frame
    assert list(frame.index) == ["data.max_objects=2", "data.max_objects=1", "gain"]
    base, _ = mean_std([logged[f"oner/seed{seed}"]["eval/shapes/tr_r1"] for seed in SEEDS])
    assert frame.at["gain", "one tower TR@1"] == pytest.approx(logged["oner/seed0"]["eval/shapes/tr_r1"] + 1.0 - base)
    assert frame.at["data.max_objects=1", "two heads n"] == 1 and math.isnan(frame.at["data.max_objects=1", "itc n"])


def test_gap_table_has_the_final_gap_and_alignment(uri: str, logged: dict) -> None:
    frame = analysis.gap_table(analysis.load_runs(uri, EXPERIMENT)).frame
    assert list(frame.index) == VARIANTS
    mean, std = mean_std([logged[f"itc/seed{seed}"]["eval/shapes/modality_gap"] for seed in SEEDS])
    assert frame.at["itc", "modality gap"] == pytest.approx(mean) and frame.at[
        "itc", "modality gap std"
    ] == pytest.approx(std)


# --- figures --------------------------------------------------------------------------------


def test_bars_have_a_panel_per_metric_and_a_bar_per_variant(uri: str, tmp_path: Path) -> None:
    figure = analysis.metric_bars(analysis.load_runs(uri, EXPERIMENT))
    panels = [axis for axis in figure.axes if axis.get_title()]
    assert [axis.get_title() for axis in panels] == ABLATION_LABELS
    assert all(len(axis.patches) == len(VARIANTS) for axis in panels)
    assert analysis.save_figure(figure, tmp_path, "bars").stat().st_size > 10_000


def test_loss_and_gap_curves_plot_every_term_and_evaluation(uri: str) -> None:
    runs = analysis.load_runs(uri, EXPERIMENT)
    losses = analysis.loss_curves(uri, runs)
    terms = sorted(key for key in runs.columns if key.startswith("train/loss") and runs[key].notna().any())
    assert sorted(axis.get_title() for axis in losses.axes if axis.get_title()) == terms
    assert {"train/loss_cmc", "train/loss_itc", "train/loss_mlm"} <= set(terms)
    gap = analysis.modality_gap_curves(uri, runs)
    panel = next(axis for axis in gap.axes if axis.get_title() == "eval/shapes/modality_gap")
    assert sorted(list(line.get_xdata()) for line in panel.get_lines() if len(line.get_xdata())) == [[2, 4, 5]] * len(
        VARIANTS
    )


def test_every_run_logs_the_same_embedding_sample_early_and_final(uri: str) -> None:
    runs = analysis.load_runs(uri, EXPERIMENT)
    items = set()
    for run in runs.to_dict("records"):
        samples = tsne.logged_samples(uri, run["run_id"])
        assert {when: sample.step for when, sample in samples.items()} == {
            "early": 1,
            "final": 5,
        }  # a tenth of 5 steps, at least 1
        for sample in samples.values():
            assert (
                sample.eval_set == "shapes" and len(sample.item) == 32
            )  # the smoke spec's 32 eval images, all sampled
            for part in (sample.image, sample.text, sample.joint):
                assert part.shape == (32, 128) and np.allclose(np.linalg.norm(part, axis=1), 1, atol=1e-5)
            items.add(tuple(sample.item))
    assert len(items) == 1  # one fixed sample: every run embeds the same images


def test_the_logged_final_sample_is_the_final_weights_embedding(
    store: Path, uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-embedding with the final checkpoint (through the trainer) gives the logged artifact, for both head kinds."""
    monkeypatch.chdir(store)  # the run's relative data cache
    runs = analysis.load_runs(uri, EXPERIMENT).set_index("run_name")
    for name in ("itc_two_heads/seed1", "oner/seed0"):
        run_dir = tmp_path / name.replace("/", "-")
        shutil.copytree(Path(runs.loc[name, "run_dir"]) / "checkpoints", run_dir / "checkpoints")
        final = checkpoint.load(run_dir / "checkpoints" / "last.pt")
        trainer = Trainer(RunConfig.model_validate(final["config"]), run_dir, DistInfo(0, 1, 0))
        assert trainer.resume()
        trainer.log_embeddings(None, "again")
        again = EmbeddingSample.load(run_dir / "embeddings" / "again.npz")
        logged = tsne.logged_samples(uri, runs.loc[name, "run_id"])["final"]
        assert again.step == logged.step and np.array_equal(again.item, logged.item)
        for part in ("image", "text", "joint"):
            assert np.allclose(getattr(again, part), getattr(logged, part), atol=1e-5), (name, part)
        assert not np.allclose(logged.joint, logged.image, atol=1e-3)  # the joint view is its own pass


def test_a_run_that_logged_no_sample_gets_a_panel_saying_so(store_copy: str) -> None:
    add_run(
        store_copy,
        smoke_runs(["grid.variants.xmc={objective: {variant: xmc}}"])[-1],
        {"eval/shapes/tr_r1": 1.0},
        tracking.FINISHED,
    )
    runs = analysis.load_runs(store_copy, EXPERIMENT)
    figure = analysis.tsne_figure(store_copy, runs[runs["variant"].isin(["xmc", "itc"])], max_points=10)
    said = [text.get_text() for axis in figure.axes for text in axis.texts]
    assert any(text.startswith("xmc/seed") and "no artifact embeddings/final.npz" in text for text in said), said
    assert [axis.get_title() for axis in figure.axes if axis.get_title()] == [
        "itc/seed0: step 1",
        "itc/seed0: step 5 (final)",
    ]


def test_tsne_figure_has_early_and_final_panels_of_three_modalities(uri: str, store: Path) -> None:
    figure = analysis.tsne_figure(uri, analysis.load_runs(uri, EXPERIMENT), max_points=20)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == [f"{variant}/seed0: {when}" for variant in VARIANTS for when in ("step 1", "step 5 (final)")]
    for axis in figure.axes:
        points = np.concatenate([collection.get_offsets() for collection in axis.collections])
        assert points.shape == (3 * 20, 2) and np.isfinite(points).all()
        assert len({tuple(color) for collection in axis.collections for color in collection.get_facecolors()}) == 3


def test_outputs_are_logged_to_one_analysis_run_that_no_table_counts(store_copy: str, tmp_path: Path) -> None:
    png = analysis.save_figure(analysis.metric_bars(analysis.load_runs(store_copy, EXPERIMENT)), tmp_path, "bars")
    first = analysis.log_outputs(store_copy, EXPERIMENT, "ablation", [png])
    tables = analysis.gap_table(analysis.load_runs(store_copy, EXPERIMENT)).save(tmp_path, "gap")
    again = analysis.log_outputs(store_copy, EXPERIMENT, "ablation", [png, *tables])
    assert first == again
    client = MlflowClient(tracking_uri=store_copy)
    logged_files = sorted(item.path for item in client.list_artifacts(first, "analysis"))
    assert logged_files == sorted(
        f"analysis/{name}" for name in ("bars.png", "gap.csv", "gap.md", "gap.tex", "gap.html")
    )
    run = client.get_run(first)
    assert run.info.run_name == "analysis/ablation" and run.info.status == tracking.FINISHED
    companion = client.get_experiment_by_name(f"{EXPERIMENT}/analysis")  # not among the training runs
    assert run.info.experiment_id == companion.experiment_id
    assert (
        companion.tags["mlflow.experimentKind"] == "custom_model_development"
        and EXPERIMENT in companion.tags["mlflow.note.content"]
    )
    training = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert (
        companion.artifact_location == client.get_experiment(training).artifact_location + "-analysis"
    )  # not under cwd
    assert all(not name.startswith("analysis/") for name in (r.info.run_name for r in client.search_runs([training])))
    assert first not in set(analysis.load_runs(store_copy, EXPERIMENT)["run_id"])
    assert analysis.log_outputs(store_copy, "no-such-experiment", "ablation", [png]) is None
    assert client.get_experiment_by_name("no-such-experiment") is None
    assert client.get_experiment_by_name("no-such-experiment/analysis") is None


# --- notebooks ------------------------------------------------------------------------------


def execute(
    notebook: str, uri: str, experiment: str, output_dir: Path, kernel: str, tmp_path: Path
) -> nbformat.NotebookNode:
    executed = tmp_path / f"{notebook}.out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{notebook}.ipynb"),
        str(executed),
        kernel_name=kernel,
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        parameters={"tracking_uri": uri, "experiment": experiment, "output_dir": str(output_dir)},
    )
    return nbformat.read(executed, as_version=4)


def text_of(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/html", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def finite_table(path: Path, rows: list[str], columns: list[str]) -> pd.DataFrame:
    table = pd.read_csv(path, index_col=0)
    assert list(table.index) == rows
    assert set(columns) <= set(table.columns), sorted(set(columns) - set(table.columns))
    assert np.isfinite(table[columns].to_numpy(dtype=float)).all()
    return table


def test_ablation_notebook(store_copy: str, kernel: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    executed = execute("ablation", store_copy, EXPERIMENT, out, kernel, tmp_path)
    finite_table(out / "ablation.csv", VARIANTS, ["n", *ABLATION_LABELS])
    assert {path.name for path in out.glob("*.png")} == {
        "ablation_metrics.png",
        "ablation_losses.png",
        "ablation_findings.png",
    }
    assert "**Findings:" in (out / "ablation.md").read_text()
    assert f"Experiment '{EXPERIMENT}'" in text_of(executed) and "+ CMC (OneR)" in text_of(executed)
    client = MlflowClient(tracking_uri=store_copy)
    assert not client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.`oner.analysis` LIKE '%'"
    )
    analysis_run = client.search_runs(
        [client.get_experiment_by_name(f"{EXPERIMENT}/analysis").experiment_id], "tags.`oner.analysis` = 'ablation'"
    )
    assert {item.path for item in client.list_artifacts(analysis_run[0].info.run_id, "analysis")} >= {
        "analysis/ablation_metrics.png"
    }


def test_modality_gap_notebook(store_copy: str, kernel: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    execute("modality_gap", store_copy, EXPERIMENT, out, kernel, tmp_path)
    finite_table(out / "modality_gap.csv", VARIANTS, ["n", "modality gap", "alignment"])
    assert {path.name for path in out.glob("*.png")} == {"modality_gap_curves.png", "tsne.png"}


def test_retrieval_notebook(store_copy: str, kernel: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    execute("retrieval", store_copy, EXPERIMENT, out, kernel, tmp_path)
    finite_table(
        out / "retrieval.csv", VARIANTS, ["n", "zero-shot TR@1", "zero-shot TR@10", "zero-shot IR@1", "zero-shot IR@10"]
    )


def test_transfer_notebook(store_copy: str, kernel: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    execute("transfer", store_copy, EXPERIMENT, out, kernel, tmp_path)
    columns = [
        f"{column} {metric}"
        for column in ("itc", "one tower", "two heads")
        for metric in ("n", "top-1", "TR@1", "IR@1")
    ]
    finite_table(out / "transfer.csv", ["shapes"], columns)


def test_a_notebook_without_runs_says_so_and_shows_the_paper(store_copy: str, kernel: str, tmp_path: Path) -> None:
    """retrieval.ipynb's default experiment (issue 5's retrieval_4m) has no runs in this store."""
    out = tmp_path / "out"
    text = text_of(execute("retrieval", store_copy, "oner-retrieval-4m", out, kernel, tmp_path))
    assert "No runs: experiment 'oner-retrieval-4m' does not exist" in text and "Uni-Perceiver" in text
    assert pd.read_csv(out / "retrieval.csv", index_col=0).empty


def test_notebooks_are_committed_without_outputs_and_paired_with_their_twins() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.get("outputs") and cell.get("execution_count") is None for cell in code), path
        assert (
            notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
            and notebook.metadata["kernelspec"]["name"] == "python3"
        )
        assert notebook.cells[1].metadata.get("tags") == ["parameters"]
        parameters = {line.split("=")[0].strip() for line in notebook.cells[1].source.splitlines() if "=" in line}
        assert {"tracking_uri", "experiment"} <= parameters, path
        twin = jupytext.read(path.with_suffix(".py"))
        assert [cell.source for cell in twin.cells] == [cell.source for cell in notebook.cells], (
            f"{path} and its .py twin differ"
        )
    assert {path.stem for path in NOTEBOOKS.glob("*.ipynb")} == {
        "ablation",
        "modality_gap",
        "retrieval",
        "transfer",
        "sweep",
    }
