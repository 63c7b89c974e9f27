"""Text padding left out of a CPU pass's token-wise work.

Captions are right-padded to `max_text_len`; the built-in ones fill 60% of its 20 positions. A
block's layer norms, QKV and output projections and MLP act on each token alone, so a CPU pass runs
them on the real tokens only, packed into [N, W]; attention alone unpacks them into the padded
[B, L] layout, where the padded keys are masked as before. A padded position never reaches a real
one (its key is masked and its own output is not read), so the real tokens' outputs and every
gradient are the padded pass's, up to float rounding: this changes the cost, not the maths. The
built-in ablation's steps take 1.16-1.30x less time with it at one thread (docs/cost.md).

Only where the saving is sure: a CPU pass short enough for plain-product attention
(`attention.uses_plain_products`), with text padding, eager blocks (a compiled block keeps its own
graph) and no active drop path (timm's draws one value per row, which packed rows do not have).
GPUs keep the padded pass: finding the real tokens reads the mask on the host, and the varying token
count would recompile `train.compile`'s graphs.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from oner_lab.model.attention import TowerAttention, uses_plain_products


def packs(x: torch.Tensor, text_mask: torch.Tensor | None, blocks: nn.ModuleList, drop_path: bool) -> bool:
    """Whether the pass over `x` [B, L, W] runs packed (see the module docstring)."""
    return (
        text_mask is not None
        and uses_plain_products(x)
        and not drop_path
        and not any(getattr(block, "_compiled_call_impl", None) is not None for block in blocks)
        and not bool(text_mask.all())
    )


def real_positions(text_mask: torch.Tensor, leading: int) -> torch.Tensor:
    """Flat indices into [B * L] of the real tokens: the `leading` [CLS] and image positions of every
    row, then its caption's tokens (True in `text_mask` [B, Nt])."""
    keep = torch.ones(text_mask.shape[0], leading, dtype=torch.bool, device=text_mask.device)
    return torch.cat([keep, text_mask.bool()], dim=1).reshape(-1).nonzero().squeeze(1)


def pack(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, L, C] -> [N, C]: the positions `index` names."""
    return x.reshape(-1, x.shape[-1]).index_select(0, index)


def unpack(x: torch.Tensor, index: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """[N, C] -> [B, L, C], zeros at the padded positions."""
    return x.new_zeros(batch * length, x.shape[-1]).index_copy(0, index, x).view(batch, length, -1)


def packed_block(
    block: Block, x: torch.Tensor, index: torch.Tensor, batch: int, length: int, mask: torch.Tensor
) -> torch.Tensor:
    """timm's `Block.forward` (with `TowerAttention`'s plain products) on packed tokens [N, W]."""
    attn: TowerAttention = block.attn
    out = pack(attn.attend(unpack(attn.qkv(block.norm1(x)), index, batch, length), mask), index)
    x = x + block.drop_path1(block.ls1(attn.project_out(out)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
