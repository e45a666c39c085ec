"""Held-out evaluation as the paper measures it:
`python -m training.eval --checkpoint C --shards URLS [--arcface w600k_r50.onnx]`.

For each number of input images k (default 1, 3, 5, 7) one deterministic pass over the test
shards; per identity one fixed order of its views, inputs = the first k, target = the last, so
every k is scored on the same unseen view. Per decoder the checkpoint has:
- `<dec>_loss`: the training loss at fixed masks / noise / timesteps;
- a generated target, from the target's pose as the only context: the MTD reconstructs it from
  its 5 % visible patches (the mask ratio it trained with); the flow decoder samples it from pure
  noise conditioned on the target's five landmarks (no target pixels enter);
- `<dec>_l1_face`: L1 error of the generation inside the face mask (pixels in [-1, 1]);
- `<dec>_id_similarity` (with `--arcface`): cosine similarity of ArcFace embeddings of the
  generated and the real target, both aligned by the 5-point similarity to ArcFace's template
  (landmarks from mediapipe FaceMesh; where it finds no face, the record's `landmarks5` from the
  build's detector; `<dec>_align_fallbacks` counts those);
- `<dec>_pose_error` (mediapipe installed, not `--no-pose`): mean of |dyaw| + |dpitch| + |droll|
  in degrees between FaceMesh + solvePnP head poses of generated and real target, over the pairs
  where FaceMesh finds both faces (`<dec>_pose_pairs`; null when there are none).
`loss` is the stage's objective (weighted sum for `joint`). The encoder scored is the EMA one
where the checkpoint has it (`--no-ema`: the raw weights); every row says which (`weights`).
The command prints a small table (decoder, k, ID similarity, pose error, reconstruction);
`--json` prints one JSON row per k with every metric instead. Under torchrun every process
scores its slice of the test shards and the results are gathered. During training,
`--eval-every` runs the same evaluation on the same (EMA) weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mfhq_contract.terminal import quiet_terminal
from training import checkpoint as ckpt
from training import storage
from training.blocks import patchify, unpatchify
from training.config import TrainConfig, relocate
from training.data import EvalStream, check_shards
from training.errors import report_errors
from training.model import OmniID, to_signed, to_unit
from training.mtd import random_patch_mask


def load_model(path: str, device: torch.device | str, prefer_ema: bool = True,
               flux_path: str = "", prompt_embeds: str = "") -> tuple[OmniID, TrainConfig]:
    state = ckpt.load(path)
    config = ckpt.saved_config(state)
    # The frozen FLUX weights and the prompt file may have moved since training (the
    # checkpoint's own copy of the prompt tensors replaces the file's on load).
    relocate(config, {"flow.flux_path": flux_path, "flow.prompt_embeds": prompt_embeds})
    model = OmniID(config)
    model.load_checkpoint_state(state["model"])
    model.encoder_weights = "raw"   # which encoder weights are scored, said in the output
    if prefer_ema and state.get("ema"):
        model.encoder.load_state_dict(state["ema"])
        model.encoder_weights = "ema"
    return model.to(device).eval(), config


FACEMESH_CONFIDENCE = 0.3   # generated faces are softer than video frames


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """[M, 3, H, W] in [-1, 1] -> uint8 [M, H, W, 3]."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


class FaceScorer:
    """ArcFace ID similarity and head-pose error of generated faces against real targets.

    Every face is measured by the build's own code (`mfhq_faces.measure.measure_face`: FaceMesh
    around the face box the crop template implies, head pose, five points) and embedded by the
    build's embedder (`mfhq_faces.embedders`), so the evaluation's "same person" and "same pose"
    are the dataset's. `embedder` takes any `mfhq_faces.embedders` embedder instead of ArcFace.
    """

    def __init__(self, arcface_path: str = "", pose: bool = True, embedder=None):
        from mfhq_faces.embedders import ArcFaceEmbedder

        self.embedder = embedder or (ArcFaceEmbedder(arcface_path) if arcface_path else None)
        self.landmarker = None
        self.note = ""
        if pose or self.embedder is not None:
            try:
                from mfhq_faces.landmarks import FaceMeshLandmarker

                self.landmarker = FaceMeshLandmarker(min_confidence=FACEMESH_CONFIDENCE)
            except ImportError as exc:  # pose needs it; alignment falls back to the records
                self.note = f"pose error and landmark alignment need mediapipe ({exc})"
        self.pose = pose and self.landmarker is not None

    def measure(self, image: np.ndarray):
        """The face geometry of one aligned uint8 [S, S, 3] crop, or None."""
        from mfhq_faces.measure import aligned_face_box, measure_face

        if self.landmarker is None:
            return None
        side = image.shape[0]
        return measure_face(image, aligned_face_box(side), self.landmarker, side)

    def score(self, generated: np.ndarray, real: np.ndarray, record_points: np.ndarray) -> dict:
        """uint8 [M, H, W, 3] generated and real faces; record landmarks [M, 5, 2] in [0, 1]."""
        from mfhq_faces.align import ALIGN_TEMPLATE, usable_points
        from mfhq_faces.measure import pose_error

        side = real.shape[1]
        default = ALIGN_TEMPLATE * side   # the crop taken as aligned already
        sims, errors, fallbacks = [], [], 0
        for gen, tgt, rec in zip(generated, real, record_points, strict=True):
            found_t, found_g = self.measure(tgt), self.measure(gen)
            pts_t = found_t.points5 if found_t is not None else None
            pts_g = found_g.points5 if found_g is not None else None
            if pts_t is None:
                fallbacks += 1
                pts_t = rec * side if usable_points(rec * side, side) else default
            if pts_g is None:  # generated in the target's pose: its landmarks are the best guess
                fallbacks += 1
                pts_g = pts_t
            if self.embedder is not None:
                a, b = self.embedder.embed([gen, tgt], [pts_g, pts_t])
                sims.append(float(a @ b))
            if self.pose and found_t is not None and found_g is not None:
                errors.append(pose_error(found_g.pose, found_t.pose))
        return {"sims": sims, "errors": errors, "fallbacks": fallbacks}


class Evaluator:
    """The evaluation of the module doc for one model; `run` returns one row per k.

    Under torch.distributed every rank evaluates its slice of the test shards (split by node)
    and the per-rank sums and per-face scores are gathered, so every rank returns the same rows
    for the whole test set at 1/world of the wall time; `max_samples` is the total, split over
    the ranks."""

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu", seed: int = 0,
                 batch_size: int = 4, arcface: str | None = None, pose: bool | None = None,
                 sample_steps: int | None = None, embedder=None):
        self.config, self.device, self.seed, self.batch_size = config, device, seed, batch_size
        self.sample_steps = sample_steps
        arcface = config.eval_arcface if arcface is None else arcface
        pose = config.eval_pose if pose is None else pose
        self.scorer = (FaceScorer(arcface, pose, embedder=embedder) if embedder is not None
                       else FaceScorer(arcface, pose))
        self.encoder: torch.nn.Module | None = None

    def scores_identity(self) -> bool:
        # FaceScorer is moving to mfhq_faces; its identity model's attribute changes name there
        return getattr(self.scorer, "embedder", getattr(self.scorer, "arcface", None)) is not None

    @torch.no_grad()
    def run(self, model: OmniID, shards: str, n_inputs: tuple[int, ...] = (1, 3, 5, 7),
            max_samples: int | None = None, encoder: torch.nn.Module | None = None,
            weights: str | None = None) -> list[dict]:
        """`encoder`: the encoder to score in place of `model.encoder` (training passes its EMA
        copy, as `load_model` puts the EMA weights into the model). `weights` names them in
        every row ("ema" / "raw"; default: "ema" when `encoder` is given)."""
        was_training = model.training
        model.eval()
        self.encoder = encoder
        weights = weights or ("ema" if encoder is not None else "raw")
        # as in training: bf16 autocast on CUDA (FLUX's frozen base is bf16 there)
        with torch.autocast("cuda", dtype=torch.bfloat16,
                            enabled=torch.device(self.device).type == "cuda"):
            rows = [self.pass_for(model, shards, n_in, max_samples) for n_in in n_inputs]
        model.train(was_training)
        self.encoder = None
        for row in rows:
            row["weights"] = weights
        return rows

    def pass_for(self, model: OmniID, shards: str, n_in: int, max_samples: int | None) -> dict:
        rank, world = distributed_rank_world()
        if max_samples is not None and world > 1:  # the total, split over the ranks
            max_samples = max(0, (max_samples - rank + world - 1) // world)
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        stream = EvalStream(shards, self.config.data, self.batch_size, n_in=n_in,
                            max_samples=max_samples, seed=self.seed)
        part = {"sums": {}, "count": 0, "scores": {}, "skipped": 0}
        sums, scores = part["sums"], part["scores"]
        for batch in DataLoader(stream, batch_size=None):
            values, faces = self.batch_values(model, batch, generator)
            n = batch["inputs"].shape[0]
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value * n
            part["count"] += n
            real = to_uint8_hwc(to_signed(batch["targets"].flatten(0, 1)))
            points = batch["landmarks"].flatten(0, 1).numpy()
            for name, generated in faces.items():
                result = self.scorer.score(to_uint8_hwc(generated), real, points)
                merged = scores.setdefault(name, {"sims": [], "errors": [], "fallbacks": 0})
                merged["sims"] += result["sims"]
                merged["errors"] += result["errors"]
                merged["fallbacks"] += result["fallbacks"]
        part["skipped"] = stream.stats.samples_skipped + stream.stats.members_skipped
        if world > 1:
            parts: list = [None] * world
            torch.distributed.all_gather_object(parts, part)
            part = merge_parts(parts)
        return self.row(model, n_in, part)

    def row(self, model: OmniID, n_in: int, part: dict) -> dict:
        count, sums = part["count"], part["sums"]
        row: dict = {"stage": str(model.stage), "n_in": n_in, "samples": count}
        row.update({k: v / max(count, 1) for k, v in sums.items()})
        if count == 0:
            row["loss"] = None
        for name, merged in part["scores"].items():
            if self.scores_identity():
                row[f"{name}_id_similarity"] = (float(np.mean(merged["sims"])) if merged["sims"]
                                                else None)
                row[f"{name}_align_fallbacks"] = merged["fallbacks"]
            row[f"{name}_pose_error"] = (float(np.mean(merged["errors"])) if merged["errors"]
                                         else None)
            row[f"{name}_pose_pairs"] = len(merged["errors"])
        if self.scorer.note:
            row["note"] = self.scorer.note
        row["skipped"] = part["skipped"]
        return row

    def batch_values(self, model: OmniID, batch: dict,
                     generator: torch.Generator) -> tuple[dict[str, float], dict]:
        device = self.device
        inputs, targets, masks, landmarks = (batch[k].to(device) for k in
                                             ("inputs", "targets", "masks", "landmarks"))
        encoder = self.encoder if self.encoder is not None else model.encoder
        ids = encoder(to_unit(inputs)).repeat_interleave(targets.shape[1], dim=0)
        flat = to_signed(targets.flatten(0, 1))
        face = (masks.flatten(0, 1) > 127).float()
        flat_landmarks = landmarks.flatten(0, 1)
        values: dict[str, float] = {}
        faces: dict[str, torch.Tensor] = {}
        phase, total = model.default_phase, 0.0
        if model.has_mtd:
            mtd = model.mtd
            hidden = random_patch_mask(flat.shape[0], mtd.num_patches, mtd.config.mask_ratio,
                                       generator).to(device)
            out = mtd.loss(ids, flat, face, hidden=hidden)
            values["mtd_loss"] = out["loss"].item()
            total += phase.mtd_weight * values["mtd_loss"]
            # the visible 5 % stay the target's own patches (the pose context), the rest predicted
            patches = patchify(flat, mtd.patch)
            composed = torch.where(hidden.unsqueeze(-1), out["pred"].float(), patches)
            faces["mtd"] = unpatchify(composed, mtd.patch, 3, flat.shape[-2], flat.shape[-1])
        if model.has_flow:
            m = flat.shape[0]
            t = torch.rand(m, generator=generator).to(device)
            noise = torch.randn(model.flow.latent_shape(m), generator=generator).to(device)
            values["flow_loss"] = model.flow.loss(ids, flat, t=t, noise=noise,
                                                  landmarks=flat_landmarks)["loss"].item()
            total += phase.flow_weight * values["flow_loss"]
            sample_gen = torch.Generator(device="cpu").manual_seed(self.seed)
            faces["flow"] = model.flow.sample(ids, flat_landmarks, steps=self.sample_steps,
                                              generator=sample_gen)
        values["loss"] = total
        for name, generated in faces.items():
            err = ((generated.float() - flat).abs() * face).sum() / (face.sum() * 3).clamp(min=1)
            values[f"{name}_l1_face"] = err.item()
        return values, faces


def distributed_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def merge_parts(parts: list[dict]) -> dict:
    """One evaluation pass's per-rank sums and per-face scores, combined."""
    out = {"sums": {}, "count": 0, "scores": {}, "skipped": 0}
    for part in parts:
        out["count"] += part["count"]
        out["skipped"] += part["skipped"]
        for key, value in part["sums"].items():
            out["sums"][key] = out["sums"].get(key, 0.0) + value
        for name, merged in part["scores"].items():
            into = out["scores"].setdefault(name, {"sims": [], "errors": [], "fallbacks": 0})
            into["sims"] += merged["sims"]
            into["errors"] += merged["errors"]
            into["fallbacks"] += merged["fallbacks"]
    return out


def curve_table(rows: list[dict]) -> str:
    """The metrics against k as a plain-text table (every metric the rows have)."""
    keys = [k for k in rows[0] if k.endswith(("_loss", "_l1_face", "_id_similarity",
                                              "_pose_error"))] if rows else []
    lines = ["k    " + "  ".join(f"{k:>20}" for k in keys)]
    for row in rows:
        cells = [("-" if row.get(k) is None else f"{row[k]:.4f}") for k in keys]
        lines.append(f"{row['n_in']:<4} " + "  ".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


SUMMARY_COLUMNS = (("ID similarity", "_id_similarity"), ("pose error", "_pose_error"),
                   ("reconstruction", "_l1_face"))


def summary_table(rows: list[dict]) -> str:
    """The table a person reads: per decoder and k, ID similarity (higher is better), pose
    error in degrees and reconstruction L1 inside the face (lower is better)."""
    decoders = [k[:-len("_l1_face")] for k in (rows[0] if rows else {}) if k.endswith("_l1_face")]
    header = f"{'decoder':<8} {'k':>3} " + " ".join(f"{name:>15}" for name, _ in SUMMARY_COLUMNS)
    lines = [header]
    for decoder in decoders:
        for row in rows:
            cells = []
            for _, suffix in SUMMARY_COLUMNS:
                value = row.get(decoder + suffix)
                cells.append("-" if value is None else f"{value:.4f}")
            lines.append(f"{decoder:<8} {row['n_in']:>3} " + " ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def build_parser(prog: str = "python -m training.eval") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint-*.pt from training.train (a path or an s3:// / gs:// URL)")
    p.add_argument("--shards", required=True,
                   help="test shard URLs (brace patterns; paths, s3://, gs://, http(s)://, pipe:)")
    p.add_argument("--n-inputs", type=int, nargs="+", default=list(TrainConfig().eval_inputs),
                   help="numbers of input images to evaluate")
    p.add_argument("--max-samples", type=int, help="identities per pass (default: all)")
    p.add_argument("--batch-size", type=int, default=4, help="identities per batch")
    p.add_argument("--arcface", default="", help="ArcFace ONNX (w600k_r50.onnx): ID similarity")
    p.add_argument("--no-pose", action="store_true", help="skip FaceMesh head-pose error")
    p.add_argument("--sample-steps", type=int, help="flow sampler steps (default: the config's)")
    p.add_argument("--flux", default="", help="FLUX folder, if it moved since training")
    p.add_argument("--prompt-embeds", default="",
                   help="FLUX prompt embeddings file, if it moved since training")
    p.add_argument("--no-ema", action="store_true", help="use raw, not EMA, encoder weights")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed masks / noise")
    p.add_argument("--out", help="also append the rows to this JSONL file")
    p.add_argument("--json", action="store_true",
                   help="print one JSON row per k (every metric) instead of the table")
    storage.add_options_argument(p, "an s3:// / gs:// --checkpoint or test shards")
    p.add_argument("--log-file", default="",
                   help="where mediapipe / TF Lite messages go (default: TMPDIR/mfhq-eval.log)")
    p.add_argument("--verbose", action="store_true",
                   help="library messages on the terminal, tracebacks with errors")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m training.eval") -> int:
    args = build_parser(prog).parse_args(argv)
    log_file = args.log_file or str(Path(tempfile.gettempdir()) / "mfhq-eval.log")
    with quiet_terminal(log_file, enabled=not args.verbose):
        return report_errors(lambda: evaluate_command(args), args.verbose)


def evaluate_command(args: argparse.Namespace) -> int:
    storage.set_options(args.storage_options)
    check_shards(args.shards)
    device = torch.device(args.device)
    rank, world = setup_eval_processes(device)
    model, config = load_model(args.checkpoint, device, prefer_ema=not args.no_ema,
                               flux_path=args.flux, prompt_embeds=args.prompt_embeds)
    evaluator = Evaluator(config, device, args.seed, args.batch_size, arcface=args.arcface,
                          pose=not args.no_pose, sample_steps=args.sample_steps)
    rows = evaluator.run(model, args.shards, tuple(args.n_inputs), args.max_samples,
                         weights=model.encoder_weights)
    if rank != 0:
        return 0
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    samples = rows[0]["samples"] if rows else 0
    print(f"{args.checkpoint}: {samples} held-out identities, encoder weights: "
          f"{model.encoder_weights}" + (" (--no-ema: the raw ones)"
                                        if model.encoder_weights == "ema" else ""))
    print(summary_table(rows))
    if rows and rows[0].get("note"):
        print(f"note: {rows[0]['note']}")
    return 0


def setup_eval_processes(device: torch.device) -> tuple[int, int]:
    """Under torchrun every process scores its slice of the test shards (`Evaluator`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return distributed_rank_world()


if __name__ == "__main__":
    sys.exit(main())
