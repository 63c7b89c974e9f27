"""Input corruption for the masked terms: BERT-style text masking and random patch masking."""

from __future__ import annotations

import torch

from oner_lab.host_copy import to_device

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
    candidates = ~torch.isin(ids, to_device(special_ids, ids.device))  # a no-op for the objective's own copy
    draw = to_device(torch.rand(ids.shape, generator=generator), ids.device)
    chosen = candidates & (draw < prob)
    # none drawn: the first candidate, decided on the device (no host sync); argmax returns the first maximum
    flat = candidates.reshape(-1)
    if flat.numel():
        first = torch.zeros_like(flat).scatter_(0, flat.to(torch.uint8).argmax().reshape(1), True) & flat
        chosen = chosen | (first.view_as(chosen) & ~chosen.any())
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    action = to_device(torch.rand(ids.shape, generator=generator), ids.device)
    random_ids = to_device(torch.randint(vocab_size, ids.shape, generator=generator), ids.device)
    corrupted = torch.where(chosen & (action < 0.8), torch.full_like(ids, mask_id), ids)
    corrupted = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, corrupted)
    return corrupted, labels


def masked_count(num_patches: int, ratio: float) -> int:
    """Patches `mask_patches` masks in every row."""
    return max(1, round(ratio * num_patches))


def mask_patches(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """[B, Np] bool with exactly `masked_count` True per row (at least one)."""
    count = masked_count(num_patches, ratio)
    noise = torch.rand(batch, num_patches, generator=generator)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return ranks < count


def take_masked(x: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """`x[mask]` for a [B, N] mask with exactly `count` True per row, as a gather: the same rows in
    the same order, without the host sync that boolean indexing costs on a GPU (it must learn the
    number of rows before it can allocate them)."""
    positions = mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :count].sort(dim=1).values
    picked = x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return picked.reshape(-1, x.shape[-1])
