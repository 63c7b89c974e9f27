"""Input corruption for the masked terms: BERT-style text masking and random patch masking."""

from __future__ import annotations

import torch

IGNORE = -100


def mask_text(
    ids: torch.Tensor,
    special_ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption of `prob` of the ordinary tokens; labels are IGNORE elsewhere.

    At least one token per batch is always chosen so the loss is never an empty mean.
    """
    candidates = ~torch.isin(ids, special_ids.to(ids.device))
    draw = torch.rand(ids.shape, generator=generator).to(ids.device)
    chosen = candidates & (draw < prob)
    if not chosen.any() and candidates.any():
        first = candidates.flatten().nonzero()[0]
        chosen.view(-1)[first] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    action = torch.rand(ids.shape, generator=generator).to(ids.device)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator).to(ids.device)
    corrupted = torch.where(chosen & (action < 0.8), torch.full_like(ids, mask_id), ids)
    corrupted = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, corrupted)
    return corrupted, labels


def mask_patches(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """[B, Np] bool with exactly round(ratio * Np) True per row (at least one)."""
    count = max(1, round(ratio * num_patches))
    noise = torch.rand(batch, num_patches, generator=generator)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return ranks < count


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, Np, p*p*3] in PatchEmbed's row-major patch order."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
