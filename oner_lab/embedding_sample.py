"""The embedding sample a run logs for the paper's t-SNE figure, so analysis never rebuilds a model.

At a tenth of training (the paper compares 4 of 40 epochs with the end) and after the final
evaluation, the trainer embeds a fixed sample of its first retrieval eval set: the same
`SAMPLE_SIZE` images for every run (drawn with `SAMPLE_SEED`, not the run's seed, so runs are
comparable), each with its first caption, as three modalities: image F(I), text F(T) and
image+text F(I,T|I,T). The joint view goes through the shared head; a model with one head per
modality has no joint head, so its joint view goes through the image head ([reading]: the paper
does not say which head its two-head model projects image+text with).

The file is an `.npz` readable with `allow_pickle=False`: `embeddings` [3N, D] float32
(L2-normalised), `modality` [3N] ("image", "text", "image+text"), `item` [3N] (the image's index
in the eval set), `step`, `eval_set`. It is logged as MLflow artifact `embeddings/<when>.npz`
(`when`: early, final).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ARTIFACT_DIR = "embeddings"
EARLY, FINAL = "early", "final"
MODALITIES = ("image", "text", "image+text")
SAMPLE_SIZE = 200
SAMPLE_SEED = 0
BATCH = 256


@dataclass(frozen=True)
class EmbeddingSample:
    """One logged sample: per modality an [N, D] array of the same N eval images, in `item` order."""

    step: int
    eval_set: str
    item: np.ndarray
    image: np.ndarray
    text: np.ndarray
    joint: np.ndarray

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        n = len(self.item)
        with path.open("wb") as file:
            np.savez(
                file,
                embeddings=np.concatenate([self.image, self.text, self.joint]).astype(np.float32),
                modality=np.repeat(np.array(MODALITIES), n),
                item=np.tile(self.item, len(MODALITIES)),
                step=np.array(self.step),
                eval_set=np.array(self.eval_set),
            )
        return path

    @classmethod
    def load(cls, path: Path) -> EmbeddingSample:
        with np.load(path, allow_pickle=False) as data:
            embeddings, modality, item = data["embeddings"], data["modality"], data["item"]
            parts = [embeddings[modality == name] for name in MODALITIES]
            return cls(int(data["step"]), str(data["eval_set"]), item[modality == MODALITIES[0]], *parts)


def sample_items(n_images: int, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> np.ndarray:
    """The sorted indices of the sampled eval images: the same for every run of the same eval set."""
    if n_images <= size:
        return np.arange(n_images)
    return np.sort(np.random.default_rng(seed).choice(n_images, size, replace=False))


def retrieval_set(eval_sets: dict[str, Any]) -> tuple[str, Any] | None:
    """The first eval set with captions (images and texts to embed), or None."""
    return next(((name, data) for name, data in eval_sets.items() if hasattr(data, "caption_image")), None)


@torch.no_grad()
def embed(model: Any, name: str, eval_set: Any, step: int, device: torch.device) -> EmbeddingSample:
    """Embeds the sample with `model` (a `OneTower`, in eval mode, under the caller's autocast)."""
    items = sample_items(len(eval_set.images))
    chosen = torch.from_numpy(items)
    first_caption = torch.searchsorted(eval_set.caption_image, chosen)
    images = eval_set.images[chosen]
    text_ids, text_mask = eval_set.text_ids[first_caption], eval_set.text_mask[first_caption]
    joint_head = "joint" if "shared" in model.heads else "image"
    parts: list[list[torch.Tensor]] = [[], [], []]
    for start in range(0, len(items), BATCH):
        chunk = slice(start, start + BATCH)
        image, ids, mask = images[chunk].to(device), text_ids[chunk].to(device), text_mask[chunk].to(device)
        parts[0].append(model.encode_image(image))
        parts[1].append(model.encode_text(ids, mask))
        parts[2].append(model.project(model(view="I,T", images=image, text_ids=ids, text_mask=mask).cls, joint_head))
    image, text, joint = (F.normalize(torch.cat(part).float(), dim=-1).cpu().numpy() for part in parts)
    return EmbeddingSample(step, name, items, image, text, joint)
