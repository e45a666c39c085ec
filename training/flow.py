"""Conditional flow-matching decoders: the interface, and a small DiT with IP-Adapter-style
identity attention (the CPU decoder; `training.flux` is the paper's FLUX + IP-Adapter).

`ConditionalFlowDecoder` is what the trainer uses: `loss(id_tokens, targets, landmarks)` and
`sample(id_tokens, landmarks)`, on top of what a decoder provides: `velocity(x_t, t, ids, pose)`,
`latent_shape(m)`, and a `codec` that maps images in [-1, 1] to the space the flow runs in.

Rectified flow: x_t = (1 - t) * x_0 + t * noise, the model predicts v = noise - x_0, timesteps are
logit-normal (t = sigmoid(n), n ~ N(mean, std)), and the sampler integrates v with Euler steps from
t = 1 (pure noise) down to t = 0.

Pose context (`FlowConfig.pose_condition`): the target's five landmarks, drawn as one Gaussian map
each at the flow's resolution, enter through a zero-initialised projection. The decoder learns the
target's pose from them and nothing else about the target, so evaluation generates from pure
noise in the target's pose with no leak of its pixels.
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


POSE_SIGMA = 0.04   # landmark blob radius, in units of the image side
POSE_CHANNELS = 5   # one map per landmark


def landmark_maps(landmarks: torch.Tensor, size: int, sigma: float = POSE_SIGMA) -> torch.Tensor:
    """[M, 5, 2] landmarks in [0, 1] (x, y) -> [M, 5, size, size] Gaussian maps (0 where NaN)."""
    coords = (torch.arange(size, device=landmarks.device, dtype=torch.float32) + 0.5) / size
    x, y = landmarks[..., 0:1].float(), landmarks[..., 1:2].float()       # [M, 5, 1]
    gx = torch.exp(-((coords - x) ** 2) / (2 * sigma**2))                 # [M, 5, size]
    gy = torch.exp(-((coords - y) ** 2) / (2 * sigma**2))
    maps = gy.unsqueeze(-1) * gx.unsqueeze(-2)                            # [M, 5, size, size]
    return torch.nan_to_num(maps, nan=0.0)


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
    """Interface: rectified-flow loss and Euler sampler over `velocity`, `latent_shape`, `codec`."""

    codec: nn.Module

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config

    def latent_shape(self, m: int) -> tuple[int, ...]:
        raise NotImplementedError

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, id_tokens: torch.Tensor,
                 landmarks: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, id_tokens: torch.Tensor, targets: torch.Tensor,
             generator: torch.Generator | None = None,
             t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None,
             landmarks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """targets [M, 3, H, W] in [-1, 1]; landmarks [M, 5, 2] in [0, 1] (pose context)."""
        with torch.no_grad():  # the codec is fixed (identity or a frozen VAE)
            x0 = self.codec.encode(targets)
        m = x0.shape[0]
        if t is None:
            t = logit_normal_timesteps(m, self.config.logit_mean, self.config.logit_std,
                                       generator, x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        tb = t.view(m, *([1] * (x0.dim() - 1))).to(x0.dtype)
        x_t = (1 - tb) * x0 + tb * noise
        pred = self.velocity(x_t, t, id_tokens, landmarks)
        loss = (pred.float() - (noise - x0).float()).square().mean()
        return {"loss": loss}

    @torch.no_grad()
    def sample(self, id_tokens: torch.Tensor, landmarks: torch.Tensor | None = None,
               steps: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Generate images [M, 3, H, W] in [-1, 1] from pure noise for identity tokens [M, N, D],
        in the pose of `landmarks` [M, 5, 2] when the decoder is pose-conditioned."""
        steps = steps or self.config.sample_steps
        device = id_tokens.device
        shape = self.latent_shape(id_tokens.shape[0])
        x = torch.randn(shape, generator=generator, device=generator.device if generator else device)
        x = x.to(device)
        times = torch.linspace(1.0, 0.0, steps + 1, device=device)
        for t_now, t_next in zip(times[:-1], times[1:], strict=False):
            v = self.velocity(x, t_now.expand(shape[0]), id_tokens, landmarks)
            x = x + (t_next - t_now) * v.float()
        return self.codec.decode(x).float().clamp(-1, 1)


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
        self.pose_embed = (nn.Linear(config.patch_size ** 2 * POSE_CHANNELS, config.dim)
                           if config.pose_condition else None)
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
        zero_init = [self.final_ada[-1], self.head]
        if self.pose_embed is not None:  # the pose path starts closed, as a ControlNet's does
            zero_init.append(self.pose_embed)
        for layer in zero_init:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def latent_shape(self, m: int) -> tuple[int, ...]:
        return (m, self.channels, self.size, self.size)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, id_tokens: torch.Tensor,
                 landmarks: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(patchify(x_t, self.patch)) + self.pos_embed
        if self.pose_embed is not None and landmarks is not None:
            maps = landmark_maps(landmarks, self.size).to(x.dtype)
            x = x + self.pose_embed(patchify(maps, self.patch))
        c = self.time_mlp(timestep_embedding(t, x.shape[-1]).to(x.dtype))
        prompt = self.prompt.expand(x.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, c, prompt, id_tokens)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.head(modulate(self.final_norm(x), shift, scale))
        return unpatchify(out, self.patch, self.channels, self.size, self.size)
