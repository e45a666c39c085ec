"""Identity tokens for a set of face images:
`python -m training.encode IMAGES... --checkpoint C --out tokens.pt` (or `--out tokens.npy`).

The images are aligned face crops of one person (as in the shards); any number of them. The
output holds one N x D tensor: `.pt` as {"tokens", "images"} of plain tensors and strings
(`torch.load(path, weights_only=True)` reads it), `.npy` as a float32 array.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from mfhq_contract.terminal import terminal
from training import checkpoint as ckpt
from training import storage
from training.config import TrainConfig
from training.data import decode_rgb
from training.errors import InputError, report_errors
from training.model import OmniIDEncoder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def load_encoder(path: str, device: torch.device | str = "cpu",
                 prefer_ema: bool = True) -> tuple[OmniIDEncoder, TrainConfig]:
    state = ckpt.load(path)
    config = ckpt.saved_config(state)
    encoder = OmniIDEncoder(config.backbone, config.encoder, config.data.image_size)
    encoder.load_state_dict(ckpt.encoder_state(state, prefer_ema))
    return encoder.to(device).eval(), config


def image_paths(items: list[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted)."""
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(item)
    return paths


@torch.no_grad()
def encode_images(encoder: OmniIDEncoder, paths: list[Path], image_size: int) -> torch.Tensor:
    """-> identity tokens [N, D] (float32, CPU) for the images together."""
    images, failures = [], []
    for path in paths:
        try:
            images.append(decode_rgb(path.read_bytes(), image_size))
        except Exception as exc:
            failures.append(f"{path} ({exc})")
    if not images:
        shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more"
                                           if len(failures) > 3 else "")
        raise NoReadableImagesError(
            f"none of the images could be read: {shown or 'no image files given'}. Give "
            f"JPEG / PNG / WebP face crops of one person (files or folders)")
    for failure in failures:  # some were readable: encode those, name the others
        print(f"warning: skipped {failure}", file=terminal())
    device = next(encoder.parameters()).device
    batch = torch.from_numpy(np.stack(images))[None].to(device).float() / 255.0
    return encoder(batch)[0].float().cpu()


def save_tokens(tokens: torch.Tensor, paths: list[Path], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, tokens.numpy().astype(np.float32))
    else:
        torch.save({"tokens": tokens.contiguous(), "images": [str(p) for p in paths]}, out)


def build_parser(prog: str = "python -m training.encode") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="face images (or folders of them) of one person")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint-*.pt from training.train (a path or an s3:// / gs:// URL)")
    p.add_argument("--out", required=True, help="output file, .pt or .npy")
    p.add_argument("--no-ema", action="store_true", help="use raw, not EMA, encoder weights")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    storage.add_options_argument(p, "an s3:// / gs:// --checkpoint")
    p.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    return p


class NoReadableImagesError(InputError):
    pass


def main(argv: list[str] | None = None, prog: str = "python -m training.encode") -> int:
    args = build_parser(prog).parse_args(argv)
    return report_errors(lambda: encode_command(args), args.verbose)


def encode_command(args: argparse.Namespace) -> int:
    storage.set_options(args.storage_options)
    encoder, config = load_encoder(args.checkpoint, args.device, prefer_ema=not args.no_ema)
    paths = image_paths(args.images)
    tokens = encode_images(encoder, paths, config.data.image_size)
    save_tokens(tokens, paths, args.out)
    print(f"wrote {tuple(tokens.shape)} identity tokens for {len(paths)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
