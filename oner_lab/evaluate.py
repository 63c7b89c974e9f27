"""Zero-shot evaluation: COCO-protocol retrieval, prompt-ensembled classification, modality gap.

All scoring is cosine similarity computed in float32, whatever dtype the encoders return.

Ranking rule (used for recall and top-k alike): an item's rank is the number of
non-ground-truth candidates scoring at least as high as the best ground truth, and it is a
hit at K when rank < K. Ties therefore count against the model, so a collapsed encoder (all
scores equal) gets chance-or-worse recall instead of a perfect one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

# Elements of a score chunk held at once (float32 scores plus a bool mask): bounds memory
# to tens of MB whatever the size (COCO: 5k x 25k) instead of masks of the full matrix.
_CHUNK_ELEMENTS = 1 << 22


def _ranks(scores: Tensor, gt_of_row: Callable[[Tensor], Tensor]) -> Tensor:
    """Rank of the best ground truth in each row of `scores`, chunked over rows.

    `gt_of_row(rows)` returns the bool ground-truth mask [len(rows), n_candidates].
    """
    chunk = max(1, _CHUNK_ELEMENTS // max(1, scores.shape[1]))
    ranks = []
    for start in range(0, scores.shape[0], chunk):
        block = scores[start : start + chunk].float()
        if not torch.isfinite(block).all():
            raise ValueError("similarity/logit matrix has non-finite entries (NaN or inf embeddings?)")
        is_gt = gt_of_row(torch.arange(start, start + block.shape[0], device=scores.device))
        best_gt = block.masked_fill(~is_gt, float("-inf")).amax(dim=1, keepdim=True)
        ranks.append(((block >= best_gt) & ~is_gt).sum(dim=1))
    return torch.cat(ranks)


def _recall(ranks: Tensor, ks: tuple[int, ...], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": 100.0 * (ranks < k).sum().item() / ranks.numel() for k in ks}


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks={ks!r}: expected a non-empty sequence of positive ints")
    return ks


def _check_ids(ids: Tensor, n: int, what: str) -> None:
    if ids.numel() == 0 or ids.min() < 0 or ids.max() >= n:
        lo_hi = f"[{ids.min()}, {ids.max()}]" if ids.numel() else "nothing"
        raise ValueError(f"{what} must be non-empty with values in [0, {n}), got {lo_hi}")


def retrieval_recall(sim: Tensor, caption_image: Tensor, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """COCO-protocol recall in % from `sim` [N_images, M_captions].

    Text retrieval (tr_rK): an image is a hit if ANY of its captions ranks within top K.
    Image retrieval (ir_rK): each caption has the one image `caption_image[m]`.
    """
    if sim.dim() != 2 or caption_image.shape != sim.shape[1:]:
        raise ValueError(
            f"sim {tuple(sim.shape)} and caption_image {tuple(caption_image.shape)}: "
            "expected sim [N_images, M_captions] and caption_image [M_captions]"
        )
    ks, n_images = _check_ks(ks), sim.shape[0]
    caption_image = caption_image.to(sim.device, torch.long)
    _check_ids(caption_image, n_images, "caption_image")
    uncaptioned = (torch.bincount(caption_image, minlength=n_images) == 0).nonzero().flatten()
    if uncaptioned.numel():
        raise ValueError(
            f"images {uncaptioned[:5].tolist()} (of {uncaptioned.numel()}) have no caption in "
            "caption_image; text retrieval needs at least one per image"
        )
    image_ids = torch.arange(n_images, device=sim.device)
    tr = _ranks(sim, lambda rows: caption_image[None, :] == rows[:, None])
    ir = _ranks(sim.T, lambda rows: image_ids[None, :] == caption_image[rows, None])
    metrics = _recall(tr, ks, "tr_r") | _recall(ir, ks, "ir_r")
    return metrics | {"rsum": sum(metrics.values())}


def classification_accuracy(logits: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in % from `logits` [N, C] and integer `labels` [N]."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: expected [N, C] and [N]")
    labels = labels.to(logits.device, torch.long)
    _check_ids(labels, logits.shape[1], "labels")
    classes = torch.arange(logits.shape[1], device=logits.device)
    ranks = _ranks(logits, lambda rows: classes[None, :] == labels[rows, None])
    return _recall(ranks, _check_ks(ks), "top")


def class_embeddings(prompt_emb: Tensor, prompt_class: Tensor, num_classes: int) -> Tensor:
    """Prompt ensemble [num_classes, D]: normalise each prompt, average per class, renormalise."""
    prompt_class = prompt_class.to(prompt_emb.device, torch.long)
    _check_ids(prompt_class, num_classes, "prompt_class")
    counts = torch.bincount(prompt_class, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"prompt_class gives no prompt to classes {(counts == 0).nonzero().flatten().tolist()}")
    normed = F.normalize(prompt_emb.float(), dim=-1)
    summed = normed.new_zeros(num_classes, normed.shape[1]).index_add_(0, prompt_class, normed)
    return F.normalize(summed / counts[:, None], dim=-1)


def scores_in_fp32(device: torch.device | str) -> torch.autocast:
    """Encoders run under the caller's autocast; similarities are scored in fp32 with autocast off,
    because bf16 scores tie often enough to bias recall down (ties count against the model)."""
    return torch.autocast(torch.device(device).type, enabled=False)


def modality_gap(image_emb: Tensor, text_emb: Tensor) -> float:
    """||mean normalised image emb - mean normalised text emb||_2 (Liang et al. 2022)."""
    gap = F.normalize(image_emb.float(), dim=-1).mean(0) - F.normalize(text_emb.float(), dim=-1).mean(0)
    return gap.norm().item()


def alignment(image_emb: Tensor, text_emb: Tensor, caption_image: Tensor) -> float:
    """Mean cosine similarity of matched (image, caption) pairs."""
    image = F.normalize(image_emb.float(), dim=-1)[caption_image.to(image_emb.device, torch.long)]
    return (image * F.normalize(text_emb.float(), dim=-1)).sum(-1).mean().item()


def pixels(images: Tensor) -> Tensor:
    """Eval images as the encoder takes them: sets hold uint8 (a quarter of float32's memory),
    normalised here per batch exactly as training normalises (x * 2/255 - 1); float input passes."""
    return images.float().mul_(2 / 255).sub_(1) if images.dtype == torch.uint8 else images


def encode(encoder: Callable[..., Tensor], inputs: tuple[Tensor, ...], batch_size: int, device: torch.device) -> Tensor:
    """Run `encoder` over `inputs` in batches on `device`; float32, L2-normalised. uint8 inputs
    (images) are normalised per batch on `device`; `inputs` may decode each slice on read (FileImages)."""
    out = [
        encoder(*(pixels(x[i : i + batch_size].to(device)) for x in inputs)).float()
        for i in range(0, len(inputs[0]), batch_size)
    ]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def evaluate(
    encode_image: Callable[[Tensor], Tensor],
    encode_text: Callable[[Tensor, Tensor], Tensor],
    eval_sets: Mapping[str, object],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Zero-shot metrics keyed "eval/<name>/<metric>", <name> being the key in `eval_sets`.

    Each set is scored by the task it names (`data.task`: retrieval gives tr_r1..ir_r10, rsum,
    modality_gap, alignment; classification top1, top5; see oner_lab/evaluators). The caller sets
    eval mode/autocast.
    """
    from oner_lab.evaluators import task_of  # the tasks import this module's math

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected a positive int")
    device = torch.device(device)
    results: dict[str, float] = {}
    for name, data in eval_sets.items():
        try:
            task = task_of(data)
        except TypeError as error:
            raise TypeError(f"eval set {name!r}: {error}") from None
        metrics = task.score(encode_image, encode_text, data, batch_size, device)
        results |= {f"eval/{name}/{metric}": value for metric, value in metrics.items()}
    return results
