"""Held-out evaluation: `python -m training.eval --checkpoint C --shards URLS`.

For each number of input images (default 1, 3, 5, 7) one deterministic pass over the test shards
reports the stage's reconstruction error of a view that is not among the inputs (per identity:
one fixed order of its views, inputs = the first k, target = the last, so every k is scored on
the same unseen view): the MTD's masked loss inside the face mask (fixed
masks), or for a flow checkpoint the flow-matching loss at fixed noise and timesteps plus the L1
error, inside the face mask, of faces regenerated from their half-noised targets. With
`--arcface w600k_r50.onnx` it adds the ArcFace cosine similarity between regenerated and real
targets (flow checkpoints). Pose error needs a head-pose model, which this trainer does not
bundle: it is reported as missing rather than guessed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from training import checkpoint as ckpt
from training.config import Stage, TrainConfig
from training.data import EvalStream
from training.model import OmniID, to_signed, to_unit


class ArcFace:
    """ArcFace recognizer ONNX (insightface `w600k_r50.onnx`): 112 x 112 RGB -> embedding."""

    def __init__(self, path: str):
        if not Path(path).is_file():
            raise FileNotFoundError(f"ArcFace model not found: {path} (insightface buffalo_l's "
                                    f"w600k_r50.onnx); omit --arcface to skip ID similarity")
        import onnxruntime  # only eval with --arcface needs it
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.size = self.session.get_inputs()[0].shape[2]
        if not isinstance(self.size, int):
            self.size = 112

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """images [M, 3, H, W] in [-1, 1], face crops; the centre is what ArcFace's crop covers."""
        h = images.shape[-1]
        margin = int(round(h * 0.1))  # FFHQ-style crops hold more forehead/background
        crop = images[..., margin:h - margin, margin:h - margin]
        crop = torch.nn.functional.interpolate(crop.float(), size=(self.size, self.size),
                                               mode="bilinear", align_corners=False)
        out = self.session.run(None, {self.input: crop.cpu().numpy().astype(np.float32)})[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-8)


def load_model(path: str, device: torch.device, prefer_ema: bool = True) -> tuple[OmniID,
                                                                                 TrainConfig]:
    state = ckpt.load(path)
    config = ckpt.saved_config(state)
    model = OmniID(config)
    model.load_state_dict(state["model"])
    if prefer_ema and state.get("ema"):
        model.encoder.load_state_dict(state["ema"])
    return model.to(device).eval(), config


@torch.no_grad()
def evaluate_model(model: OmniID, config: TrainConfig, shards: str,
                   n_inputs: tuple[int, ...] = (1, 3, 5, 7), max_samples: int | None = None,
                   batch_size: int = 4, device: torch.device | str = "cpu", seed: int = 0,
                   arcface: ArcFace | None = None, t_start: float = 0.5) -> list[dict]:
    was_training = model.training
    model.eval()
    rows = []
    for n_in in n_inputs:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        stream = EvalStream(shards, config.data, batch_size, n_in=n_in, max_samples=max_samples,
                            seed=seed)
        sums: dict[str, float] = {}
        count = 0
        for batch in DataLoader(stream, batch_size=None):
            inputs, targets, masks = (batch[k].to(device) for k in ("inputs", "targets", "masks"))
            ids = model.encoder(to_unit(inputs)).repeat_interleave(targets.shape[1], dim=0)
            flat = to_signed(targets.flatten(0, 1))
            face = (masks.flatten(0, 1) > 127).float()
            values = {}
            if model.stage == Stage.MTD:
                hidden = _fixed_mask(model, flat.shape[0], generator).to(device)
                values["loss"] = model.mtd.loss(ids, flat, face, hidden=hidden)["loss"].item()
            else:
                m = flat.shape[0]
                t = torch.rand(m, generator=generator).to(device)
                noise = torch.randn(flat.shape, generator=generator).to(device)
                values["loss"] = model.flow.loss(ids, flat, t=t, noise=noise)["loss"].item()
                sample_gen = torch.Generator(device=flat.device).manual_seed(seed)
                regenerated = model.flow.sample(ids, tuple(flat.shape), generator=sample_gen,
                                                start=flat, t_start=t_start)
                err = ((regenerated - flat).abs() * face).sum() / (face.sum() * 3).clamp(min=1)
                values["regen_l1_face"] = err.item()
                if arcface is not None:
                    a, b = arcface.embed(regenerated), arcface.embed(flat)
                    values["arcface_similarity"] = float((a * b).sum(axis=1).mean())
            n = inputs.shape[0]
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value * n
            count += n
        row = {"stage": str(model.stage), "n_in": n_in, "samples": count}
        row.update({k: v / max(count, 1) for k, v in sums.items()})
        if count == 0:
            row["loss"] = None
        row["skipped"] = stream.stats.samples_skipped + stream.stats.members_skipped
        rows.append(row)
    model.train(was_training)
    return rows


def _fixed_mask(model: OmniID, m: int, generator: torch.Generator) -> torch.Tensor:
    from training.mtd import random_patch_mask
    return random_patch_mask(m, model.mtd.num_patches, model.mtd.config.mask_ratio, generator)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint-*.pt from training.train")
    p.add_argument("--shards", required=True, help="test shard URLs (brace patterns allowed)")
    p.add_argument("--n-inputs", type=int, nargs="+", default=[1, 3, 5, 7],
                   help="numbers of input images to evaluate")
    p.add_argument("--max-samples", type=int, help="identities per pass (default: all)")
    p.add_argument("--batch-size", type=int, default=4, help="identities per batch")
    p.add_argument("--arcface", help="ArcFace ONNX (w600k_r50.onnx) for ID similarity")
    p.add_argument("--no-ema", action="store_true", help="use raw, not EMA, encoder weights")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed masks / noise")
    p.add_argument("--out", help="also append the rows to this JSONL file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    model, config = load_model(args.checkpoint, device, prefer_ema=not args.no_ema)
    arcface = ArcFace(args.arcface) if args.arcface else None
    rows = evaluate_model(model, config, args.shards, tuple(args.n_inputs), args.max_samples,
                          args.batch_size, device, args.seed, arcface)
    for row in rows:
        row["pose_error"] = None  # no head-pose model bundled with the trainer
        print(json.dumps(row))
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
