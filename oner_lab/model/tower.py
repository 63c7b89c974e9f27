"""The single tower: per-modality input embedders, one [CLS], shared timm blocks, heads.

No modality-type embeddings: the body and the (shared) head never learn which modality a
token came from, except through each embedder's own positional table (docs/paper.md [reading]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from oner_lab.model.attention import TowerAttention, uses_plain_products
from oner_lab.model.masks import attention_mask
from oner_lab.model.packing import pack, packed_block, packs, read_rows, real_positions, unpack
from oner_lab.presets import TowerConfig

Modality = str  # "image", "text" or "joint": which head projects a pooled token


@dataclass
class TowerOutput:
    """Final-norm hidden states of one forward pass, split back by modality."""

    cls: torch.Tensor  # [B, W]
    image_tokens: torch.Tensor | None  # [B, Ni, W]; zeros where `reads` read nothing; None for reads="cls"
    text_tokens: torch.Tensor | None  # [B, Nt, W]; likewise


class MLMHead(nn.Module):
    """BERT's prediction head; the decoder weight is the token embedding (tied)."""

    def __init__(self, width: int, embedding: nn.Embedding) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.embedding = embedding
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(tokens), self.embedding.weight, self.bias)


class OneTower(nn.Module):
    """One transformer for image, text and image+text sequences [CLS, image, text]."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not divisible by patch_size {cfg.patch_size}")
        self.cfg = cfg
        width = cfg.width
        self.patch_embed = PatchEmbed(img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=3, embed_dim=width)
        self.token_embed = nn.Embedding(cfg.vocab_size, width)
        self.image_pos = nn.Parameter(torch.zeros(1, cfg.num_patches, width))
        self.text_pos = nn.Parameter(torch.zeros(1, cfg.max_text_len, width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.image_mask_token = nn.Parameter(torch.zeros(1, 1, width))  # SimMIM's learned [MASK] patch
        rates = torch.linspace(
            0, cfg.drop_path, cfg.depth, device="cpu"
        ).tolist()  # cpu: also under a meta default device (cost.py)
        self.blocks = nn.ModuleList(
            Block(
                width,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=True,
                drop_path=rate,
                attn_layer=TowerAttention,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(width)
        # Recompute each block's activations in backward instead of keeping them: the paper's batch
        # on 8 GPUs holds several passes per step, which do not fit in 80 GB otherwise. Same maths.
        self.activation_checkpointing = False
        # A CPU pass skips the text padding and the last block's unread rows in its token-wise work
        # (model/packing.py); False runs every position, as a GPU does. Same maths either way.
        self.pack_tokens = True
        head_names = ("shared",) if cfg.head == "shared" else ("image", "text")
        self.heads = nn.ModuleDict({name: nn.Linear(width, cfg.proj_dim) for name in head_names})
        self.mlm_head = MLMHead(width, self.token_embed)
        self.mim_head = nn.Linear(width, cfg.patch_size**2 * 3)
        self.apply(_init_weights)
        for table in (self.image_pos, self.text_pos, self.cls_token, self.image_mask_token):
            trunc_normal_(table, std=0.02)

    def compile_blocks(self, mode: str | None = None, dynamic: bool | None = None) -> None:
        """Compile each block in place (`nn.Module.compile`) for fused kernels.

        In place, so parameter names and state dicts stay as they are and checkpoints load either way.
        The blocks share one code object: inductor compiles each sequence length and grad mode once for
        all of them (and for the momentum copy's blocks). `dynamic=True` compiles shape-generic graphs
        from the first call, so the kernels a step runs do not depend on which shapes the process met
        before (torch's default swaps in dynamic graphs at the second shape it sees, and a resumed run
        meets its shapes in another order)."""
        for block in self.blocks:
            block.compile(mode=mode, dynamic=dynamic)

    def embed_image(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens plus positions; masked patches (True in [B, Ni]) become the mask token."""
        tokens = embed_patches(images, self.patch_embed.proj)
        if patch_mask is not None:
            keep = (~patch_mask).unsqueeze(-1).to(tokens.dtype)
            tokens = tokens * keep + self.image_mask_token.to(tokens.dtype) * (1 - keep)
        return tokens + self.image_pos

    def embed_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        return self.token_embed(text_ids) + self.text_pos[:, : text_ids.shape[1]]

    def forward(
        self,
        view: str,
        images: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        patch_mask: torch.Tensor | None = None,
        reads: torch.Tensor | Literal["cls"] | None = None,
    ) -> TowerOutput:
        """Encode one view ("I", "T", "I|T", "T|I", "I,T"); see `masks.attention_mask`.

        `reads` names the final states the caller reads besides [CLS]: a boolean [B, Ni + Nt] over the
        image then text positions, "cls" for [CLS] alone (no token outputs), None for all. A CPU pass
        runs its last block on those rows only (model/packing.py); the others come back as zeros."""
        batch = (images if images is not None else text_ids).shape[0]
        parts = [self.cls_token.expand(batch, -1, -1)]
        num_image = 0
        if images is not None:
            image_tokens = self.embed_image(images, patch_mask)
            num_image = image_tokens.shape[1]
            parts.append(image_tokens)
        if text_ids is not None:
            parts.append(self.embed_text(text_ids))
        x = torch.cat(parts, dim=1)
        text_mask = text_mask if text_ids is not None else None
        mask = attention_mask(view, num_image, text_mask)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        drop_path = self.training and self.cfg.drop_path > 0
        read = _read_positions(reads, x, needed=self.pack_tokens and uses_plain_products(x))
        if self.pack_tokens and packs(x, text_mask, read, self.blocks, drop_path):
            index = real_positions(text_mask, 1 + num_image)
            x = self._packed_blocks(x, index, mask, recompute, None if read is None else read_rows(read, index))
        else:
            for block in self.blocks:
                # preserve_rng_state (the default) replays drop-path's randomness in the recomputation
                x = checkpoint(block, x, attn_mask=mask, use_reentrant=False) if recompute else block(x, attn_mask=mask)
            x = self.norm(x)
        tokens = not (isinstance(reads, str) and reads == "cls")
        return TowerOutput(
            cls=x[:, 0],
            image_tokens=x[:, 1 : 1 + num_image] if images is not None and tokens else None,
            text_tokens=x[:, 1 + num_image :] if text_ids is not None and tokens else None,
        )

    def _packed_blocks(
        self,
        x: torch.Tensor,
        index: torch.Tensor | None,
        mask: torch.Tensor | None,
        recompute: bool,
        rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """The blocks and final norm on the real tokens only, the last block on the read `rows` of them
        (model/packing.py); padded and unread positions come back as zeros."""
        batch, length, _ = x.shape
        x = pack(x, index)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            args = (block, x, index, batch, length, mask, rows if i == last else None)
            x = checkpoint(packed_block, *args, use_reentrant=False) if recompute else packed_block(*args)
        kept = index if rows is None else rows if index is None else index.index_select(0, rows)
        return unpack(self.norm(x), kept, batch, length)

    def project(self, pooled: torch.Tensor, modality: Modality) -> torch.Tensor:
        """L2-normalised embedding F(.) through the shared head or the modality's own head."""
        if "shared" in self.heads:
            head = self.heads["shared"]
        elif modality in self.heads:
            head = self.heads[modality]
        else:
            raise ValueError(f"per-modality heads have no head for a {modality!r} view; use model.head: shared")
        return F.normalize(head(pooled), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self(view="I", images=images, reads="cls").cls, "image")

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.project(self(view="T", text_ids=text_ids, text_mask=text_mask, reads="cls").cls, "text")


def _read_positions(reads: torch.Tensor | str | None, x: torch.Tensor, needed: bool) -> torch.Tensor | None:
    """`forward`'s `reads` checked, and as a boolean [B, L] over the whole sequence, [CLS] included, where
    `needed` (the CPU path that can use it: a GPU pass does not build it); None reads all."""
    if reads is None:
        return None
    batch, length, _ = x.shape
    if isinstance(reads, str):
        if reads != "cls":
            raise ValueError(f'reads must be a boolean tensor, "cls" or None, not {reads!r}')
    elif reads.shape != (batch, length - 1):
        raise ValueError(
            f"reads has shape {tuple(reads.shape)}; this pass's image and text positions are {(batch, length - 1)}"
        )
    if not needed:
        return None
    read = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
    read[:, 0] = True
    if not isinstance(reads, str):
        read[:, 1:] = reads
    return read


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, Np, p*p*3] in PatchEmbed's row-major patch order (also the MIM targets)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def embed_patches(images: torch.Tensor, proj: nn.Conv2d) -> torch.Tensor:
    """[B, 3, H, W] -> [B, Np, W]: PatchEmbed's strided convolution as one matrix product.

    The same sums over the same weights (`proj` keeps its shape, so checkpoints load as before), but a
    GPU runs it as a plain GEMM: cuDNN picked a slow implicit-GEMM kernel plus layout transposes for
    the stride-16 convolution, 7% of the compiled ViT-B/16 step's GPU time on an H200 (docs/gpu.md)."""
    weight = proj.weight.permute(0, 2, 3, 1).flatten(1)  # [W, 3, p, p] -> [W, p*p*3], patchify's order
    return F.linear(patchify(images, proj.kernel_size[0]), weight, proj.bias)


def _init_weights(module: nn.Module) -> None:
    """ViT/BERT initialisation: truncated normal 0.02 for weights, zero biases."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        trunc_normal_(module.weight, std=0.02)
