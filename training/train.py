"""Train the Omni-ID encoder: `python -m training.train --preset tiny --stage mtd ...`.

Stage `joint` (the paper's multi-decoder objective) trains the encoder with the Masked Transformer
Decoder alone for `--mtd-warmup-steps`, then with the MTD and flow-matching losses together
(`--mtd-weight`, `--flow-weight`; `--decoder-warmup-steps` first trains the flow decoder without
its gradient reaching the encoder). The two-stage recipe: stage `mtd`, then stage `flow` from the
MTD checkpoint (`--init`). `--decoder flux` uses frozen FLUX + IP-Adapter (`--flux`,
`--prompt-embeds`); `dit` the small pixel DiT. Under `torchrun` every process trains on its own
shards (DDP over the trainable parts only, `wrap_trainable`; gloo on CPU, nccl on CUDA).

Outputs under `--out`, a local folder or an fsspec URL (`training.storage`): `checkpoint-<step>.pt`
(torch.load(weights_only=True)), `metrics.jsonl` (rows with at least `step` and `loss`),
`data-rank<r>.json` (shards seen, skipped samples). `--resume` and `--init` give every rank the
same checkpoint without a shared filesystem (`agreed_checkpoint`). A bad input (missing file,
shards that match nothing, not a shard, weights in no known layout) ends in one line and exit
code 2 (`training.errors`); library output goes to a log file (`mfhq_contract.terminal`).

This module is the CLI and the set-up (device, processes, seeds, model, optimiser, resume);
`training.engine.TrainingLoop` runs the loop.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mfhq_contract.terminal import quiet_terminal, terminal
from training import checkpoint as ckpt
from training import storage
from training.config import (
    ENCODER_SETTINGS,
    LOCATION_SETTINGS,
    MODEL_SETTINGS,
    PRESETS,
    FlowDecoderKind,
    ReconLoss,
    Stage,
    TrainConfig,
    copy_settings,
    get_setting,
    preset,
    relocate,
    set_setting,
    tiny,
    to_dict,
)
from training.data import IdentityStream, check_shards
from training.engine import LoopState, NonFiniteLossError, StepRunner, TrainingLoop
from training.errors import report_errors
from training.model import OmniID, needs_unused_parameters
from training.optim import EMA, build_optimizer


@dataclass(frozen=True)
class Flag:
    """A CLI flag that overrides one config setting (dotted path); its default is the preset's."""

    name: str
    setting: str
    help: str
    type: type = int
    choices: tuple | None = None


FLAGS = (
    Flag("--max-steps", "max_steps", "optimisation steps in total"),
    Flag("--batch-size", "batch_size", "identities per step and process"),
    Flag("--n-in", "data.n_in", "input images per identity"),
    Flag("--n-tgt", "data.n_tgt", "target images per identity"),
    Flag("--mask-ratio", "mtd.mask_ratio", "MTD: fraction of patches hidden", float),
    Flag("--loss", "mtd.loss", "MTD reconstruction loss", ReconLoss, tuple(ReconLoss)),
    Flag("--lr", "optim.lr", "peak learning rate", float),
    Flag("--warmup-steps", "optim.warmup_steps", "linear warmup steps"),
    Flag("--grad-clip", "optim.grad_clip", "max gradient norm (0: off)", float),
    Flag("--ema-decay", "optim.ema_decay", "EMA of encoder weights (0: off)", float),
    Flag("--image-size", "data.image_size", "encoder input resolution in pixels"),
    Flag("--target-size", "data.target_size", "decoder target resolution (0: --image-size)"),
    Flag("--mtd-weight", "objective.mtd_weight", "weight of the MTD loss", float),
    Flag("--flow-weight", "objective.flow_weight", "weight of the flow-matching loss", float),
    Flag("--mtd-warmup-steps", "objective.mtd_warmup_steps",
         "stage joint: steps with the MTD loss alone before the joint objective"),
    Flag("--decoder-warmup-steps", "objective.decoder_warmup_steps",
         "steps that train the flow decoder before its loss reaches the encoder"),
    Flag("--freeze-encoder", "objective.freeze_encoder",
         "keep the encoder fixed (train the decoders only)", bool),
    Flag("--decoder", "flow.decoder", "flow-matching decoder", FlowDecoderKind,
         tuple(FlowDecoderKind)),
    Flag("--flux", "flow.flux_path",
         "local FLUX.1-dev: a diffusers folder, or a single transformer .safetensors", str),
    Flag("--flux-vae", "flow.flux_vae",
         "FLUX VAE (ae.safetensors or a diffusers vae/ folder; needed with a single-file --flux)",
         str),
    Flag("--flux-config", "flow.flux_config",
         "folder with transformer/ and vae/ config.json for a single-file --flux "
         "(default: FLUX.1-dev's)", str),
    Flag("--prompt-embeds", "flow.prompt_embeds",
         "prompt embeddings file from `python -m training.prompt_embeds`", str),
    Flag("--eval-every", "eval_every", "evaluate on --test-shards every N steps (0: at the end)"),
    Flag("--eval-samples", "eval_samples", "held-out identities per evaluation"),
    Flag("--eval-arcface", "eval_arcface", "ArcFace ONNX (w600k_r50.onnx) for ID similarity",
         str),
    Flag("--workers", "data.workers", "DataLoader workers per process"),
    Flag("--shuffle-buffer", "data.shuffle_buffer", "samples in the shuffle buffer"),
    Flag("--samples-per-epoch", "data.samples_per_epoch", "samples per process and epoch"),
    Flag("--backbone-weights", "backbone.weights", "local weight file of a timm backbone", str),
    Flag("--ckpt-every", "ckpt_every", "save a checkpoint every N steps"),
    Flag("--keep-checkpoints", "keep_checkpoints", "keep the newest K checkpoints"),
    Flag("--log-every", "log_every", "write a metrics row every N steps"),
    Flag("--max-nonfinite", "max_nonfinite", "stop after this many non-finite steps in a row"),
    Flag("--seed", "seed", "random seed"),
    Flag("--dist-timeout", "dist_timeout_s",
         "seconds a process waits for the others (checkpoint, evaluation) before it fails"),
    Flag("--device", "device", "auto | cpu | cuda | cuda:N", str),
)


def build_parser(prog: str = "python -m training.train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = tiny()
    p.add_argument("--preset", choices=sorted(PRESETS), default=defaults.preset,
                   help="named configuration (tiny: CPU tests; paper: CLIP-H, 256 x 1280 tokens)")
    p.add_argument("--stage", type=Stage, choices=tuple(Stage), default=defaults.stage,
                   help="training stage")
    p.add_argument("--shards", required=True,
                   help="training shard URLs: paths, brace patterns, file:, s3://, gs:// "
                        "(fsspec), http(s)://, pipe:")
    p.add_argument("--test-shards", default="",
                   help="held-out shards, evaluated every --eval-every steps and at the end")
    p.add_argument("--out", required=True,
                   help="output folder (checkpoints, metrics): a path or an s3:// / gs:// URL")
    p.add_argument("--init", default="",
                   help="checkpoint (path or URL) whose encoder starts this run (e.g. stage flow "
                        "from an MTD run)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    for flag in FLAGS:
        # no argparse default: an absent flag leaves the preset's value
        default = get_setting(defaults, flag.setting)
        shown = f"{flag.help} (tiny: {'none' if default == '' else default})"
        if flag.type is bool:
            p.add_argument(flag.name, action="store_true", default=None, help=shown)
        else:
            p.add_argument(flag.name, type=flag.type, choices=flag.choices, help=shown)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    storage.add_options_argument(p, "s3:// / gs:// URLs in --shards, --out, --init")
    p.add_argument("--log-file", default="",
                   help="where library messages (mediapipe / TF Lite) go (default: "
                        "OUT/mfhq-train.log, or TMPDIR/mfhq-train.log when --out is a URL)")
    p.add_argument("--verbose", action="store_true",
                   help="library messages on the terminal, tracebacks with errors")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = preset(args.preset)
    config.stage, config.shards, config.test_shards = args.stage, args.shards, args.test_shards
    config.out, config.init, config.resume = args.out, args.init, args.resume
    for flag in FLAGS:
        value = getattr(args, flag.name.lstrip("-").replace("-", "_"))
        if value is not None:
            set_setting(config, flag.setting, value)
    return config


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


def setup_distributed(device: torch.device, timeout_s: int) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(seconds=timeout_s))
    if world > 1:
        return torch.distributed.get_rank(), world
    return 0, 1


def adopt_encoder(model: OmniID, init_path: str, state: dict) -> None:
    """Start the encoder from another run's checkpoint (flow stage from the MTD stage)."""
    missing, unexpected = model.encoder.load_state_dict(ckpt.encoder_state(state, prefer_ema=False),
                                                        strict=False)
    if missing or unexpected:
        raise ValueError(f"--init {init_path}: encoder mismatch, missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} (same --preset as the MTD run?)")


BROADCAST_CHUNK = 64 * 2**20  # bytes per broadcast: bounds the extra memory on every rank


def broadcast_bytes(data: bytes | None, rank: int, device: torch.device) -> bytes:
    """Rank 0's `data` on every rank, in chunks (a checkpoint can be tens of GB)."""
    comm = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    length = torch.tensor([len(data) if rank == 0 else 0], dtype=torch.int64, device=comm)
    torch.distributed.broadcast(length, src=0)
    total = int(length.item())
    out = bytearray(total) if rank != 0 else None
    for start in range(0, total, BROADCAST_CHUNK):
        end = min(total, start + BROADCAST_CHUNK)
        if rank == 0:
            chunk = torch.frombuffer(bytearray(data[start:end]), dtype=torch.uint8).to(comm)
        else:
            chunk = torch.empty(end - start, dtype=torch.uint8, device=comm)
        torch.distributed.broadcast(chunk, src=0)
        if rank != 0:
            out[start:end] = chunk.cpu().numpy().tobytes()
    return data if rank == 0 else bytes(out)


def agreed_checkpoint(choose, rank: int, world: int, device: torch.device) -> dict | None:
    """The checkpoint every rank starts from. Rank 0 alone calls `choose()` (the newest
    checkpoint of --out, or --init) and says which file it took; every rank that sees the same
    file (a URL, or a shared filesystem: same path, same size) reads it itself, after rank 0
    has chosen; if any rank does not see it (node-local disks), rank 0 broadcasts the file's
    bytes and each rank loads them with the same `weights_only` rule. So all ranks resume from
    the same step and state, with or without a shared filesystem."""
    if world == 1:
        return choose()
    state = choose() if rank == 0 else None
    chosen = [None if state is None else (state["path"], storage.size(state["path"]))]
    torch.distributed.broadcast_object_list(chosen, src=0)
    if chosen[0] is None:
        return None
    path, nbytes = chosen[0]
    sees = torch.tensor([1 if rank == 0 or storage.size(path) == nbytes else 0])
    if torch.distributed.get_backend() == "nccl":
        sees = sees.to(device)
    torch.distributed.all_reduce(sees, op=torch.distributed.ReduceOp.MIN)
    if int(sees.item()) == 1:
        if rank != 0:
            state = ckpt.load(path)
            state["path"] = path
        return state
    data = broadcast_bytes(storage.read_bytes(path) if rank == 0 else None, rank, device)
    if rank != 0:
        state = ckpt.from_bytes(data, path)
        state["path"] = f"{path} (rank 0's copy)"
    return state


def wrap_trainable(model: OmniID, device: torch.device, config: TrainConfig) -> nn.Module:
    """DDP over what trains: the frozen base weights (FLUX transformer and VAE) are left out of
    DDP's start-up broadcast and of its gradient buckets (every rank loads them from the same
    files; broadcasting FLUX.1-dev's 12 B bf16 weights from rank 0 costs ~24 GB of traffic and
    its bookkeeping). Gradients are views into the buckets (no second copy of them)."""
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in model.named_buffers()
               if name in model.frozen_keys()]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, frozen)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=needs_unused_parameters(config), gradient_as_bucket_view=True)


def adopt_architecture(config: TrainConfig, state: dict, settings: tuple[str, ...]) -> None:
    """Take the architecture from a checkpoint's config; its weights replace timm's file. The
    file locations (`LOCATION_SETTINGS`) the caller set to other than the preset's are kept."""
    defaults = preset(config.preset)
    moved = {path: get_setting(config, path) for path in LOCATION_SETTINGS
             if get_setting(config, path) != get_setting(defaults, path)}
    copy_settings(config, ckpt.saved_config(state), settings)
    for path, old, new in relocate(config, moved):
        print(f"note: {path} = {new} (the checkpoint has {old})")


def restore(state: dict, model: OmniID, optimizer: torch.optim.Optimizer, ema: EMA | None,
            rank: int) -> LoopState:
    model.load_checkpoint_state(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state.get("ema"):
        ema.module.load_state_dict(state["ema"])
    loop_state = LoopState(step=int(state["step"]))
    if rank < len(state["data"]):
        loop_state.data = state["data"][rank]
    ckpt.restore_rng(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
    print(f"resumed from {state['path']} at step {loop_state.step}", file=terminal())
    return loop_state


class MissingEvalModelError(FileNotFoundError):
    pass


def check_eval_files(config: TrainConfig) -> None:
    """The evaluation's files, checked before the first step rather than at the first
    evaluation (`--eval-every` steps in, with up to `--ckpt-every` steps unsaved)."""
    if config.test_shards and config.eval_arcface and not Path(config.eval_arcface).is_file():
        raise MissingEvalModelError(
            f"ArcFace model not found: {config.eval_arcface}. Put insightface buffalo_l's "
            f"w600k_r50.onnx there or omit --eval-arcface to skip ID similarity.")


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Run training as configured; returns a summary (last loss, steps, output paths)."""
    check_shards(config.shards, "--shards")
    if config.test_shards:
        check_shards(config.test_shards, "--test-shards")
    check_eval_files(config)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank, world = setup_distributed(device, config.dist_timeout_s)
    storage.RunDir(config.out).make()
    random.seed(config.seed + rank)
    np.random.seed((config.seed + rank) % 2**32)
    torch.manual_seed(config.seed + rank)

    resume_state = init_state = None
    if config.resume:
        resume_state = agreed_checkpoint(lambda: ckpt.load_latest(config.out), rank, world,
                                         device)
    if resume_state is None and config.init:
        init_state = agreed_checkpoint(lambda: dict(ckpt.load(config.init), path=config.init),
                                       rank, world, device)
    if resume_state is not None:
        adopt_architecture(config, resume_state, MODEL_SETTINGS)
    elif init_state is not None:
        adopt_architecture(config, init_state, ENCODER_SETTINGS)
    if config.stage == Stage.FLOW and not config.init and resume_state is None:
        print("note: flow stage without --init: the encoder starts from scratch / timm weights")

    model = OmniID(config).to(device)
    if init_state is not None:
        adopt_encoder(model, config.init, init_state)
    optimizer = build_optimizer(model, config.optim, fused=device.type == "cuda")
    ema = EMA(model.encoder, config.optim.ema_decay) if config.optim.ema_decay > 0 else None
    state = LoopState()
    if resume_state is not None:
        state = restore(resume_state, model, optimizer, ema, rank)
    trained = wrap_trainable(model, device, config) if world > 1 else model
    runner = StepRunner(trained, optimizer, config.optim, config.max_nonfinite, device, ema,
                        model.encoder, distributed=world > 1)

    dataset = IdentityStream(config.shards, config.data, config.batch_size, config.seed)
    # Its own generator: a loader draws a seed when iterated, which must not shift the global
    # RNG stream (masks, noise) between an uninterrupted and a resumed run.
    loader = DataLoader(dataset, batch_size=None, num_workers=config.data.workers,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed))
    if rank == 0 and resume_state is None:
        storage.RunDir(config.out).write_text("config.json",
                                              json.dumps(to_dict(config), indent=1))
    loop = TrainingLoop(config, model, runner, optimizer, ema, dataset, loader, state, rank,
                        world, device)
    return loop.run(progress)


def main(argv: list[str] | None = None, prog: str = "python -m training.train") -> int:
    args = build_parser(prog).parse_args(argv)
    config = config_from_args(args)
    log_file = args.log_file or (
        str(Path(tempfile.gettempdir()) / "mfhq-train.log") if storage.is_url(config.out)
        else str(Path(config.out) / "mfhq-train.log"))
    with quiet_terminal(log_file, enabled=not args.verbose):
        return report_errors(lambda: train_command(args, config), args.verbose)


def train_command(args: argparse.Namespace, config: TrainConfig) -> int:
    storage.set_options(args.storage_options)
    try:
        summary = train(config, progress=not args.no_progress)
    except NonFiniteLossError:
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(json.dumps({k: v for k, v in summary.items() if k != "eval"}))
    for row in summary.get("eval", []):
        print("eval " + json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
