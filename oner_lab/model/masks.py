"""Attention masks for each view of the [CLS, image, text] sequence.

A view is "I", "T", "I|T", "T|I" or "I,T". In F(A|B) the CLS and A tokens attend to
A and B while the context B attends only to B (docs/paper.md [reading]); "I,T" is full
attention. Text padding is never attended to.
"""

from __future__ import annotations

import torch

VIEWS = ("I", "T", "I|T", "T|I", "I,T")


def attention_mask(view: str, num_image: int, text_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean mask [B, 1, L, L] (True = may attend) for SDPA, or None when nothing is masked.

    Sequence layout is [CLS, image tokens (num_image), text tokens (text_mask.shape[1])];
    views without a modality simply have zero tokens of it.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; allowed: {', '.join(VIEWS)}")
    has_text = text_mask is not None and text_mask.shape[1] > 0
    if not has_text:
        return None  # image only: full attention, lets SDPA pick flash kernels
    batch, num_text = text_mask.shape
    device = text_mask.device
    cls_and_image = torch.ones(batch, 1 + num_image, dtype=torch.bool, device=device)
    key_ok = torch.cat([cls_and_image, text_mask.bool()], dim=1)  # [B, L]
    length = key_ok.shape[1]
    allowed = key_ok[:, None, :].expand(batch, length, length).clone()
    is_image = torch.zeros(length, dtype=torch.bool, device=device)
    is_image[1 : 1 + num_image] = True
    is_text = torch.zeros(length, dtype=torch.bool, device=device)
    is_text[1 + num_image :] = True
    # context rows see only context columns; rows chosen by a slice, not a boolean index, which would
    # read the mask back on the host (a GPU sync in every joint pass)
    rows, context = {"I|T": (slice(1 + num_image, length), is_text), "T|I": (slice(1, 1 + num_image), is_image)}.get(
        view, (None, None)
    )
    if context is not None:
        allowed[:, rows, :] &= context[None, None, :]
    # every row keeps itself, so padded text rows never see an all-masked row (NaN in SDPA)
    allowed |= torch.eye(length, dtype=torch.bool, device=device)[None]
    return allowed[:, None]
