"""Conditional flow-matching decoder: a small DiT with IP-Adapter-style identity attention.

`ConditionalFlowDecoder` is the interface the trainer uses: `loss(id_tokens, targets)` and
`sample(id_tokens, ...)`, on top of one method a decoder must provide, `velocity(x_t, t, ids)`,
and a `codec` that maps images to the space the flow runs in.

Rectified flow: x_t = (1 - t) * x_0 + t * noise, the model predicts v = noise - x_0, timesteps are
logit-normal (t = sigmoid(n), n ~ N(mean, std)), and the sampler integrates v with Euler steps from
t = 1 (pure noise, or a partly noised image) down to t = 0.

Extension point, the paper's decoder (FLUX.1-dev + IP-Adapter): subclass
`ConditionalFlowDecoder`, set `codec` to a wrapper of FLUX's VAE (`encode` images in [-1, 1] ->
scaled latents, `decode` back), and implement `velocity` by calling the frozen FLUX transformer
with the fixed prompt's text embeddings ("photo of a person."), its guidance/timestep inputs and
the packed latents, where every attention processor adds a trainable decoupled branch
`softmax(q k_ip^T) v_ip` whose `k_ip`, `v_ip` project the Omni-ID tokens - exactly what
`DecoupledCrossAttention` below does for the small DiT. The trainer, the loss, the sampler and the
checkpoints need no change; only the decoder's parameters (the IP branches) and the encoder train.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.blocks import Attention, Mlp, init_weights, patchify, unpatchify
from training.config import FlowConfig, Latent


class PixelCodec(nn.Module):
    """The identity codec: the flow runs on pixels in [-1, 1] at the model resolution."""

    channels = 3
    downsample = 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


CODECS = {Latent.PIXEL: PixelCodec}


def logit_normal_timesteps(n: int, mean: float, std: float, generator=None,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class DecoupledCrossAttention(Attention):
    """IP-Adapter attention: one query, separate keys/values for the prompt and the identity."""

    def __init__(self, dim: int, heads: int, id_dim: int, ip_scale: float):
        super().__init__(dim, heads)
        self.to_k_ip = nn.Linear(id_dim, dim)
        self.to_v_ip = nn.Linear(id_dim, dim)
        self.ip_scale = ip_scale

    def forward(self, x: torch.Tensor, prompt: torch.Tensor,  # type: ignore[override]
                id_tokens: torch.Tensor) -> torch.Tensor:
        q = self.to_q(x)
        text = self.attend(q, self.to_k(prompt), self.to_v(prompt))
        identity = self.attend(q, self.to_k_ip(id_tokens), self.to_v_ip(id_tokens))
        return self.to_out(text + self.ip_scale * identity)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """Self-attention and MLP under adaLN-Zero timestep modulation, plus identity attention."""

    def __init__(self, dim: int, heads: int, id_dim: int, mlp_ratio: float, ip_scale: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = DecoupledCrossAttention(dim, heads, id_dim, ip_scale)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, prompt: torch.Tensor,
                id_tokens: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross(self.norm_cross(x), prompt, id_tokens)
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class ConditionalFlowDecoder(nn.Module):
    """Interface: rectified-flow loss and Euler sampler over `velocity` and `codec`."""

    codec: nn.Module

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, id_tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, id_tokens: torch.Tensor, targets: torch.Tensor,
             generator: torch.Generator | None = None,
             t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """targets [M, 3, H, W] in [-1, 1]."""
        x0 = self.codec.encode(targets)
        m = x0.shape[0]
        if t is None:
            t = logit_normal_timesteps(m, self.config.logit_mean, self.config.logit_std,
                                       generator, x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        tb = t.view(m, 1, 1, 1).to(x0.dtype)
        x_t = (1 - tb) * x0 + tb * noise
        pred = self.velocity(x_t, t, id_tokens)
        loss = (pred.float() - (noise - x0).float()).square().mean()
        return {"loss": loss}

    @torch.no_grad()
    def sample(self, id_tokens: torch.Tensor, shape: tuple[int, ...], steps: int | None = None,
               generator: torch.Generator | None = None, start: torch.Tensor | None = None,
               t_start: float = 1.0) -> torch.Tensor:
        """Generate images [M, 3, H, W] in [-1, 1] for identity tokens [M, N, D].

        `start` (images in [-1, 1]) with `t_start` < 1 noises a given image to t_start first and
        integrates from there: it keeps the pose and lighting of `start`, as in the training task.
        """
        steps = steps or self.config.sample_steps
        device = id_tokens.device
        noise = torch.randn(shape, generator=generator, device=device)
        if start is None:
            x, t_start = noise, 1.0
        else:
            x = (1 - t_start) * self.codec.encode(start) + t_start * noise
        times = torch.linspace(t_start, 0.0, steps + 1, device=device)
        for t_now, t_next in zip(times[:-1], times[1:], strict=False):
            v = self.velocity(x, t_now.expand(shape[0]), id_tokens)
            x = x + (t_next - t_now) * v.float()
        return self.codec.decode(x).clamp(-1, 1)


class DiTFlowDecoder(ConditionalFlowDecoder):
    def __init__(self, config: FlowConfig, id_dim: int, image_size: int):
        super().__init__(config)
        if config.latent not in CODECS:
            raise ValueError(f"unknown latent codec {config.latent!r}: {sorted(CODECS)}")
        self.codec = CODECS[config.latent]()
        size = image_size // self.codec.downsample
        if size % config.patch_size:
            raise ValueError(f"flow input {size} px not divisible by patch {config.patch_size}")
        self.size, self.patch, self.channels = size, config.patch_size, self.codec.channels
        patch_dim = config.patch_size ** 2 * self.channels
        self.patch_embed = nn.Linear(patch_dim, config.dim)
        self.pos_embed = nn.Parameter(
            torch.randn(1, (size // config.patch_size) ** 2, config.dim) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(config.dim, config.dim), nn.SiLU(),
                                      nn.Linear(config.dim, config.dim))
        self.prompt = nn.Parameter(torch.randn(1, config.prompt_tokens, config.dim) * 0.02)
        self.blocks = nn.ModuleList(
            DiTBlock(config.dim, config.heads, id_dim, config.mlp_ratio, config.ip_scale)
            for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(config.dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(config.dim, 2 * config.dim))
        self.head = nn.Linear(config.dim, patch_dim)
        self.apply(init_weights)
        for block in self.blocks:  # adaLN-Zero: every residual branch starts closed
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for layer in (self.final_ada[-1], self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, id_tokens: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(patchify(x_t, self.patch)) + self.pos_embed
        c = self.time_mlp(timestep_embedding(t, x.shape[-1]).to(x.dtype))
        prompt = self.prompt.expand(x.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, c, prompt, id_tokens)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.head(modulate(self.final_norm(x), shift, scale))
        return unpatchify(out, self.patch, self.channels, self.size, self.size)
