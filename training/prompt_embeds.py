"""The fixed prompt's text embeddings for the FLUX decoder, computed once:
`python -m training.prompt_embeds --flux weights/FLUX.1-dev --out weights/flux-prompt.safetensors`.

Runs FLUX's own text encoders from the local diffusers folder (`tokenizer/` + `text_encoder/`:
CLIP, its pooled output; `tokenizer_2/` + `text_encoder_2/`: T5, its last hidden state, padded to
`--max-length` tokens) exactly as `diffusers.FluxPipeline.encode_prompt` does, and writes
`prompt_embeds` [1, L, 4096] and `pooled_prompt_embeds` [1, 768] (float32) with the prompt in
the file's metadata. The trainer loads this file and never needs `transformers` or the text
encoders' ~10 GB of weights itself. Nothing is downloaded (`local_files_only`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from training.flux import PROMPT, PROMPT_KEYS, require_file

T5_MAX_LENGTH = 512  # FLUX.1-dev's max_sequence_length


@torch.no_grad()
def compute_prompt_embeds(flux_dir: str | Path, prompt: str = PROMPT,
                          max_length: int = T5_MAX_LENGTH) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    root = require_file(str(flux_dir), "FLUX diffusers folder",
                        "It must hold tokenizer/, text_encoder/, tokenizer_2/, text_encoder_2/.")
    clip_tok = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    clip = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True).eval()
    t5_tok = AutoTokenizer.from_pretrained(root / "tokenizer_2", local_files_only=True)
    t5 = T5EncoderModel.from_pretrained(root / "text_encoder_2", local_files_only=True).eval()
    clip_ids = clip_tok([prompt], padding="max_length", truncation=True, return_tensors="pt",
                        max_length=clip.config.max_position_embeddings).input_ids
    pooled = clip(clip_ids, output_hidden_states=False).pooler_output
    t5_ids = t5_tok([prompt], padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt").input_ids
    embeds = t5(t5_ids, output_hidden_states=False)[0]
    return dict(zip(PROMPT_KEYS, (embeds.float().contiguous(), pooled.float().contiguous()),
                    strict=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.prompt_embeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flux", required=True, help="local FLUX.1-dev folder in diffusers layout")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--prompt", default=PROMPT, help="the fixed prompt")
    p.add_argument("--max-length", type=int, default=T5_MAX_LENGTH, help="T5 tokens")
    args = p.parse_args(argv)
    from safetensors.torch import save_file

    tensors = compute_prompt_embeds(args.flux, args.prompt, args.max_length)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.out, metadata={"prompt": args.prompt, "flux": str(args.flux)})
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    print(f"wrote {args.out}: {shapes} for {args.prompt!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
