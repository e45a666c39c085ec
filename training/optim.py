"""Optimisation pieces: AdamW parameter groups, the LR schedule, and the encoder's EMA.

Contract: `build_optimizer(model, optim)` groups every trainable parameter exactly once (no decay
on biases, norms, embeddings and learned tokens; `backbone_lr_scale` on `encoder.backbone.*`),
each group carries its `base_lr`; `set_lr(optimizer, lr_factor(step, ...))` sets every group to
`base_lr` times the warmup + cosine factor of that step (a pure function of the step, so a
resumed run follows the same schedule).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from training.config import OptimConfig

NO_DECAY_SUFFIXES = ("pos_embed", "queries", "mask_token", "prompt", "cls_token")


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups: no decay on biases, norms and embeddings; a scaled LR for the backbone."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or name.endswith(NO_DECAY_SUFFIXES)
        is_backbone = name.startswith("encoder.backbone.")
        groups.setdefault((is_backbone, no_decay), []).append(param)
    out = []
    for (is_backbone, no_decay), params in sorted(groups.items()):
        lr = optim.lr * (optim.backbone_lr_scale if is_backbone else 1.0)
        out.append({"params": params, "lr": lr, "base_lr": lr,
                    "weight_decay": 0.0 if no_decay else optim.weight_decay})
    return out


def build_optimizer(model: nn.Module, optim: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups(model, optim), lr=optim.lr, betas=tuple(optim.betas),
                             **kwargs)


def lr_factor(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Linear warmup to 1, then cosine down to `min_lr_ratio` at `max_steps`."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    span = max(1, max_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cosine


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


class EMA:
    """Exponential moving average of the encoder's weights (what `encode` exports)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for ema_p, p in zip(self.module.parameters(), module.parameters(), strict=False):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), module.buffers(), strict=False):
            ema_b.copy_(b)
