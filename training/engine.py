"""The training module (encoder + the stage's decoder), optimizer, schedule, EMA, one step."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from training.config import OptimConfig, TrainConfig
from training.flow import DiTFlowDecoder
from training.model import OmniIDEncoder
from training.mtd import MaskedTransformerDecoder

STAGES = ("mtd", "flow")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1] (the encoder's input)."""
    return images.float().div_(255.0)


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1] (the decoders' pixel space)."""
    return images.float().div_(127.5).sub_(1.0)


class OmniID(nn.Module):
    """Omni-ID encoder plus the decoder of one training stage; forward returns the loss."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        if config.stage not in STAGES:
            raise ValueError(f"unknown stage {config.stage!r}, expected one of {STAGES}")
        self.stage = config.stage
        size = config.data.image_size
        self.encoder = OmniIDEncoder(config.backbone, config.encoder, size)
        if self.stage == "mtd":
            self.mtd = MaskedTransformerDecoder(config.mtd, config.encoder.dim, size)
        else:
            self.flow = DiTFlowDecoder(config.flow, config.encoder.dim, size)

    def decoder(self) -> nn.Module:
        return self.mtd if self.stage == "mtd" else self.flow

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor,
                masks: torch.Tensor) -> torch.Tensor:
        """inputs uint8 [B, n_in, 3, H, W], targets [B, T, 3, H, W], masks [B, T, 1, H, W]."""
        return self.losses(inputs, targets, masks)["loss"]

    def losses(self, inputs: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        ids = self.encoder(to_unit(inputs))
        n_tgt = targets.shape[1]
        ids = ids.repeat_interleave(n_tgt, dim=0)         # every target sees its identity
        flat_targets = to_signed(targets.flatten(0, 1))
        if self.stage == "mtd":
            face = (masks.flatten(0, 1) > 127).float()
            return self.mtd.loss(ids, flat_targets, face, generator)
        return self.flow.loss(ids, flat_targets, generator)


def param_groups(model: OmniID, optim: OptimConfig) -> list[dict]:
    """AdamW groups: no decay on biases, norms and embeddings; a scaled LR for the backbone."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or name.endswith(("pos_embed", "queries", "mask_token",
                                                     "prompt", "cls_token"))
        is_backbone = name.startswith("encoder.backbone.")
        groups.setdefault((is_backbone, no_decay), []).append(param)
    out = []
    for (is_backbone, no_decay), params in sorted(groups.items()):
        lr = optim.lr * (optim.backbone_lr_scale if is_backbone else 1.0)
        out.append({"params": params, "lr": lr, "base_lr": lr,
                    "weight_decay": 0.0 if no_decay else optim.weight_decay})
    return out


def build_optimizer(model: OmniID, optim: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
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


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    applied: bool          # False: the step was skipped (non-finite loss or gradient)


class StepRunner:
    """One optimisation step with autocast, clipping, EMA and the non-finite guard."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, optim: OptimConfig,
                 max_nonfinite: int, device: torch.device, ema: EMA | None = None,
                 ema_source: nn.Module | None = None, distributed: bool = False):
        self.model, self.optimizer, self.optim = model, optimizer, optim
        self.max_nonfinite = max_nonfinite
        self.device = device
        self.ema, self.ema_source = ema, ema_source
        self.distributed = distributed
        self.nonfinite_in_a_row = 0

    def all_finite(self, value: torch.Tensor) -> bool:
        ok = torch.isfinite(value.detach().float()).all().float().reshape(1)
        if self.distributed:  # every rank must take the same branch
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok.item())

    def skip(self, loss: float, grad_norm: float, what: str) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        if self.nonfinite_in_a_row >= self.max_nonfinite:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} steps in a row had a non-finite {what}; stopping. "
                f"Lower --lr, check the data (metrics.jsonl rows with 'skipped'), or resume "
                f"from an earlier checkpoint.")
        return StepResult(loss, grad_norm, applied=False)

    def __call__(self, batch: dict, lr_scale: float) -> StepResult:
        set_lr(self.optimizer, lr_scale)
        inputs, targets, masks = (batch[k].to(self.device, non_blocking=True)
                                  for k in ("inputs", "targets", "masks"))
        autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                  enabled=self.device.type == "cuda")
        with autocast:
            loss = self.model(inputs, targets, masks)
        if not self.all_finite(loss):
            return self.skip(float("nan"), float("nan"), "loss")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.optim.grad_clip if self.optim.grad_clip > 0 else 1e12)
        if not self.all_finite(grad_norm):
            return self.skip(loss.item(), float("nan"), "gradient")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and self.ema_source is not None:
            self.ema.update(self.ema_source)
        self.nonfinite_in_a_row = 0
        return StepResult(loss.item(), grad_norm.item(), applied=True)
