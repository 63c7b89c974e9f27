"""Self-attention of the tower's blocks: timm's, with the kernel chosen per call.

PyTorch's CPU kernel behind `scaled_dot_product_attention` (flash attention for CPU) is built for
long sequences. At the tiny preset's 10-30 tokens and 24-wide heads it took up to 1.6x as long,
forward and backward, as two plain matrix products and a softmax (the same arithmetic) at one
thread, and up to 2.2x at two (`benchmarks/attention_kernels.py`). So a CPU pass over a short
sequence takes the plain products; GPUs (flash and cuDNN kernels) and long sequences keep SDPA. Same parameters and state-dict names as
timm's `Attention`, so checkpoints load either way.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Attention

# Longest sequence a CPU pass runs as plain products. Measured on a 2-core AVX-512 CPU, forward and
# backward: plain products 1.0-1.6x as fast as SDPA up to 128 tokens at one thread (2.0-2.2x at the
# tiny preset's lengths at two, where SDPA's kernel gains nothing from the second thread); at 237
# tokens SDPA wins at one thread.
MATH_MAX_TOKENS = 128


def uses_plain_products(x: torch.Tensor) -> bool:
    """Whether a pass over `x` [B, N, W] runs attention as plain matrix products."""
    return x.device.type == "cpu" and x.shape[1] <= MATH_MAX_TOKENS


class TowerAttention(Attention):
    """timm's multi-head self-attention; short CPU sequences skip SDPA (see the module docstring)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if is_causal or not uses_plain_products(x):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        return self.project_out(self.attend(self.qkv(x), attn_mask))

    def attend(self, qkv: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """The heads' plain-product attention: projected [B, N, 3 * attn_dim] in, [B, N, attn_dim] out
        (model/packing.py projects only the real tokens and calls this on the padded layout)."""
        batch, length, _ = qkv.shape
        q, k, v = qkv.reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = plain_attention(self.q_norm(q), self.k_norm(k), v, attn_mask, self.scale, self.attn_drop)
        return out.transpose(1, 2).reshape(batch, length, self.attn_dim)

    def project_out(self, out: torch.Tensor) -> torch.Tensor:
        """timm's output norm, projection and dropout, token by token."""
        return self.proj_drop(self.proj(self.norm(out)))


def plain_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    drop: torch.nn.Module | None = None,
) -> torch.Tensor:
    """SDPA's arithmetic as two matmuls and a softmax: [B, H, N, D] in, [B, H, N, D] out."""
    scores = (q * scale) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores + additive_mask(mask, scores.dtype)
    # softmax in float32 as SDPA's kernels do, also under bf16 autocast
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
    return (drop(probs) if drop is not None else probs) @ v


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """SDPA's mask semantics as a bias: a boolean mask (True = may attend) becomes 0 / -inf."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
