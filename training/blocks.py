"""Transformer blocks shared by the encoder and both decoders.

All attention goes through `torch.nn.functional.scaled_dot_product_attention`, so PyTorch picks
the flash / memory-efficient / math kernel for the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention of queries `x` over `context` (self-attention when context is x)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self.split_heads(q), self.split_heads(k),
                                             self.split_heads(v))
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        return self.to_out(self.attend(self.to_q(x), self.to_k(context), self.to_v(context)))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """Queries attend to an external context (keys/values), then an MLP."""

    def __init__(self, dim: int, heads: int, context_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(context_dim)
        self.attn = Attention(dim, heads, context_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(context))
        return x + self.mlp(self.norm2(x))


class CrossThenSelfTransformer(nn.Module):
    """The Omni-ID block design: `cross` context-injecting blocks, then `self` blocks."""

    def __init__(self, dim: int, heads: int, context_dim: int, cross: int, self_: int,
                 mlp_ratio: float):
        super().__init__()
        self.cross_blocks = nn.ModuleList(
            CrossAttentionBlock(dim, heads, context_dim, mlp_ratio) for _ in range(cross))
        self.self_blocks = nn.ModuleList(
            SelfAttentionBlock(dim, heads, mlp_ratio) for _ in range(self_))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for block in self.cross_blocks:
            x = block(x, context)
        for block in self.self_blocks:
            x = block(x)
        return self.norm(x)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C], row-major patches, pixels (p, p, C) inside."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not divisible by patch {patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int, height: int,
               width: int) -> torch.Tensor:
    b = patches.shape[0]
    gh, gw = height // patch, width // patch
    x = patches.reshape(b, gh, gw, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, height, width)


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform linears, zero biases (MAE/DiT practice); used as `model.apply(...)`."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
