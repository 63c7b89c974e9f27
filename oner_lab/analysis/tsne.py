"""The paper's t-SNE figure: image, text and image+text embeddings of the eval set, per variant,
at an early and at the final step (the paper shows 4 and 40 of 40 epochs).

Drawn from tracking alone: every run logs a fixed sample of its eval-set embeddings at a tenth of
training and at the end (MLflow artifacts `embeddings/early.npz` and `embeddings/final.npz`, written
by the trainer; the format and the [reading] on the two-head model's joint view are in
`oner_lab.embedding_sample`). No model is rebuilt and no data is read here.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from oner_lab import tracking
from oner_lab.analysis.figures import message_figure
from oner_lab.analysis.selection import select_runs
from oner_lab.embedding_sample import ARTIFACT_DIR, EARLY, FINAL, EmbeddingSample

MODALITY_COLORS = {"image": "#1f48d6", "text": "#ff8c1a", "image+text": "#2ca02c"}  # the paper's figure
MAX_POINTS = 200
"""Eval images per panel (each gives an image, a text and an image+text point)."""


@dataclass
class Embeddings:
    """L2-normalised embeddings [N, D] of N eval images, their first captions, and both together."""

    label: str
    image: np.ndarray
    text: np.ndarray
    joint: np.ndarray


class NoEmbeddings(FileNotFoundError):
    """The run logged no embedding sample (made before runs logged one, or its eval sets hold no captions)."""


def logged_samples(tracking_uri: str, run_id: str) -> dict[str, EmbeddingSample]:
    """The run's logged embedding samples by when they were taken (`early`, `final`)."""
    client = tracking.connect(tracking_uri)
    listed = {
        Path(item.path).name for item in tracking.retry_locked(lambda: client.list_artifacts(run_id, ARTIFACT_DIR))
    }
    samples = {}
    with tempfile.TemporaryDirectory(prefix="oner-embeddings-") as target:
        for when in (EARLY, FINAL):
            if f"{when}.npz" in listed:
                path = tracking.retry_locked(
                    lambda when=when: client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{when}.npz", target)
                )
                samples[when] = EmbeddingSample.load(Path(path))
    return samples


def run_embeddings(tracking_uri: str, run: pd.Series, *, max_points: int = MAX_POINTS) -> list[Embeddings]:
    """The early and final panels of one run (the first `max_points` sampled images of each)."""
    samples = logged_samples(tracking_uri, run["run_id"])
    if FINAL not in samples:
        raise NoEmbeddings(
            f"no artifact {ARTIFACT_DIR}/{FINAL}.npz (a run made before runs logged it, or no retrieval eval set)"
        )
    panels = []
    for when, sample in samples.items():
        label = f"step {sample.step}" + (" (final)" if when == FINAL else "")
        cut = slice(0, max_points)
        panels.append(Embeddings(label, sample.image[cut], sample.text[cut], sample.joint[cut]))
    return panels


def tsne_points(embeddings: Embeddings, seed: int = 0) -> pd.DataFrame:
    """2-D t-SNE of the three modalities together: columns x, y, modality."""
    stacked = np.concatenate([embeddings.image, embeddings.text, embeddings.joint])
    perplexity = min(30.0, (len(stacked) - 1) / 3)
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(stacked)
    modality = np.repeat(list(MODALITY_COLORS), len(embeddings.image))
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "modality": modality})


def tsne_figure(tracking_uri: str, runs: pd.DataFrame, *, max_points: int = MAX_POINTS) -> Figure:
    """A row per variant (its lowest seed), columns early and final step, as the paper's figure.

    A run that logged no embedding sample gets a panel saying why instead of a plot.
    """
    chosen = select_runs(runs).runs
    if chosen.empty:
        return message_figure(f"No FINISHED run of {runs.attrs.get('experiment')!r} to embed.")
    picked = chosen.sort_values("seed", kind="stable").groupby("row", sort=False).head(1)
    picked = picked.set_index("row").loc[list(dict.fromkeys(chosen["row"]))].reset_index()
    figure, axes = plt.subplots(len(picked), 2, figsize=(8, 3.6 * len(picked)), squeeze=False, layout="constrained")
    legend = True
    for (_, run), row_axes in zip(picked.iterrows(), axes):
        try:
            panels = run_embeddings(tracking_uri, run, max_points=max_points)
        except NoEmbeddings as error:
            panels = []
            for axis in row_axes:
                axis.axis("off")
                axis.text(0.5, 0.5, f"{run['run_name']}: {error}", ha="center", va="center", wrap=True, fontsize=8)
        for axis, embeddings in zip(row_axes[-len(panels) :] if panels else [], panels):
            sns.scatterplot(
                data=tsne_points(embeddings),
                x="x",
                y="y",
                hue="modality",
                palette=MODALITY_COLORS,
                s=12,
                linewidth=0,
                ax=axis,
                legend=legend,
            )
            legend = False
            axis.set(title=f"{run['run_name']}: {embeddings.label}", xticks=[], yticks=[], xlabel="", ylabel="")
        if len(panels) == 1:
            row_axes[0].axis("off")
            row_axes[0].text(
                0.5, 0.5, f"{run['run_name']}: no early sample logged", ha="center", va="center", fontsize=8
            )
    figure.suptitle(f"{runs.attrs.get('experiment')}: t-SNE of eval-set embeddings (image, text, image+text)")
    return figure
