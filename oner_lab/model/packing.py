"""Positions nothing reads left out of a CPU pass's token-wise work.

Two kinds, both cutting cost and not maths:
- Text padding. Captions are right-padded to `max_text_len`; the built-in ones fill 60% of its 20
  positions. A block's layer norms, QKV and output projections and MLP act on each token alone, so a
  CPU pass runs them on the real tokens only, packed into [N, W]; attention alone unpacks them into
  the padded [B, L] layout, where the padded keys are masked as before. A padded position never
  reaches a real one (its key is masked and its own output is not read).
- The last block's unread rows. A pass's caller reads the final states of a few positions only: a
  clean or momentum pass its [CLS], MIM its masked patches, MLM its chosen tokens (`OneTower.forward`'s
  `reads`). Every position still feeds the last block's keys and values, but only the read ones need
  its attention output, output projection and MLP, which are most of a block's work.
The read positions' outputs and every gradient are the full pass's, up to float rounding. At one
thread the built-in ablation's steps take 1.16-1.30x less time with the padding left out, and a
further 1.06-1.19x with the last block's unread rows left out too (docs/cost.md).

Only where the saving is sure: a CPU pass short enough for plain-product attention
(`attention.uses_plain_products`), eager blocks (a compiled block keeps its own graph) and no active
drop path (timm's draws one value per row, which packed rows do not have). GPUs keep the padded pass:
finding the positions reads masks on the host, and a varying token count would recompile
`train.compile`'s graphs.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from oner_lab.model.attention import TowerAttention, uses_plain_products


def packs(
    x: torch.Tensor,
    text_mask: torch.Tensor | None,
    reads: torch.Tensor | None,
    blocks: nn.ModuleList,
    drop_path: bool,
) -> bool:
    """Whether the pass over `x` [B, L, W] runs packed (see the module docstring): on the CPU path, with
    text padding to leave out or positions (`reads` [B, L], True = read) that nothing reads."""
    return (
        uses_plain_products(x)
        and not drop_path
        and not any(getattr(block, "_compiled_call_impl", None) is not None for block in blocks)
        and ((text_mask is not None and not bool(text_mask.all())) or (reads is not None and not bool(reads.all())))
    )


def real_positions(text_mask: torch.Tensor | None, leading: int) -> torch.Tensor | None:
    """Flat indices into [B * L] of the real tokens: the `leading` [CLS] and image positions of every
    row, then its caption's tokens (True in `text_mask` [B, Nt]). None where every position is real
    (no text, or no padding): the packed layout is then the padded one, flattened, at no copy."""
    if text_mask is None or bool(text_mask.all()):
        return None
    keep = torch.ones(text_mask.shape[0], leading, dtype=torch.bool, device=text_mask.device)
    return torch.cat([keep, text_mask.bool()], dim=1).reshape(-1).nonzero().squeeze(1)


def read_rows(reads: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Which packed rows (positions `index`) are read: indices into [N] of the True entries of `reads` [B, L]."""
    flat = reads.reshape(-1)
    return (flat if index is None else flat.index_select(0, index)).nonzero().squeeze(1)


def pack(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """[B, L, C] -> [N, C]: the positions `index` names (all of them, as a view, for None)."""
    flat = x.reshape(-1, x.shape[-1])
    return flat if index is None else flat.index_select(0, index)


def unpack(x: torch.Tensor, index: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
    """[N, C] -> [B, L, C], zeros at the positions `index` leaves out (a view for None)."""
    if index is None:
        return x.view(batch, length, -1)
    return x.new_zeros(batch * length, x.shape[-1]).index_copy(0, index, x).view(batch, length, -1)


def packed_block(
    block: Block,
    x: torch.Tensor,
    index: torch.Tensor | None,
    batch: int,
    length: int,
    mask: torch.Tensor | None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """timm's `Block.forward` (with `TowerAttention`'s plain products) on packed tokens [N, W] at
    positions `index`. With `rows` (indices into [N]) every token still gives its key and value, but
    only those rows are attended from, projected and passed through the MLP: [len(rows), W] out."""
    attn: TowerAttention = block.attn
    attended = attn.attend(unpack(attn.qkv(block.norm1(x)), index, batch, length), mask)
    if rows is not None:
        x, index = x.index_select(0, rows), rows if index is None else index.index_select(0, rows)
    x = x + block.drop_path1(block.ls1(attn.project_out(pack(attended, index))))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
