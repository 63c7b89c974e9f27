"""Symmetric InfoNCE over in-batch negatives, gathered across ranks with gradients."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows concatenated (differentiable), and where this rank's rows start."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return torch.cat(all_gather(x), dim=0), dist.get_rank() * x.shape[0]


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off where it exists (cuda, cpu); tensors on `meta` (counting FLOPs) have none."""
    return torch.autocast(device_type, enabled=False) if device_type in ("cuda", "cpu") else contextlib.nullcontext()


def info_nce(left: torch.Tensor, right: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of left->right and right->left cross-entropy; row i of `left` matches row i of `right`.

    Under DDP each rank scores its own rows against the global batch; DDP's gradient
    averaging then makes the update equal to the single-process loss on that global batch.
    """
    all_left, offset = gather_with_grad(left)
    all_right, _ = gather_with_grad(right)
    labels = torch.arange(left.shape[0], device=left.device) + offset
    # fp32 logits even under bf16 autocast: `.float()` alone is undone by autocast's matmul cast.
    with _autocast_off(left.device.type):
        scale = logit_scale.float().exp()
        logits_lr = scale * left.float() @ all_right.float().T
        logits_rl = scale * right.float() @ all_left.float().T
        return (F.cross_entropy(logits_lr, labels) + F.cross_entropy(logits_rl, labels)) / 2


def mix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a + b) / 2, renormalised: the poster's "+" of two global tokens."""
    return F.normalize((a + b) / 2, dim=-1)
