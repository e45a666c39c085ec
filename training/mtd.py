"""Masked Transformer Decoder (MTD): reconstruct a heavily masked target from identity tokens.

Same block design as the encoder: the queries are the target's patch embeddings with a random
`mask_ratio` of them replaced by a learned mask token; the identity tokens are the keys/values of
the cross-attention blocks. The loss covers the hidden patches, only inside the face mask.
"""

from __future__ import annotations

import torch
from torch import nn

from training.blocks import CrossThenSelfTransformer, init_weights, patchify
from training.config import MTDConfig, ReconLoss


def random_patch_mask(batch: int, num_patches: int, ratio: float,
                      generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool [batch, num_patches], True = hidden; exactly round(ratio * num_patches) per row."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio {ratio} is outside [0, 1]")
    num_hidden = round(ratio * num_patches)
    noise = torch.rand(batch, num_patches, generator=generator, device=device)
    order = noise.argsort(dim=1)
    hidden = torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
    hidden.scatter_(1, order[:, :num_hidden], True)
    return hidden


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor,
                               face: torch.Tensor, kind: ReconLoss = ReconLoss.L1) -> torch.Tensor:
    """Mean error over the pixels that are both in a hidden patch and inside the face mask.

    pred, target: [M, L, P] patch pixels; hidden: [M, L] bool; face: [M, L, P] in {0, 1}.
    """
    kind = ReconLoss(kind)
    error = (pred - target).abs() if kind == ReconLoss.L1 else (pred - target).square()
    weight = face * hidden.unsqueeze(-1).to(face.dtype)
    # Keep the sum tied to `pred` so a batch without face pixels still gives a zero gradient.
    return (error * weight).sum() / weight.sum().clamp(min=1.0)


class MaskedTransformerDecoder(nn.Module):
    def __init__(self, config: MTDConfig, id_dim: int, image_size: int, channels: int = 3):
        super().__init__()
        if image_size % config.patch_size:
            raise ValueError(f"image size {image_size} not divisible by patch {config.patch_size}")
        self.config = config
        self.patch = config.patch_size
        self.num_patches = (image_size // config.patch_size) ** 2
        patch_dim = config.patch_size ** 2 * channels
        self.patch_embed = nn.Linear(patch_dim, config.dim)
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches, config.dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, 1, config.dim) * 0.02)
        self.transformer = CrossThenSelfTransformer(
            config.dim, config.heads, id_dim, config.cross_blocks, config.self_blocks,
            config.mlp_ratio)
        self.head = nn.Linear(config.dim, patch_dim)
        self.apply(init_weights)

    def forward(self, target_patches: torch.Tensor, hidden: torch.Tensor,
                id_tokens: torch.Tensor) -> torch.Tensor:
        """target_patches [M, L, P] (pixels in [-1, 1]), hidden [M, L] -> predicted [M, L, P]."""
        x = self.patch_embed(target_patches)
        x = torch.where(hidden.unsqueeze(-1), self.mask_token.to(x.dtype), x) + self.pos_embed
        return self.head(self.transformer(x, id_tokens))

    def loss(self, id_tokens: torch.Tensor, targets: torch.Tensor, face_masks: torch.Tensor,
             generator: torch.Generator | None = None,
             hidden: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """targets [M, 3, H, W] in [-1, 1], face_masks [M, 1, H, W] in {0, 1}."""
        patches = patchify(targets, self.patch)
        face = patchify(face_masks.expand_as(targets), self.patch)
        if hidden is None:
            hidden = random_patch_mask(patches.shape[0], patches.shape[1], self.config.mask_ratio,
                                       generator, patches.device)
        pred = self(patches, hidden, id_tokens)
        loss = masked_reconstruction_loss(pred.float(), patches.float(), hidden, face.float(),
                                          self.config.loss)
        return {"loss": loss, "pred": pred, "hidden": hidden}
