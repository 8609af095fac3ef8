"""SAM's encoder attention through `scaled_dot_product_attention`.

`segment_anything`'s `Attention` materialises softmax(q·kᵀ + rel-pos bias) and keeps it for the
backward pass. `FusedAttention` computes the same decomposed relative-position bias (from the
same `get_rel_pos`) and hands it to SDPA as an additive `attn_mask`, so the fused kernels
(memory-efficient attention on CUDA, flash-style on CPU) do the rest. It subclasses SAM's
module and adds no parameter: official checkpoints load unchanged, and `use_fused_attention`
swaps the class of modules that already exist instead of forking `segment_anything`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, get_rel_pos


class FusedAttention(Attention):
    """Same parameters and result as `Attention` (within float rounding), one fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, H*W, head_dim)
        bias = self.rel_pos_bias(q, height, width) if self.use_rel_pos else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(batch, height, width, -1))

    def rel_pos_bias(self, q: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, heads, H*W, H*W): SAM's decomposed relative positions (MViTv2), from the
        unscaled queries exactly as `add_decomposed_rel_pos` computes them."""
        batch, heads, tokens, dim = q.shape
        r_q = q.reshape(batch * heads, height, width, dim)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(height, height, self.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(width, width, self.rel_pos_w))
        bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        return bias.reshape(batch, heads, tokens, tokens)


def use_fused_attention(encoder: ImageEncoderViT, fused: bool = True) -> None:
    """Switch every block of `encoder` to `FusedAttention` (or back to SAM's own)."""
    for block in encoder.blocks:
        block.attn.__class__ = FusedAttention if fused else Attention
