"""Train the Omni-ID encoder: `python -m training.train --preset tiny --stage mtd ...`.

Stage `mtd` trains encoder + Masked Transformer Decoder; stage `flow` starts the encoder from an
MTD checkpoint (`--init`) and trains it with the flow-matching decoder. Under `torchrun` every
process trains on its own shards (DDP; gloo on CPU, nccl on CUDA).

Outputs under `--out`: `checkpoint-<step>.pt` (torch.load(weights_only=True)), `metrics.jsonl`
(rows with at least `step` and `loss`), `data-rank<r>.json` (shards seen, skipped samples).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from training import checkpoint as ckpt
from training.config import PRESETS, TrainConfig, from_dict, preset, to_dict
from training.data import STATS_FIELDS, IdentityStream
from training.engine import EMA, NonFiniteLossError, OmniID, StepRunner, build_optimizer, lr_factor


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="named configuration (tiny: CPU tests; paper: CLIP-H, 256 x 1280 tokens)")
    p.add_argument("--stage", choices=("mtd", "flow"), default="mtd", help="training stage")
    p.add_argument("--shards", required=True,
                   help="training shard URLs: paths, brace patterns, file:, http(s)://, pipe:")
    p.add_argument("--test-shards", default="", help="held-out shards for an eval at the end")
    p.add_argument("--out", required=True, help="output directory (checkpoints, metrics)")
    p.add_argument("--init", default="", help="checkpoint whose encoder starts the flow stage")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--max-steps", type=int, help="optimisation steps in total")
    p.add_argument("--batch-size", type=int, help="identities per step and process")
    p.add_argument("--n-in", type=int, help="input images per identity (default 3)")
    p.add_argument("--n-tgt", type=int, help="target images per identity (default 8)")
    p.add_argument("--mask-ratio", type=float, help="MTD: fraction of patches hidden (0.95)")
    p.add_argument("--loss", choices=("l1", "l2"), help="MTD reconstruction loss")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, help="linear warmup steps")
    p.add_argument("--grad-clip", type=float, help="max gradient norm (0: off)")
    p.add_argument("--ema-decay", type=float, help="EMA of encoder weights (0: off)")
    p.add_argument("--image-size", type=int, help="model resolution in pixels")
    p.add_argument("--workers", type=int, help="DataLoader workers per process")
    p.add_argument("--shuffle-buffer", type=int, help="samples in the shuffle buffer")
    p.add_argument("--samples-per-epoch", type=int, help="samples per process and epoch")
    p.add_argument("--backbone-weights", help="local weight file of a timm backbone")
    p.add_argument("--ckpt-every", type=int, help="save a checkpoint every N steps")
    p.add_argument("--keep-checkpoints", type=int, help="keep the newest K checkpoints")
    p.add_argument("--log-every", type=int, help="write a metrics row every N steps")
    p.add_argument("--max-nonfinite", type=int,
                   help="stop after this many non-finite steps in a row")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


_FLAG_TARGETS = {
    "max_steps": ("max_steps",), "batch_size": ("batch_size",), "n_in": ("data", "n_in"),
    "n_tgt": ("data", "n_tgt"), "mask_ratio": ("mtd", "mask_ratio"), "loss": ("mtd", "loss"),
    "lr": ("optim", "lr"), "warmup_steps": ("optim", "warmup_steps"),
    "grad_clip": ("optim", "grad_clip"), "ema_decay": ("optim", "ema_decay"),
    "image_size": ("data", "image_size"), "workers": ("data", "workers"),
    "shuffle_buffer": ("data", "shuffle_buffer"),
    "samples_per_epoch": ("data", "samples_per_epoch"),
    "backbone_weights": ("backbone", "weights"), "ckpt_every": ("ckpt_every",),
    "keep_checkpoints": ("keep_checkpoints",), "log_every": ("log_every",),
    "max_nonfinite": ("max_nonfinite",), "seed": ("seed",), "device": ("device",),
}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = preset(args.preset)
    config.stage, config.shards, config.test_shards = args.stage, args.shards, args.test_shards
    config.out, config.init, config.resume = args.out, args.init, args.resume
    for flag, path in _FLAG_TARGETS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        target = config
        for name in path[:-1]:
            target = getattr(target, name)
        setattr(target, path[-1], value)
    return config


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


def setup_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if world > 1:
        return torch.distributed.get_rank(), world
    return 0, 1


class MetricsLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def adopt_encoder(config: TrainConfig, model: OmniID, init_path: str) -> None:
    """Start the encoder from another run's checkpoint (flow stage from the MTD stage)."""
    state = ckpt.load(init_path)
    missing, unexpected = model.encoder.load_state_dict(ckpt.encoder_state(state, prefer_ema=False),
                                                        strict=False)
    if missing or unexpected:
        raise ValueError(f"--init {init_path}: encoder mismatch, missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} (same --preset as the MTD run?)")


def init_config_from(config: TrainConfig, init_path: str) -> None:
    """The encoder architecture comes from the init checkpoint; its weights replace timm's."""
    saved = from_dict(TrainConfig, ckpt.load(init_path)["config"])
    config.backbone, config.encoder = saved.backbone, saved.encoder
    config.backbone.weights = ""
    config.data.image_size = saved.data.image_size


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Run training as configured; returns a summary (last loss, steps, output paths)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank, world = setup_distributed(device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(config.seed + rank)
    np.random.seed((config.seed + rank) % 2**32)
    torch.manual_seed(config.seed + rank)

    resume_state = ckpt.load_latest(out) if config.resume else None
    if resume_state is not None:
        saved = from_dict(TrainConfig, resume_state["config"])
        config.backbone, config.encoder = saved.backbone, saved.encoder
        config.mtd, config.flow, config.data.image_size = saved.mtd, saved.flow, saved.data.image_size
        config.backbone.weights = ""  # the checkpoint holds the (fine-tuned) backbone
    elif config.init:
        init_config_from(config, config.init)
    if config.stage == "flow" and not config.init and resume_state is None:
        print("note: flow stage without --init: the encoder starts from scratch / timm weights")

    model = OmniID(config).to(device)
    if config.init and resume_state is None:
        adopt_encoder(config, model, config.init)
    optimizer = build_optimizer(model, config.optim, fused=device.type == "cuda")
    ema = EMA(model.encoder, config.optim.ema_decay) if config.optim.ema_decay > 0 else None
    step, data_state = 0, {"epoch": 0, "batches": 0, "positions": []}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if ema is not None and resume_state.get("ema"):
            ema.module.load_state_dict(resume_state["ema"])
        step = int(resume_state["step"])
        data_state = resume_state["data"][rank] if rank < len(resume_state["data"]) else data_state
        ckpt.restore_rng(resume_state["rng"][rank] if rank < len(resume_state["rng"])
                         else resume_state["rng"][0])
        print(f"resumed from {resume_state['path']} at step {step}")
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    runner = StepRunner(trained, optimizer, config.optim, config.max_nonfinite, device, ema,
                        model.encoder, distributed=world > 1)

    dataset = IdentityStream(config.shards, config.data, config.batch_size, config.seed)
    # Its own generator: a loader draws a seed when iterated, which must not shift the global
    # RNG stream (masks, noise) between an uninterrupted and a resumed run.
    loader = DataLoader(dataset, batch_size=None, num_workers=config.data.workers,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed))
    metrics = MetricsLog(out / "metrics.jsonl", enabled=rank == 0)
    if rank == 0 and resume_state is None:
        (out / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    stream_stats: dict[int, torch.Tensor] = {}
    shards_seen: set[str] = set()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=config.max_steps, initial=step, desc=f"{config.stage}", unit="step")

    def save() -> None:
        states = gather_states(world, data_state, ckpt.capture_rng())
        if rank == 0:
            state = {
                "format": ckpt.CHECKPOINT_FORMAT, "config": to_dict(config),
                "stage": config.stage, "step": step, "model": model.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": {"name": "warmup_cosine", "step": step},
                "rng": [s["rng"] for s in states], "data": [s["data"] for s in states],
            }
            ckpt.atomic_save(state, ckpt.checkpoint_path(out, step))
            ckpt.prune(out, config.keep_checkpoints)
        if world > 1:
            torch.distributed.barrier()

    last_loss, window_start, window_samples = float("nan"), time.perf_counter(), 0
    epoch = data_state["epoch"]
    dataset.set_epoch(epoch, data_state["positions"], data_state["batches"])
    try:
        while step < config.max_steps:
            positions = list(data_state["positions"])
            batches = data_state["batches"]
            for batch in loader:
                stream = int(batch["stream"])
                positions += [0] * (stream + 1 - len(positions))
                positions[stream] = int(batch["position"])
                batches += 1
                stream_stats[stream] = batch["stats"]
                shards_seen.update(batch["urls"])
                result = runner(batch, lr_factor(step, config.optim, config.max_steps))
                step += 1
                data_state = {"epoch": epoch, "batches": batches, "positions": positions}
                window_samples += batch["inputs"].shape[0]
                if result.applied:
                    last_loss = result.loss
                else:
                    metrics.write({"step": step, "loss": None, "skipped": "nonfinite",
                                   "grad_norm": None})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{result.loss:.4f}")
                if result.applied and (step % config.log_every == 0 or step == config.max_steps):
                    elapsed = time.perf_counter() - window_start
                    totals = sum(stream_stats.values()).tolist() if stream_stats else []
                    metrics.write({
                        "step": step, "loss": result.loss, "grad_norm": result.grad_norm,
                        "lr": optimizer.param_groups[-1]["lr"], "epoch": epoch,
                        "samples_per_s": window_samples * world / max(elapsed, 1e-9),
                        "data": dict(zip(STATS_FIELDS, totals, strict=False)),
                    })
                    window_start, window_samples = time.perf_counter(), 0
                if step % config.ckpt_every == 0 or step == config.max_steps:
                    save()
                if step >= config.max_steps:
                    break
            else:
                if batches == 0:
                    raise RuntimeError(
                        f"no usable samples in {config.shards!r} (see data-rank{rank}.json): "
                        f"check the URLs and that the shards follow training/sample_format.py")
                epoch += 1
                data_state = {"epoch": epoch, "batches": 0, "positions": []}
                dataset.set_epoch(epoch)
    except NonFiniteLossError as exc:
        metrics.write({"step": step, "loss": None, "stopped": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
        totals = sum(stream_stats.values()).tolist() if stream_stats else [0] * len(STATS_FIELDS)
        (out / f"data-rank{rank}.json").write_text(json.dumps({
            "rank": rank, "world": world, "shards_seen": sorted(shards_seen),
            "stats": dict(zip(STATS_FIELDS, totals, strict=False))}, indent=1))

    summary = {"step": step, "loss": last_loss, "out": str(out),
               "checkpoint": str(ckpt.checkpoint_path(out, step))}
    if config.test_shards and rank == 0:
        from training.eval import evaluate_model
        rows = evaluate_model(model, config, config.test_shards, n_inputs=(config.data.n_in,),
                              max_samples=config.eval_samples, device=device)
        for row in rows:
            metrics.write({"step": step, "loss": row["loss"], "eval": row})
        summary["eval"] = rows
    if world > 1:
        torch.distributed.barrier()
    return summary


def gather_states(world: int, data_state: dict, rng_state: dict) -> list[dict]:
    """Every rank's data position and RNG state, gathered on all ranks (rank order)."""
    mine = {"data": data_state, "rng": rng_state}
    if world == 1:
        return [mine]
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return gathered


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    try:
        summary = train(config, progress=not args.no_progress)
    except NonFiniteLossError:
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    print(json.dumps({k: v for k, v in summary.items() if k != "eval"}))
    for row in summary.get("eval", []):
        print("eval " + json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
