"""The trained modules: image backbones (a registry), the Omni-ID encoder, and `OmniID`, the
encoder plus the decoder(s) of a training stage, whose forward returns the loss.

The encoder turns a set of face images of one person, any number of them, into N x D identity
tokens: every image goes through the backbone, the patch tokens of all images are concatenated
along the token axis, and N learnable queries read them through cross-attention blocks followed
by self-attention blocks. No per-image position is added to the concatenation, so the output does
not depend on the order of the input images.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training.blocks import CrossThenSelfTransformer, SelfAttentionBlock, init_weights
from training.config import (
    BackboneConfig,
    BackboneName,
    EncoderConfig,
    FlowConfig,
    FlowDecoderKind,
    Stage,
    TrainConfig,
)
from training.errors import InputError
from training.flow import ConditionalFlowDecoder, DiTFlowDecoder
from training.mtd import MaskedTransformerDecoder


class Backbone(nn.Module):
    """Images in [0, 1], [B, 3, H, W] -> patch tokens [B, L, out_dim] (no class token)."""

    out_dim: int

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


BACKBONES: dict[str, Callable[[BackboneConfig, int], Backbone]] = {}


def register_backbone(name: str):
    def register(builder: Callable[[BackboneConfig, int], Backbone]):
        BACKBONES[name] = builder
        return builder
    return register


def build_backbone(config: BackboneConfig, image_size: int) -> Backbone:
    if config.name not in BACKBONES:
        raise ValueError(f"unknown backbone {config.name!r}, expected one of {sorted(BACKBONES)}")
    return BACKBONES[config.name](config, image_size)


class ScratchViT(Backbone):
    """A small ViT trained from scratch: conv patch embedding, learned positions, blocks."""

    def __init__(self, config: BackboneConfig, image_size: int):
        super().__init__(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        if image_size % config.patch_size:
            raise ValueError(f"image size {image_size} not divisible by patch {config.patch_size}")
        grid = image_size // config.patch_size
        self.out_dim = config.width
        self.patch_embed = nn.Conv2d(3, config.width, config.patch_size, config.patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, config.width) * 0.02)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(config.width, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.grad_checkpointing = config.grad_checkpointing
        self.blocks.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.normalize(images)).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)


register_backbone(BackboneName.VIT_SCRATCH)(ScratchViT)


class MissingWeightsError(FileNotFoundError):
    pass


class WeightLayoutError(InputError):
    pass


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file (timm's hub format) or a torch file (open_clip's
    `open_clip_pytorch_model.bin`, a `torch.save`d state dict), read without unpickling
    arbitrary objects."""
    path = Path(path)
    if path.is_dir():
        path = weight_file(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"backbone weight file not found: {path}. Put the CLIP ViT-H/14 weights there: "
            f"timm's `vit_huge_patch14_clip_224.laion2b` model.safetensors, or open_clip's "
            f"ViT-H-14 laion2b_s32b_b79k open_clip_pytorch_model.bin (its `visual.*` keys are "
            f"converted), or Hugging Face's laion/CLIP-ViT-H-14-laion2B-s32B-b79K "
            f"model.safetensors (its `vision_model.*` keys are converted; the folder works "
            f"too), or pass --backbone-weights PATH; --backbone-weights '' only for a "
            f"random init (benchmarks).")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "params"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    return state


WEIGHT_LAYOUTS = (
    "timm `vit_huge_patch14_clip_224.laion2b` model.safetensors (or any state dict of the timm "
    "model)",
    "open_clip ViT-H-14 laion2b_s32b_b79k open_clip_pytorch_model.bin (`visual.*` keys)",
    "Hugging Face transformers CLIP (laion/CLIP-ViT-H-14-laion2B-s32B-b79K model.safetensors or "
    "its folder: `vision_model.*` keys)",
)
# file names looked for when --backbone-weights is a folder (a downloaded repository)
WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors",
                "open_clip_pytorch_model.bin", "pytorch_model.bin")
HF_PREFIX = "vision_model."


# a bare CLIPVisionModel as transformers 5 saves it: the vision tower's keys without the prefix
HF_BARE_ROOTS = ("embeddings.", "encoder.layers.", "pre_layrnorm.", "post_layernorm.")


def is_hf_clip_vision(state: dict) -> bool:
    return (any(k.startswith(HF_PREFIX) for k in state)
            or HF_BARE_ROOTS[0] + "patch_embedding.weight" in state)


def _with_hf_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith(HF_PREFIX) for k in state):
        return state
    return {(HF_PREFIX + k if k.startswith(HF_BARE_ROOTS) else k): v for k, v in state.items()}


def hf_clip_vision_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face transformers `CLIPVisionModel` / `CLIPModel` keys -> timm's CLIP ViT keys
    (`vit_*_clip_*`: class token, pre-norm, fused qkv). The text tower, the projections and
    the position-id buffer have no place in the image backbone and are dropped. Keys with
    (`CLIPModel`, transformers 4 `CLIPVisionModel`) or without (transformers 5
    `CLIPVisionModel`) the `vision_model.` prefix."""
    state = _with_hf_prefix(state)
    out: dict[str, torch.Tensor] = {}
    emb, enc = HF_PREFIX + "embeddings.", HF_PREFIX + "encoder.layers."
    simple = {emb + "patch_embedding.weight": "patch_embed.proj.weight",
              HF_PREFIX + "pre_layrnorm.weight": "norm_pre.weight",
              HF_PREFIX + "pre_layrnorm.bias": "norm_pre.bias",
              HF_PREFIX + "post_layernorm.weight": "norm.weight",
              HF_PREFIX + "post_layernorm.bias": "norm.bias"}
    per_block = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if not key.startswith(HF_PREFIX):
            continue
        if key in simple:
            out[simple[key]] = value
        elif key == emb + "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == emb + "position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)
        elif key.startswith(enc):
            index, rest = key[len(enc):].split(".", 1)
            module, kind = rest.rsplit(".", 1)            # e.g. "self_attn.q_proj", "weight"
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((int(index), kind), {})[module[-6]] = value
            elif module in per_block:
                out[f"blocks.{index}.{per_block[module]}.{kind}"] = value
    for (index, kind), parts in qkv.items():
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def weight_file(path: Path) -> Path:
    """The weight file of `path`: itself, or the known file inside a downloaded folder."""
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise MissingWeightsError(
            f"no backbone weight file in folder {path} (looked for {', '.join(WEIGHT_FILES)}). "
            f"Expected one of: " + "; ".join(WEIGHT_LAYOUTS))
    return path


class TimmViT(Backbone):
    """A timm ViT (e.g. CLIP ViT-H/14 `vit_huge_patch14_clip_224`), fully fine-tuned."""

    def __init__(self, config: BackboneConfig, image_size: int):
        import timm  # only real runs need timm; CPU tests with vit_scratch do not
        from timm.models.vision_transformer import checkpoint_filter_fn

        depth = {"depth": config.timm_depth} if config.timm_depth else {}
        model = timm.create_model(config.timm_name, pretrained=False, num_classes=0,
                                  img_size=image_size, **depth)
        data_config = timm.data.resolve_model_data_config(model)
        super().__init__(mean=tuple(data_config["mean"]), std=tuple(data_config["std"]))
        if config.weights:
            # The filter converts OpenAI/open_clip layouts and resamples position embeddings to
            # this image size; a classifier head in the file has no place in a num_classes=0 model.
            state = load_state_dict_file(config.weights)
            if is_hf_clip_vision(state):
                state = hf_clip_vision_to_timm(state)
            state = checkpoint_filter_fn(state, model)
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            try:
                missing, unexpected = model.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # shapes: another model size in a known layout
                raise WeightLayoutError(
                    f"{config.weights} does not fit timm model {config.timm_name} ({exc}). "
                    f"Expected one of: " + "; ".join(WEIGHT_LAYOUTS)) from None
            if missing or unexpected:
                raise WeightLayoutError(
                    f"{config.weights} does not fit timm model {config.timm_name}: "
                    f"missing {missing[:5]}, unexpected {unexpected[:5]}. Expected one of: "
                    + "; ".join(WEIGHT_LAYOUTS))
        if config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.model = model
        self.out_dim = model.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(self.normalize(images))
        return tokens[:, self.model.num_prefix_tokens:]


register_backbone(BackboneName.TIMM)(TimmViT)


class OmniIDEncoder(nn.Module):
    """Any number of face images of one identity -> identity tokens [B, N, D]."""

    def __init__(self, backbone_config: BackboneConfig, config: EncoderConfig, image_size: int):
        super().__init__()
        self.backbone = build_backbone(backbone_config, image_size)
        self.num_tokens, self.dim = config.num_tokens, config.dim
        self.queries = nn.Parameter(torch.randn(1, config.num_tokens, config.dim) * 0.02)
        self.context_proj = nn.Linear(self.backbone.out_dim, config.dim)
        self.transformer = CrossThenSelfTransformer(
            config.dim, config.heads, config.dim, config.cross_blocks, config.self_blocks,
            config.mlp_ratio)
        self.context_proj.apply(init_weights)
        self.transformer.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, n, 3, H, W] floats in [0, 1] (n >= 1) -> [B, N, D]."""
        if images.dim() == 4:
            images = images.unsqueeze(1)
        b, n = images.shape[:2]
        tokens = self.backbone(images.flatten(0, 1))                 # [B*n, L, C]
        context = self.context_proj(tokens.reshape(b, n * tokens.shape[1], -1))
        return self.transformer(self.queries.expand(b, -1, -1), context)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1] (the encoder's input)."""
    return images.float().div_(255.0)


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1] (the decoders' pixel space)."""
    return images.float().div_(127.5).sub_(1.0)


def build_flow_decoder(config: FlowConfig, id_dim: int, image_size: int,
                       flux_modules: tuple | None = None) -> ConditionalFlowDecoder:
    if config.decoder == FlowDecoderKind.FLUX:
        from training.flux import FluxDecoder  # only FLUX runs need diffusers
        return FluxDecoder(config, id_dim, image_size, flux_modules)
    return DiTFlowDecoder(config, id_dim, image_size)


class PhaseName(enum.StrEnum):
    MTD = "mtd"                        # stage mtd
    FLOW = "flow"                      # stage flow
    JOINT = "joint"                    # stage joint after its warm-ups
    MTD_WARMUP = "mtd_warmup"          # stage joint: the MTD loss alone
    DECODER_WARMUP = "decoder_warmup"  # the flow decoder trains, its loss stops at the encoder


@dataclass(frozen=True)
class Phase:
    """What one step trains: each loss's weight (0: not computed) and whether its gradient
    reaches the encoder."""

    name: PhaseName
    mtd_weight: float
    flow_weight: float
    encoder_from_mtd: bool
    encoder_from_flow: bool

    @property
    def trains_encoder(self) -> bool:
        return self.encoder_from_mtd or self.encoder_from_flow


def phase_at(config: TrainConfig, step: int) -> Phase:
    """The objective of step `step` (0-based), a pure function of the config and the step, so a
    resumed run follows the same schedule (see `ObjectiveConfig`)."""
    o, stage = config.objective, Stage(config.stage)
    train_encoder = not o.freeze_encoder
    if stage == Stage.MTD:
        return Phase(PhaseName.MTD, o.mtd_weight, 0.0, train_encoder, False)
    start = o.mtd_warmup_steps if stage == Stage.JOINT else 0
    mtd_weight = o.mtd_weight if stage == Stage.JOINT else 0.0
    if step < start:
        return Phase(PhaseName.MTD_WARMUP, o.mtd_weight, 0.0, train_encoder, False)
    if step < start + o.decoder_warmup_steps:
        return Phase(PhaseName.DECODER_WARMUP, mtd_weight, o.flow_weight,
                     train_encoder and mtd_weight > 0, False)
    return Phase(PhaseName(stage.value), mtd_weight, o.flow_weight,
                 train_encoder and mtd_weight > 0, train_encoder)


def needs_unused_parameters(config: TrainConfig) -> bool:
    """Whether some step leaves trainable parameters without a gradient (DDP must know)."""
    o = config.objective
    return (Stage(config.stage) == Stage.JOINT or o.freeze_encoder
            or o.decoder_warmup_steps > 0)


class OmniID(nn.Module):
    """Omni-ID encoder plus the decoders of a training stage; forward returns the loss.

    Stage `mtd` holds the MTD, `flow` the flow decoder, `joint` both; the step's `Phase` weights
    the losses and decides which of them train the encoder (`phase_at`).
    """

    def __init__(self, config: TrainConfig, flux_modules: tuple | None = None):
        """`flux_modules`: see `training.flux.FluxDecoder` (default: loaded from files)."""
        super().__init__()
        self.stage = Stage(config.stage)
        size, target = config.data.image_size, config.data.target_px
        self.encoder = OmniIDEncoder(config.backbone, config.encoder, size)
        self.default_phase = phase_at(config, 10**12)  # the stage's steady-state objective
        if self.stage in (Stage.MTD, Stage.JOINT):
            self.mtd = MaskedTransformerDecoder(config.mtd, config.encoder.dim, target)
        if self.stage in (Stage.FLOW, Stage.JOINT):
            self.flow = build_flow_decoder(config.flow, config.encoder.dim, target, flux_modules)

    @property
    def has_mtd(self) -> bool:
        return hasattr(self, "mtd")

    @property
    def has_flow(self) -> bool:
        return hasattr(self, "flow")

    def frozen_keys(self) -> set[str]:
        """State-dict entries that come from frozen base weights (FLUX), not from training."""
        if self.has_flow:
            return {f"flow.{k}" for k in getattr(self.flow, "frozen_keys", ())}
        return set()

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint stores: everything but the frozen base weights."""
        frozen = self.frozen_keys()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = set(missing) - self.frozen_keys()
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit this model: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]} (same --preset and --stage?)")

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
                landmarks: torch.Tensor | None = None, phase: Phase | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """inputs uint8 [B, n_in, 3, H, W], targets [B, T, 3, H', W'], masks [B, T, 1, H', W'],
        landmarks [B, T, 5, 2] -> {"loss": the phase's weighted sum, "mtd": the MTD loss,
        "flow": the flow loss} (the parts the phase computes)."""
        phase = phase or self.default_phase
        with torch.set_grad_enabled(torch.is_grad_enabled() and phase.trains_encoder):
            ids = self.encoder(to_unit(inputs))
        n_tgt = targets.shape[1]
        ids = ids.repeat_interleave(n_tgt, dim=0)         # every target sees its identity
        flat_targets = to_signed(targets.flatten(0, 1))
        out: dict[str, torch.Tensor] = {}
        total = None
        if phase.mtd_weight > 0 and self.has_mtd:
            face = (masks.flatten(0, 1) > 127).float()
            mtd_ids = ids if phase.encoder_from_mtd else ids.detach()
            out["mtd"] = self.mtd.loss(mtd_ids, flat_targets, face, generator)["loss"]
            total = phase.mtd_weight * out["mtd"]
        if phase.flow_weight > 0 and self.has_flow:
            flow_ids = ids if phase.encoder_from_flow else ids.detach()
            flat_landmarks = landmarks.flatten(0, 1) if landmarks is not None else None
            out["flow"] = self.flow.loss(flow_ids, flat_targets, generator,
                                         landmarks=flat_landmarks)["loss"]
            term = phase.flow_weight * out["flow"]
            total = term if total is None else total + term
        if total is None:
            raise ValueError(f"phase {str(phase.name)!r} computes no loss for stage {self.stage}: "
                             f"set a positive --mtd-weight / --flow-weight")
        out["loss"] = total
        return out
