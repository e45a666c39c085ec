"""A tiny FLUX.1 folder in diffusers layout, written by the test with random weights.

The real classes (`FluxTransformer2DModel`, `AutoencoderKL`, `CLIPTextModel`, `T5EncoderModel`)
at a few layers and small hidden sizes, saved with `save_pretrained` exactly as the released
FLUX.1-dev folder is laid out (transformer/, vae/, text_encoder/, tokenizer/, text_encoder_2/,
tokenizer_2/), so the trainer's real loading code (`from_pretrained`, local files only) runs.
The tokenizers are word-level fast tokenizers over the prompt's words (the real ones are BPE /
SentencePiece files; AutoTokenizer loads either from the folder).
"""

from __future__ import annotations

from pathlib import Path

import torch

PROMPT_WORDS = ["photo", "of", "a", "person", "."]
TEXT_WIDTH = 32     # T5 d_model = FLUX joint_attention_dim
POOLED_WIDTH = 16   # CLIP hidden size = FLUX pooled_projection_dim


def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "</s>": 2}
    vocab.update({w: i + 3 for i, w in enumerate(PROMPT_WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="</s>").save_pretrained(path)


def write_tiny_flux(root: Path, seed: int = 0, text_encoders: bool = True) -> Path:
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    torch.manual_seed(seed)
    FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, pooled_projection_dim=POOLED_WIDTH,
        guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    ).save_pretrained(root / "transformer")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, scaling_factor=0.3611, shift_factor=0.1159,
    ).save_pretrained(root / "vae")
    if text_encoders:
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        CLIPTextModel(CLIPTextConfig(
            vocab_size=16, hidden_size=POOLED_WIDTH, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=POOLED_WIDTH,
            eos_token_id=2, bos_token_id=0, pad_token_id=0,
        )).save_pretrained(root / "text_encoder")
        T5EncoderModel(T5Config(
            vocab_size=16, d_model=TEXT_WIDTH, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
        )).save_pretrained(root / "text_encoder_2")
        _tokenizer(root / "tokenizer")
        _tokenizer(root / "tokenizer_2")
    return root
