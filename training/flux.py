"""The paper's flow decoder: frozen FLUX (`diffusers.FluxTransformer2DModel` + its
`AutoencoderKL`) with IP-Adapter identity attention, trained in the VAE's latent space.

Contract:
- `FluxDecoder(config, id_dim, image_size)` loads `transformer/` and `vae/` from the local
  diffusers folder `config.flux_path`, or the transformer from a single file there (diffusers'
  `from_single_file`: BFL's original layout or diffusers') and the VAE from `config.flux_vae`
  (a file or a folder), with FLUX.1-dev's configs or `config.flux_config`'s (nothing is
  downloaded: `local_files_only`), freezes both,
  and adds the trainable parts: diffusers' own `FluxIPAdapterAttnProcessor` on every dual-stream
  block (decoupled attention `softmax(q k_ip^T) v_ip` whose keys/values project the Omni-ID
  tokens; `to_v_ip` starts at zero, so the untrained adapter leaves FLUX's output unchanged) and,
  with `pose_condition`, a zero-initialised projection of the target's landmark maps added to
  FLUX's patch embedding (`PoseInput`). Only these and the encoder train.
- The fixed prompt ("photo of a person.") enters as text embeddings computed once by
  `python -m training.prompt_embeds` and read from `config.prompt_embeds` (a `.safetensors`
  with `prompt_embeds` [1, L, joint_attention_dim] and `pooled_prompt_embeds` [1, pooled_dim]).
- `frozen_keys` names the state-dict entries that come from the base weights; checkpoints leave
  them out (`OmniID.checkpoint_state`) and a load takes them from `flux_path` again.
- Latents: `codec.encode` = (VAE mean - shift_factor) * scaling_factor, packed 2 x 2 into FLUX's
  tokens with (0, row, col) image ids, as `diffusers.FluxPipeline` does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.config import FlowConfig
from training.errors import InputError
from training.flow import POSE_CHANNELS, ConditionalFlowDecoder, landmark_maps

PROMPT = "photo of a person."
PROMPT_KEYS = ("prompt_embeds", "pooled_prompt_embeds")


class MissingFluxWeightsError(FileNotFoundError):
    pass


def require_file(path: str, what: str, how: str) -> Path:
    if not path or not Path(path).exists():
        raise MissingFluxWeightsError(f"{what} not found: {path!r}. {how}")
    return Path(path)


def load_prompt_embeds(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    require_file(path, "FLUX prompt embeddings",
                 "Compute them once with `python -m training.prompt_embeds --flux FLUX_DIR "
                 "--out weights/flux-prompt.safetensors` and pass --prompt-embeds.")
    tensors = load_file(path)
    missing = [k for k in PROMPT_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"{path} lacks {missing}; write it with `python -m training.prompt_embeds`")
    return {k: tensors[k].float() for k in PROMPT_KEYS}


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[M, C, H, W] -> [M, (H/2)(W/2), 4C], FLUX's 2 x 2 patch tokens."""
    m, c, h, w = latents.shape
    x = latents.view(m, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(m, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    m = tokens.shape[0]
    x = tokens.view(m, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(m, channels, height, width)


def image_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(0, row, col) per packed token, for FLUX's rotary position embedding."""
    rows = torch.arange(height // 2, device=device, dtype=torch.float32)
    cols = torch.arange(width // 2, device=device, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    return torch.cat([torch.zeros(grid.shape[0], 1, device=device), grid], dim=1)


class FluxVAECodec(nn.Module):
    """Frozen `AutoencoderKL`: images in [-1, 1] <-> FLUX's scaled latents."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.channels = vae.config.latent_channels
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scale = vae.config.scaling_factor
        self.shift = vae.config.shift_factor or 0.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        mean = self.vae.encode(images.to(dtype)).latent_dist.mode()
        return ((mean - self.shift) * self.scale).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scale + self.shift).to(dtype)).sample.float()


class PoseInput(nn.Module):
    """FLUX's patch embedding plus a zero-initialised projection of the pose maps: the input
    tokens carry [latent tokens | pose tokens] along the channels and are split here."""

    def __init__(self, base: nn.Linear, pose_dim: int):
        super().__init__()
        self.base = base
        self.in_features = base.in_features
        self.pose = nn.Linear(pose_dim, base.out_features)
        nn.init.zeros_(self.pose.weight)
        nn.init.zeros_(self.pose.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        latent, pose = tokens[..., :self.in_features], tokens[..., self.in_features:]
        return self.base(latent) + self.pose(pose.float()).to(latent.dtype)


FLUX_LAYOUTS = ("a FLUX.1-dev folder in diffusers layout (transformer/, vae/, text_encoder*/, "
                "tokenizer*/)", "a single-file transformer checkpoint (.safetensors: Black Forest "
                "Labs' flux1-dev.safetensors, or a diffusers-layout file) with --flux-vae (ae."
                "safetensors, or a diffusers vae/ folder)")


def flux_dev_config_dir() -> Path:
    """FLUX.1-dev's released transformer/ and vae/ config.json files (no weights), written once
    from the classes at FLUX.1-dev's configuration: what `from_single_file` reads to build a
    single-file checkpoint without downloading anything (`--flux-config` names another)."""
    import tempfile

    from training.stand_ins import FLUX_DEV, build_flux_modules

    root = Path(tempfile.gettempdir()) / "mfhq-flux1-dev-config"
    if not (root / "vae" / "config.json").is_file():
        with torch.device("meta"):
            transformer, vae = build_flux_modules(FLUX_DEV)
        transformer.save_config(root / "transformer")
        vae.save_config(root / "vae")
    return root


def load_flux_modules(config: FlowConfig) -> tuple[nn.Module, nn.Module, dict]:
    """(transformer, vae, prompt embeddings) from the local files the config names: a diffusers
    folder, or a single transformer file (diffusers' `from_single_file`) plus `flux_vae`."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    root = require_file(config.flux_path, "FLUX weights",
                        "Point --flux at one of: " + "; or ".join(FLUX_LAYOUTS) + ".")
    dtype = getattr(torch, str(config.flux_dtype))
    configs = Path(config.flux_config) if config.flux_config else None
    common = {"torch_dtype": dtype, "local_files_only": True}
    if root.is_file():
        configs = configs or flux_dev_config_dir()
        try:
            transformer = FluxTransformer2DModel.from_single_file(
                str(root), config=str(configs), subfolder="transformer", **common)
        except Exception as exc:  # diffusers names what it could not map
            raise FluxLayoutError(
                f"--flux {root} is not a FLUX transformer checkpoint diffusers can read ({exc}). "
                f"Expected one of: " + "; or ".join(FLUX_LAYOUTS)) from None
        vae_path = require_file(config.flux_vae, "FLUX VAE (--flux-vae)",
                                "A single-file --flux needs the VAE too: BFL's ae.safetensors "
                                "or a diffusers vae/ folder.")
    elif (root / "transformer").is_dir():
        transformer = FluxTransformer2DModel.from_pretrained(root, subfolder="transformer",
                                                             **common)
        vae_path = Path(config.flux_vae) if config.flux_vae else root / "vae"
    else:
        raise FluxLayoutError(f"--flux {root} has no transformer/ folder. Expected one of: "
                              + "; or ".join(FLUX_LAYOUTS))
    if vae_path.is_file():
        vae = AutoencoderKL.from_single_file(str(vae_path), config=str(configs or
                                                                      flux_dev_config_dir()),
                                             subfolder="vae", **common)
    else:
        vae = AutoencoderKL.from_pretrained(vae_path, **common)
    return transformer, vae, load_prompt_embeds(config.prompt_embeds)


class FluxLayoutError(InputError):
    pass


class FluxDecoder(ConditionalFlowDecoder):
    """See the module doc. `modules` = (transformer, vae, prompt embeddings) built elsewhere
    (memory estimates on fake tensors); by default they load from the config's files."""

    def __init__(self, config: FlowConfig, id_dim: int, image_size: int,
                 modules: tuple[nn.Module, nn.Module, dict] | None = None):
        super().__init__(config)
        from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor

        transformer, vae, prompt = modules or load_flux_modules(config)
        transformer.requires_grad_(False).eval()
        vae.requires_grad_(False).eval()
        if config.flux_grad_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.codec = FluxVAECodec(vae)
        self.size = image_size // self.codec.downsample
        if self.size % 2:
            raise ValueError(f"target size {image_size} px gives an odd latent side {self.size}; "
                             f"FLUX packs 2 x 2 latents: use a multiple of "
                             f"{2 * self.codec.downsample}")
        self.transformer = transformer
        self.frozen_keys = {f"transformer.{k}" for k in transformer.state_dict()} | {
            f"codec.vae.{k}" for k in vae.state_dict()}

        inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        processors = {}
        for name, proc in transformer.attn_processors.items():
            if name.startswith("transformer_blocks."):  # dual-stream blocks, as IP-Adapter-FLUX
                ip = FluxIPAdapterAttnProcessor(inner, id_dim, num_tokens=(1,),
                                                scale=config.ip_scale)
                for layer in ip.to_v_ip:  # the identity branch starts closed
                    nn.init.zeros_(layer.weight)
                    nn.init.zeros_(layer.bias)
                processors[name] = ip
            else:
                processors[name] = proc
        transformer.set_attn_processor(processors)
        if config.pose_condition:
            # renamed key of a frozen weight: drop the old name, record the new one
            self.frozen_keys -= {"transformer.x_embedder.weight", "transformer.x_embedder.bias"}
            self.frozen_keys |= {"transformer.x_embedder.base.weight",
                                 "transformer.x_embedder.base.bias"}
            transformer.x_embedder = PoseInput(transformer.x_embedder, 4 * POSE_CHANNELS)
        # persistent: a checkpoint carries the prompt it was trained with (a few MB)
        self.register_buffer("prompt_embeds", prompt["prompt_embeds"])
        self.register_buffer("pooled_prompt_embeds", prompt["pooled_prompt_embeds"])
        if self.prompt_embeds.shape[-1] != transformer.config.joint_attention_dim:
            raise ValueError(f"{config.prompt_embeds}: text width {self.prompt_embeds.shape[-1]} "
                             f"!= FLUX joint_attention_dim {transformer.config.joint_attention_dim}"
                             f"; recompute it from the same FLUX folder")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def latent_shape(self, m: int) -> tuple[int, ...]:
        return (m, self.codec.channels, self.size, self.size)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, id_tokens: torch.Tensor,
                 landmarks: torch.Tensor | None = None) -> torch.Tensor:
        m, c, h, w = x_t.shape
        dtype = self.transformer.dtype
        tokens = pack(x_t)
        if isinstance(self.transformer.x_embedder, PoseInput):
            maps = (landmark_maps(landmarks, h) if landmarks is not None
                    else x_t.new_zeros(m, POSE_CHANNELS, h, w))
            tokens = torch.cat([tokens, pack(maps.to(tokens.dtype))], dim=-1)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((m,), self.config.guidance, device=x_t.device, dtype=dtype)
        out = self.transformer(
            hidden_states=tokens.to(dtype),
            encoder_hidden_states=self.prompt_embeds.to(dtype).expand(m, -1, -1),
            pooled_projections=self.pooled_prompt_embeds.to(dtype).expand(m, -1),
            timestep=t.to(dtype),
            img_ids=image_ids(h, w, x_t.device),
            txt_ids=torch.zeros(self.prompt_embeds.shape[1], 3, device=x_t.device),
            guidance=guidance,
            joint_attention_kwargs={"ip_hidden_states": [id_tokens.to(dtype)]},
            return_dict=False,
        )[0]
        return unpack(out, c, h, w)
