"""The momentum (EMA) copy of the tower and its cosine momentum schedule (MoCo v3)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_at(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine schedule from `start` at step 0 to `end` at `total_steps`."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def momentum_copy(model: nn.Module) -> nn.Module:
    """A frozen copy that only `ema_update` changes; it never receives gradients."""
    target = copy.deepcopy(model)
    for param in target.parameters():
        param.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target = momentum * target + (1 - momentum) * online, for every parameter."""
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1 - momentum)
