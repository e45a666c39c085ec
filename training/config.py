"""Trainer configuration: dataclasses, the named presets, and plain-dict round trips.

Configs are stored inside checkpoints as plain dicts (str/int/float/bool/None/lists; enums as
their values), so a checkpoint loads with `torch.load(weights_only=True)` and still knows how to
rebuild its model. Every setting has its one default here; the CLI and the presets override it.
Settings that fix the model's architecture are listed once (`ENCODER_SETTINGS`,
`MODEL_SETTINGS`) and copied from a checkpoint's config with `copy_settings`.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import typing
from dataclasses import dataclass, field
from typing import Any


class Stage(enum.StrEnum):
    """Which decoders the model has and train the encoder: the MTD, the flow decoder, or both
    (`joint`: the paper's multi-decoder objective, after an optional MTD-only warm-up)."""

    MTD = "mtd"
    FLOW = "flow"
    JOINT = "joint"


class FlowDecoderKind(enum.StrEnum):
    """The flow-matching decoder: the small pixel DiT (CPU) or frozen FLUX + IP-Adapter."""

    DIT = "dit"
    FLUX = "flux"


class ReconLoss(enum.StrEnum):
    L1 = "l1"
    L2 = "l2"


class Latent(enum.StrEnum):
    """The space the flow runs in (`training.flow.CODECS`)."""

    PIXEL = "pixel"


class WeightDtype(enum.StrEnum):
    """dtype of frozen base weights (FLUX): bfloat16 on GPUs, float32 for CPU runs."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


class BackboneName(enum.StrEnum):
    """Keys of `training.model.BACKBONES`."""

    VIT_SCRATCH = "vit_scratch"
    TIMM = "timm"


@dataclass
class BackboneConfig:
    name: BackboneName = BackboneName.VIT_SCRATCH
    timm_name: str = ""                # for name == "timm": a timm model name
    timm_depth: int = 0                # timm: fewer blocks than the model's (tests); 0 = all
    weights: str = ""                  # local weight file for timm backbones ("" = random init)
    patch_size: int = 8                # vit_scratch only
    width: int = 96                    # vit_scratch only
    depth: int = 2                     # vit_scratch only
    heads: int = 4                     # vit_scratch only
    grad_checkpointing: bool = False


@dataclass
class EncoderConfig:
    num_tokens: int = 16               # N (paper: 256)
    dim: int = 64                      # D (paper: 1280)
    heads: int = 4
    cross_blocks: int = 2
    self_blocks: int = 2
    mlp_ratio: float = 4.0


@dataclass
class MTDConfig:
    patch_size: int = 8
    dim: int = 64
    heads: int = 4
    cross_blocks: int = 1
    self_blocks: int = 1
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.95
    loss: ReconLoss = ReconLoss.L1


@dataclass
class FlowConfig:
    patch_size: int = 8
    dim: int = 64
    heads: int = 4
    depth: int = 2
    mlp_ratio: float = 4.0
    prompt_tokens: int = 4             # learned stand-in for the fixed prompt "photo of a person."
    ip_scale: float = 1.0              # weight of the decoupled identity attention
    logit_mean: float = 0.0            # logit-normal timestep sampling
    logit_std: float = 1.0
    sample_steps: int = 20             # Euler steps of the sampler
    latent: Latent = Latent.PIXEL      # DiT only; FLUX runs in its own VAE's latent space
    # The target's 5 landmarks as Gaussian maps, added through a zero-initialised projection:
    # the pose is the only thing the decoder learns about the target besides its identity, so
    # evaluation can generate a face in the target's pose from pure noise without seeing it.
    pose_condition: bool = True
    decoder: FlowDecoderKind = FlowDecoderKind.DIT
    flux_path: str = ""                # local diffusers folder (transformer/, vae/) or one file
    flux_vae: str = ""                 # VAE file or folder (default: flux_path's vae/)
    flux_config: str = ""              # configs of a single-file FLUX (default: FLUX.1-dev's)
    prompt_embeds: str = ""            # .safetensors from `python -m training.prompt_embeds`
    guidance: float = 3.5              # FLUX-dev's distilled guidance input
    flux_dtype: WeightDtype = WeightDtype.FLOAT32
    flux_grad_checkpointing: bool = False


@dataclass
class DataConfig:
    image_size: int = 64               # encoder inputs (the backbone's resolution)
    target_size: int = 0               # decoder targets; 0: the same as image_size
    n_in: int = 3
    n_tgt: int = 8
    shuffle_buffer: int = 64
    workers: int = 0
    samples_per_epoch: int = 10_000    # per rank; `with_epoch` sizing

    @property
    def target_px(self) -> int:
        return self.target_size or self.image_size


@dataclass
class OptimConfig:
    lr: float = 1e-3
    backbone_lr_scale: float = 1.0     # fine-tuning a pretrained backbone: usually < 1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.0             # 0 disables EMA


@dataclass
class ObjectiveConfig:
    """Loss weights and the per-step schedule of which losses reach the encoder.

    Stage `joint`: steps [0, mtd_warmup_steps) train with the MTD loss alone (Fig. 9 / Tab. 3's
    MTD pre-training), then both losses with these weights. `decoder_warmup_steps` after that
    (or from step 0 for stage `flow`) train the flow decoder while its loss does not reach the
    encoder; `freeze_encoder` keeps the encoder fixed throughout (decoder-only training).
    The two-stage recipe is stage `mtd`, then stage `flow` with `--init`.
    """

    mtd_weight: float = 1.0
    flow_weight: float = 1.0
    mtd_warmup_steps: int = 0
    decoder_warmup_steps: int = 0
    freeze_encoder: bool = False


@dataclass
class TrainConfig:
    preset: str = "tiny"
    stage: Stage = Stage.MTD
    shards: str = ""
    test_shards: str = ""
    out: str = "runs/omni-id"
    init: str = ""                     # encoder checkpoint for the flow stage
    resume: bool = False
    max_steps: int = 100
    batch_size: int = 4                # per process
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 50
    keep_checkpoints: int = 3
    eval_every: int = 0                # 0: no eval during training (needs test_shards)
    eval_samples: int = 16
    eval_inputs: tuple[int, ...] = (1, 3, 5, 7)
    eval_arcface: str = ""             # ArcFace ONNX for ID similarity ("" = not measured)
    eval_pose: bool = True             # FaceMesh head-pose error, when mediapipe is installed
    max_nonfinite: int = 5             # consecutive non-finite steps before stopping
    # How long a process waits for the others (checkpoints, rank 0's evaluation: FLUX sampling
    # at the paper's size takes minutes) before it fails; NCCL's own default is 10 minutes.
    dist_timeout_s: int = 3600
    device: str = "auto"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    mtd: MTDConfig = field(default_factory=MTDConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


def tiny() -> TrainConfig:
    """CPU-sized: 64 px, patch 8, dims 64-96. Trains in seconds on two cores."""
    return TrainConfig(preset="tiny")


def paper() -> TrainConfig:
    """The paper's recipe: CLIP ViT-H/14 (fine-tuned) -> 256 x 1280 identity tokens, inputs at
    the backbone's 224 px, targets at the build's 512 px crops, the flow decoder FLUX.1-dev +
    IP-Adapter in latent space; stage `joint` warms up with the MTD alone for 10k steps.

    Block counts and decoder sizes are our choices where the paper's text does not give them.
    """
    return TrainConfig(
        preset="paper",
        max_steps=100_000,
        batch_size=16,
        log_every=50,
        ckpt_every=2000,
        backbone=BackboneConfig(
            name=BackboneName.TIMM, timm_name="vit_huge_patch14_clip_224",
            weights="weights/vit_huge_patch14_clip_224.pth", grad_checkpointing=True,
        ),
        encoder=EncoderConfig(num_tokens=256, dim=1280, heads=16, cross_blocks=4, self_blocks=4),
        mtd=MTDConfig(patch_size=16, dim=768, heads=12, cross_blocks=4, self_blocks=4),
        flow=FlowConfig(patch_size=16, dim=768, heads=12, depth=12, prompt_tokens=8,
                        decoder=FlowDecoderKind.FLUX, flux_path="weights/FLUX.1-dev",
                        prompt_embeds="weights/flux-prompt.safetensors",
                        flux_grad_checkpointing=True, flux_dtype=WeightDtype.BFLOAT16,
                        sample_steps=28),
        data=DataConfig(image_size=224, target_size=512, shuffle_buffer=2000, workers=8,
                        samples_per_epoch=100_000),
        optim=OptimConfig(lr=1e-4, backbone_lr_scale=0.1, warmup_steps=2000, ema_decay=0.9999),
        objective=ObjectiveConfig(mtd_warmup_steps=10_000),
        eval_every=5000,
    )


PRESETS = {"tiny": tiny, "paper": paper}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}, expected one of {sorted(PRESETS)}")
    return PRESETS[name]()


def to_dict(config: Any) -> dict:
    """A plain nested dict (tuples become lists, enums their values) for `weights_only` loads."""
    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def from_dict(cls: type, values: dict) -> Any:
    """Rebuild a (nested) config dataclass; unknown keys are ignored, missing keys default."""
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, kind = values[f.name], hints[f.name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            value = kind(value)
        elif typing.get_origin(kind) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


# The settings that fix the encoder's / the whole model's architecture (dotted paths): a run
# that starts from a checkpoint takes these from the checkpoint's config, never from the CLI.
ENCODER_SETTINGS = ("backbone", "encoder", "data.image_size")
MODEL_SETTINGS = ENCODER_SETTINGS + ("data.target_size", "mtd", "flow")
# Where the frozen files lie, not what they hold: part of "flow" above, but a value other than
# the preset's (`--flux`, `--prompt-embeds`) wins over the checkpoint's, because the files may
# have moved since it was saved (a resume on another machine or mount).
LOCATION_SETTINGS = ("flow.flux_path", "flow.prompt_embeds", "flow.flux_vae", "flow.flux_config")


def get_setting(config: Any, path: str) -> Any:
    for name in path.split("."):
        config = getattr(config, name)
    return config


def set_setting(config: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for name in parents:
        config = getattr(config, name)
    setattr(config, last, value)


def relocate(config: Any, locations: dict[str, str]) -> list[tuple[str, str, str]]:
    """Point `config` at where the frozen files lie now: each non-empty value of `locations`
    (a `LOCATION_SETTINGS` path -> a path on disk) replaces the one in `config`. Returns the
    (setting, old, new) triples that changed."""
    changed = []
    for path, value in locations.items():
        old = get_setting(config, path)
        if value and value != old:
            set_setting(config, path, value)
            changed.append((path, old, value))
    return changed


def copy_settings(target: Any, source: Any, paths: tuple[str, ...]) -> None:
    """Copy the settings at `paths` (dotted) from one config to another (deep copies)."""
    for path in paths:
        set_setting(target, path, copy.deepcopy(get_setting(source, path)))
