"""What the data layer hands the trainer and the evaluator: plain tensors in dataclasses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from oner_lab.host_copy import to_device

if TYPE_CHECKING:
    from .tokenizer import TextTokenizer


@dataclass
class Batch:
    """One training batch (or one rank's rows of it).

    images / images_target: [B, 3, H, W] float32, normalised (mean 0.5, std 0.5); two independently
    augmented views of the same images (online side, momentum side).
    text_ids: [B, L] int64 caption tokens without [CLS], ending with [SEP], right-padded with pad_id.
    text_mask: [B, L] bool, True for real tokens including [SEP].
    """

    images: torch.Tensor
    images_target: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: to_device(getattr(self, f.name), device) for f in fields(self)})


@dataclass
class RetrievalSet:
    """COCO-style zero-shot retrieval: each image has several captions (images with the eval transform)."""

    task: ClassVar[str] = "retrieval"  # scored by oner_lab/evaluators/retrieval.py

    name: str
    images: torch.Tensor  # [N, 3, H, W] uint8 (evaluate normalises each batch: 4x less memory than float32)
    text_ids: torch.Tensor  # [M, L] int64
    text_mask: torch.Tensor  # [M, L] bool
    caption_image: torch.Tensor  # [M] int64: index of each caption's image
    captions: list[str]


@dataclass
class ClassificationSet:
    """ImageNet-style zero-shot classification with prompt ensembles."""

    task: ClassVar[str] = "classification"  # scored by oner_lab/evaluators/classification.py

    name: str
    images: torch.Tensor | Sequence[torch.Tensor]  # [N, 3, H, W] uint8, in memory or decoded per slice (FileImages)
    labels: torch.Tensor  # [N] int64
    class_names: list[str]
    templates: list[str]  # each holds "{}" where the class name goes
    prompt_ids: torch.Tensor  # [C * P, L] int64: every template filled with every class name, class-major
    prompt_mask: torch.Tensor  # [C * P, L] bool
    prompt_class: torch.Tensor  # [C * P] int64


def normalise(images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [.., 3, H, W] -> float32 with mean 0.5 and std 0.5, i.e. values in [-1, 1] (written into `out` if given).

    On the CPU the float copy is allocated by numpy (`cpu_batch_buffer`).
    """
    if out is None and images.device.type == "cpu" and images.dtype != torch.float32:
        out = cpu_batch_buffer(images.shape, torch.float32)
    if out is not None:
        images = out.copy_(images)
    return images.float().mul_(2 / 255).sub_(1)


def cpu_batch_buffer(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor allocated by numpy, which asks Linux for transparent huge pages for
    arrays of 4 MB and more; torch's allocator does not (unless THP_MEM_ALLOC_ENABLE=1 is set before
    it starts), and the page faults of a fresh 224 px float batch then cost twice the conversion itself.
    """
    return torch.from_numpy(np.empty(tuple(shape), torch.empty(0, dtype=dtype).numpy().dtype))


def retrieval_set(
    name: str,
    images: list[np.ndarray],
    captions_per_image: list[list[str]],
    tokenizer: "TextTokenizer",
    max_text_len: int,
) -> RetrievalSet:
    """A COCO-style set from decoded uint8 images ([3, H, W] arrays) and each image's captions."""
    captions = [caption for image_captions in captions_per_image for caption in image_captions]
    per_image = torch.tensor([len(image_captions) for image_captions in captions_per_image])
    text_ids, text_mask = tokenizer.encode(captions, max_text_len)
    pixels = torch.from_numpy(np.stack(images))  # uint8: evaluate normalises per batch
    caption_image = torch.repeat_interleave(torch.arange(len(images)), per_image)
    return RetrievalSet(name, pixels, text_ids, text_mask, caption_image, captions)
