"""The paper's t-SNE figure: image, text and image+text embeddings of the eval set, per variant,
at an early and at the final checkpoint (the paper shows 4 and 40 of 40 epochs).

Checkpoints are read from each run's directory (tag `oner.run_dir`): the final one is
`checkpoints/last.pt`; the early one is `checkpoints/early.pt` when the trainer kept one, else
the run's initial weights (step 0), rebuilt from its seed exactly as the trainer builds them.
Image+text is the tower's joint view F(I,T|I,T) through the shared head; a model with one head
per modality has no joint head, so its joint view goes through the image head ([reading]: the
paper does not say which head its two-head model projects image+text with).

Eval data come back through `oner_lab.data.prepare` with the run's own data config and the
tokenizer the run logged as an artifact; a relative `data.cache_dir` is read relative to
`data_root` (default: the folder of the SQLite store, where `python -m oner_lab.run` wrote both).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from oner_lab import checkpoint, tracking
from oner_lab.analysis.figures import message_figure
from oner_lab.analysis.selection import select_runs
from oner_lab.data import prepare
from oner_lab.evaluate import pixels
from oner_lab.model import OneTower, TowerConfig
from oner_lab.spec.config import RunConfig

FINAL_CHECKPOINT = "last.pt"
EARLY_CHECKPOINT = "early.pt"
MODALITY_COLORS = {"image": "#1f48d6", "text": "#ff8c1a", "image+text": "#2ca02c"}  # the paper's figure
MAX_POINTS = 200
"""Eval images per panel (each gives an image, a text and an image+text point)."""
BATCH = 256


@dataclass
class Embeddings:
    """L2-normalised embeddings [N, D] of N eval images, their first captions, and both together."""

    label: str
    image: np.ndarray
    text: np.ndarray
    joint: np.ndarray


def model_from_state(state: dict) -> OneTower:
    model = OneTower(TowerConfig(**state["tower"]))
    model.load_state_dict(state["model"])
    return model.eval()


def _initial_model(state: dict) -> OneTower:
    """The weights the trainer starts from: `torch.manual_seed(train.seed)`, then `OneTower(tower)`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(state["config"]["train"]["seed"])
        return OneTower(TowerConfig(**state["tower"])).eval()


def checkpoint_models(run_dir: Path, final: dict) -> list[tuple[str, OneTower]]:
    """[(label, model)] at the early checkpoint (or step 0) and at the final one (`final`, loaded)."""
    early = checkpoint.load(run_dir / "checkpoints" / EARLY_CHECKPOINT)
    first = ("step 0 (initial weights)", _initial_model(final)) if early is None else (f"step {early['step']}", model_from_state(early))
    return [first, (f"step {final['step']} (final)", model_from_state(final))]


_EVAL_SETS: dict[str, object] = {}
"""Retrieval sets already read in this process, by data config and tokenizer content: the runs of
one experiment share them, and reading one means reading the whole training split too."""


def _digest(directory: Path) -> str:
    files = sorted(path for path in directory.rglob("*") if path.is_file())
    return hashlib.sha256(b"".join(path.name.encode() + path.read_bytes() for path in files)).hexdigest()


def _retrieval_set(data: dict, image_size: int, max_text_len: int, sets: list[str]):
    """The first retrieval eval set (it has captions) the config names, read once per data config."""
    tokenizer = data.get("tokenizer")
    key = json.dumps([{**data, "tokenizer": tokenizer and _digest(Path(tokenizer))}, image_size, max_text_len, sets], sort_keys=True)
    if key not in _EVAL_SETS:
        config = RunConfig.model_validate({"data": data}).data
        eval_sets = prepare(config, image_size, max_text_len, sets).eval_sets
        found = [eval_set for eval_set in eval_sets.values() if hasattr(eval_set, "caption_image")]
        if not found:
            raise ValueError(f"eval.sets {sets} holds no retrieval set (images with captions) to embed")
        _EVAL_SETS[key] = found[0]
    return _EVAL_SETS[key]


def eval_set_of(tracking_uri: str, run: pd.Series, state_config: dict, tower: dict, data_root: Path):
    """The run's first retrieval eval set, tokenised with the tokenizer the run logged (artifact `tokenizer`)."""
    data = dict(state_config["data"])
    if not Path(data["cache_dir"]).is_absolute():
        data["cache_dir"] = str(data_root / data["cache_dir"])
    sets = list(state_config["eval"]["sets"])
    client = tracking.connect(tracking_uri)
    logged = [item.path for item in tracking.retry_locked(lambda: client.list_artifacts(run["run_id"]))]
    if data.get("tokenizer") is not None or "tokenizer" not in logged:
        return _retrieval_set(data, tower["image_size"], tower["max_text_len"], sets)
    with tempfile.TemporaryDirectory(prefix="oner-tokenizer-") as target:
        data["tokenizer"] = tracking.retry_locked(lambda: client.download_artifacts(run["run_id"], "tokenizer", target))
        return _retrieval_set(data, tower["image_size"], tower["max_text_len"], sets)


@torch.no_grad()
def embed(model: OneTower, eval_set, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, text, image+text) embeddings of the first `max_points` images and their first captions."""
    count = min(max_points, len(eval_set.images))
    first_caption = torch.searchsorted(eval_set.caption_image, torch.arange(count))
    images = pixels(eval_set.images[:count])
    text_ids, text_mask = eval_set.text_ids[first_caption], eval_set.text_mask[first_caption]
    joint_head = "joint" if "shared" in model.heads else "image"
    parts: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, count, BATCH):
        chunk = slice(start, start + BATCH)
        parts[0].append(model.encode_image(images[chunk]))
        parts[1].append(model.encode_text(text_ids[chunk], text_mask[chunk]))
        joint = model(view="I,T", images=images[chunk], text_ids=text_ids[chunk], text_mask=text_mask[chunk]).cls
        parts[2].append(model.project(joint, joint_head))
    image, text, joint = (torch.cat(part).float().numpy() for part in parts)
    return image, text, joint


def run_embeddings(tracking_uri: str, run: pd.Series, *, data_root: Path, max_points: int = MAX_POINTS) -> list[Embeddings]:
    """Embeddings at the early and the final checkpoint of one run."""
    run_dir = Path(run["run_dir"])
    state = checkpoint.load(run_dir / "checkpoints" / FINAL_CHECKPOINT)
    if state is None:
        raise FileNotFoundError(f"no checkpoint at {run_dir / 'checkpoints' / FINAL_CHECKPOINT}")
    models = checkpoint_models(run_dir, state)
    eval_set = eval_set_of(tracking_uri, run, state["config"], state["tower"], data_root)
    return [Embeddings(label, *embed(model, eval_set, max_points)) for label, model in models]


def tsne_points(embeddings: Embeddings, seed: int = 0) -> pd.DataFrame:
    """2-D t-SNE of the three modalities together: columns x, y, modality."""
    stacked = np.concatenate([embeddings.image, embeddings.text, embeddings.joint])
    perplexity = min(30.0, (len(stacked) - 1) / 3)
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(stacked)
    modality = np.repeat(list(MODALITY_COLORS), len(embeddings.image))
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "modality": modality})


def default_data_root(tracking_uri: str) -> Path:
    """The SQLite store's folder (the run CLI's working folder by default), else the current one."""
    database = tracking.sqlite_path(tracking_uri)
    return database.resolve().parent if database is not None else Path.cwd()


def tsne_figure(
    tracking_uri: str, runs: pd.DataFrame, *, max_points: int = MAX_POINTS, data_root: str | Path | None = None
) -> Figure:
    """A row per variant (its lowest seed), columns early and final checkpoint, as the paper's figure.

    A run whose checkpoint or data cannot be read gets a panel saying why instead of a plot.
    """
    chosen = select_runs(runs).runs
    if chosen.empty:
        return message_figure(f"No FINISHED run of {runs.attrs.get('experiment')!r} to embed.")
    root = Path(data_root) if data_root is not None else default_data_root(tracking_uri)
    picked = chosen.sort_values("seed", kind="stable").groupby("row", sort=False).head(1)
    picked = picked.set_index("row").loc[list(dict.fromkeys(chosen["row"]))].reset_index()
    figure, axes = plt.subplots(len(picked), 2, figsize=(8, 3.6 * len(picked)), squeeze=False, layout="constrained")
    legend = True
    for (_, run), row_axes in zip(picked.iterrows(), axes):
        try:
            panels = run_embeddings(tracking_uri, run, data_root=root, max_points=max_points)
        except (FileNotFoundError, NotImplementedError, ValueError) as error:
            for axis in row_axes:
                axis.axis("off")
                axis.text(0.5, 0.5, f"{run['run_name']}: {error}", ha="center", va="center", wrap=True, fontsize=8)
            continue
        for axis, embeddings in zip(row_axes, panels):
            sns.scatterplot(data=tsne_points(embeddings), x="x", y="y", hue="modality", palette=MODALITY_COLORS,
                            s=12, linewidth=0, ax=axis, legend=legend)
            legend = False
            axis.set(title=f"{run['run_name']}: {embeddings.label}", xticks=[], yticks=[], xlabel="", ylabel="")
    figure.suptitle(f"{runs.attrs.get('experiment')}: t-SNE of eval-set embeddings (image, text, image+text)")
    return figure
