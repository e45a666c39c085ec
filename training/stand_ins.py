"""Stand-in weight files of the real formats, for tests and the GPU check (no real weights can
be downloaded on our machines; the loading code under test is the real one).

- `write_tiny_flux(root)`: a FLUX.1 folder in diffusers layout (transformer/, vae/,
  text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/) written with `save_pretrained` from the
  real classes (`FluxTransformer2DModel`, `AutoencoderKL`, `CLIPTextModel`, `T5EncoderModel`) at a
  few layers and small widths with random weights; `flux_size=FluxSize(...)` writes larger ones
  (the GPU check's reduced-depth FLUX at the real widths). The tokenizers are word-level fast
  tokenizers over the prompt's words (the released ones are BPE / SentencePiece files;
  AutoTokenizer loads either).
- ArcFace's stand-in ONNX is the face toolkit's (`mfhq_faces.stand_ins.write_arcface_stand_in`).
- `open_clip_vit_layout(...)`: names and shapes of an open_clip CLIP ViT checkpoint, written
  from open_clip's own module names (`visual.conv1`, `visual.class_embedding`,
  `visual.transformer.resblocks.N.attn.in_proj_weight`, `visual.proj`, ... and the text tower's
  keys, which a vision backbone must ignore); ViT-H-14 by default, `layers` fewer for a file
  small enough for CI with every per-layer shape unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

PROMPT_WORDS = ["photo", "of", "a", "person", "."]
TEXT_WIDTH = 32     # T5 d_model = FLUX joint_attention_dim (tiny)
POOLED_WIDTH = 16   # CLIP hidden size = FLUX pooled_projection_dim (tiny)


@dataclass(frozen=True)
class FluxSize:
    layers: int = 1                    # dual-stream blocks (FLUX.1: 19)
    single_layers: int = 1             # single-stream blocks (FLUX.1: 38)
    heads: int = 2                     # FLUX.1: 24
    head_dim: int = 8                  # FLUX.1: 128
    axes_dims_rope: tuple[int, int, int] = (2, 2, 4)   # FLUX.1: (16, 56, 56); sums to head_dim
    text_width: int = TEXT_WIDTH       # FLUX.1: 4096
    pooled_width: int = POOLED_WIDTH   # FLUX.1: 768
    latent_channels: int = 4           # FLUX.1: 16
    vae_channels: tuple[int, ...] = (8, 16)             # FLUX.1: (128, 256, 512, 512)
    vae_layers: int = 1                # FLUX.1: 2
    vae_groups: int = 8                # FLUX.1: 32


TINY_FLUX = FluxSize()
# FLUX.1-dev's transformer and VAE configuration (its released config.json files)
FLUX_DEV = FluxSize(layers=19, single_layers=38, heads=24, head_dim=128,
                    axes_dims_rope=(16, 56, 56), text_width=4096, pooled_width=768,
                    latent_channels=16, vae_channels=(128, 256, 512, 512), vae_layers=2,
                    vae_groups=32)
# FLUX.1-dev's widths with 2 + 4 of its 19 + 38 blocks: the GPU check's reduced-depth decoder
REDUCED_FLUX = dataclasses.replace(FLUX_DEV, layers=2, single_layers=4)
T5_TOKENS = 512


def build_flux_modules(size: FluxSize = TINY_FLUX) -> tuple[torch.nn.Module, torch.nn.Module]:
    """FLUX's transformer and VAE classes at `size`, random weights (on the current device)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * size.latent_channels, num_layers=size.layers,
        num_single_layers=size.single_layers, attention_head_dim=size.head_dim,
        num_attention_heads=size.heads, joint_attention_dim=size.text_width,
        pooled_projection_dim=size.pooled_width, guidance_embeds=True,
        axes_dims_rope=size.axes_dims_rope)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=size.latent_channels,
        block_out_channels=size.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(size.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(size.vae_channels),
        layers_per_block=size.vae_layers, norm_num_groups=size.vae_groups,
        scaling_factor=0.3611, shift_factor=0.1159,   # FLUX.1's VAE
        use_quant_conv=False, use_post_quant_conv=False)
    return transformer, vae


def stand_in_prompt(size: FluxSize, tokens: int = T5_TOKENS) -> dict[str, torch.Tensor]:
    """Random prompt embeddings of FLUX's shapes (when no text encoders are at hand)."""
    g = torch.Generator().manual_seed(0)
    return {"prompt_embeds": torch.randn(1, tokens, size.text_width, generator=g),
            "pooled_prompt_embeds": torch.randn(1, size.pooled_width, generator=g)}


def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "</s>": 2}
    vocab.update({w: i + 3 for i, w in enumerate(PROMPT_WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="</s>").save_pretrained(path)


def write_tiny_flux(root: Path, seed: int = 0, text_encoders: bool = True,
                    size: FluxSize = TINY_FLUX, dtype: torch.dtype = torch.float32) -> Path:
    torch.manual_seed(seed)
    for name, module in zip(("transformer", "vae"), build_flux_modules(size), strict=True):
        # (cast only when asked: diffusers warns on any `.to(dtype)` of a model)
        (module if dtype == torch.float32 else module.to(dtype)).save_pretrained(root / name)
    if text_encoders:
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        CLIPTextModel(CLIPTextConfig(
            vocab_size=16, hidden_size=size.pooled_width, intermediate_size=32,
            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
            projection_dim=size.pooled_width, eos_token_id=2, bos_token_id=0, pad_token_id=0,
        )).save_pretrained(root / "text_encoder")
        T5EncoderModel(T5Config(
            vocab_size=16, d_model=size.text_width, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
        )).save_pretrained(root / "text_encoder_2")
        _tokenizer(root / "tokenizer")
        _tokenizer(root / "tokenizer_2")
    return root


def write_prompt_stand_in(path: Path, size: FluxSize, tokens: int = T5_TOKENS) -> Path:
    from safetensors.torch import save_file

    save_file(stand_in_prompt(size, tokens), str(path), metadata={"prompt": "stand-in"})
    return path


def open_clip_vit_layout(width: int = 1280, layers: int = 32, patch: int = 14,
                         image_size: int = 224, mlp_width: int = 5120, embed_dim: int = 1024,
                         text_width: int = 1024, text_layers: int = 1) -> dict[str, tuple]:
    """open_clip `ViT-H-14` checkpoint keys -> shapes (`layers` / `text_layers` adjustable)."""
    grid = image_size // patch
    shapes: dict[str, tuple] = {
        "visual.class_embedding": (width,),
        "visual.positional_embedding": (grid * grid + 1, width),
        "visual.proj": (width, embed_dim),
        "visual.conv1.weight": (width, 3, patch, patch),
        "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
        "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,),
    }
    for i in range(layers):
        block = f"visual.transformer.resblocks.{i}."
        shapes.update({
            block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
            block + "attn.in_proj_weight": (3 * width, width),
            block + "attn.in_proj_bias": (3 * width,),
            block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
            block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
            block + "mlp.c_fc.weight": (mlp_width, width), block + "mlp.c_fc.bias": (mlp_width,),
            block + "mlp.c_proj.weight": (width, mlp_width), block + "mlp.c_proj.bias": (width,),
        })
    # the text tower (no `visual.` prefix): present in the file, not part of the image backbone
    shapes.update({"positional_embedding": (77, text_width), "text_projection":
                   (text_width, embed_dim), "logit_scale": (), "token_embedding.weight":
                   (49408, text_width), "ln_final.weight": (text_width,)})
    for i in range(text_layers):
        shapes[f"transformer.resblocks.{i}.attn.in_proj_weight"] = (3 * text_width, text_width)
    return shapes
