"""Trainer throughput: steps/s, samples/s and (CUDA) model FLOPs utilisation.

    python bench/trainer.py --preset tiny --device cpu --steps 10
    python bench/trainer.py --preset paper --device cuda --steps 20      # on a GPU box

Synthetic uint8 batches of the preset's shape (no data loading, no webdataset needed); the
backbone starts from random weights (no weight file needed). FLOPs per step are counted once
with torch.utils.flop_counter on the meta device (forward + backward of the model, attention
included, no gradient-checkpointing recompute: model FLOPs). MFU uses the
GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s) or --peak-tflops. Prints a table, then one
final line of figures.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import FlowDecoderKind, Stage, TrainConfig, preset  # noqa: E402
from training.data import BATCH_TENSORS  # noqa: E402
from training.engine import StepRunner  # noqa: E402
from training.model import OmniID, phase_at  # noqa: E402
from training.optim import build_optimizer  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}
SDPA_KERNELS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "mem_efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "_scaled_dot_product_attention_math": "math",
}


def synthetic_batch(config: TrainConfig, batch_size: int) -> dict:
    """uint8 inputs at the encoder's size, targets and masks at the decoders', landmarks."""
    g = torch.Generator().manual_seed(0)
    size, target = config.data.image_size, config.data.target_px
    n_in, n_tgt = config.data.n_in, config.data.n_tgt
    masks = torch.zeros(batch_size, n_tgt, 1, target, target, dtype=torch.uint8)
    masks[..., target // 5: target * 4 // 5, target // 5: target * 4 // 5] = 255
    return {"inputs": torch.randint(0, 256, (batch_size, n_in, 3, size, size), generator=g,
                                    dtype=torch.uint8),
            "targets": torch.randint(0, 256, (batch_size, n_tgt, 3, target, target), generator=g,
                                     dtype=torch.uint8),
            "masks": masks, "landmarks": torch.rand(batch_size, n_tgt, 5, 2, generator=g)}


def model_inputs(batch: dict, device: torch.device) -> list[torch.Tensor]:
    return [batch[k].to(device) for k in BATCH_TENSORS]


def count_flops(config: TrainConfig, batch: dict, flux_size=None) -> int:
    """Model FLOPs of one forward + backward, counted on the meta device (no memory, no
    recompute: gradient checkpointing is off for the count, so this is *model* FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    config = copy.deepcopy(config)
    config.backbone.grad_checkpointing = False
    config.flow.flux_grad_checkpointing = False
    with torch.device("meta"):
        modules = flux_stand_in(config, flux_size, torch.device("meta"))
        model = OmniID(config, flux_modules=modules)
        counter = FlopCounterMode(display=False)
        with counter:
            model(*model_inputs(batch, torch.device("meta")),
                  phase=phase_at(config, 10**9))["loss"].backward()
    return counter.get_total_flops()


def flux_stand_in(config: TrainConfig, flux_size, device: torch.device) -> tuple | None:
    """In-memory FLUX modules of `flux_size` (random weights) when the config uses FLUX."""
    if config.stage == Stage.MTD or config.flow.decoder != FlowDecoderKind.FLUX:
        return None
    from training.stand_ins import build_flux_modules, stand_in_prompt
    dtype = getattr(torch, str(config.flow.flux_dtype))
    with device:
        transformer, vae = build_flux_modules(flux_size)
    return transformer.to(dtype), vae.to(dtype), stand_in_prompt(flux_size)


def attention_backend(model: torch.nn.Module, batch: dict, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad(), \
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model(*model_inputs(batch, device))
    names = {e.key.removeprefix("aten::") for e in prof.key_averages()}
    used = sorted({label for op, label in SDPA_KERNELS.items() if op in names})
    return "+".join(used) or "unknown"


def peak_tflops(device: torch.device, override: float) -> float:
    if override:
        return override
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 0.0)


def measure(config: TrainConfig, batch_size: int, device: torch.device, steps: int = 10,
            warmup: int = 3, compile_model: bool = False, peak_override: float = 0.0,
            flux_size=None) -> dict:
    """One configuration's training-step figures: samples/s, model FLOPs, MFU, peak memory,
    attention kernel. FLUX (when the config uses it) is an in-memory stand-in of `flux_size`."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = OmniID(config, flux_modules=flux_stand_in(config, flux_size, device)).to(device)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = build_optimizer(model, config.optim, fused=device.type == "cuda")
    stepped = torch.compile(model) if compile_model else model
    runner = StepRunner(stepped, optimizer, config.optim, 10, device)
    batch = synthetic_batch(config, batch_size)
    phase = phase_at(config, 10**9)
    flops = count_flops(config, batch, flux_size)
    backend = attention_backend(model, batch, device)
    for _ in range(warmup):
        runner(batch, 1.0, phase)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        result = runner(batch, 1.0, phase)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    steps_per_s = steps / elapsed
    achieved = flops * steps_per_s / 1e12
    peak = peak_tflops(device, peak_override)
    return {
        "params_M": params / 1e6, "trainable_M": trainable / 1e6, "batch": batch_size,
        "images": batch_size * (config.data.n_in + config.data.n_tgt), "attention": backend,
        "gflop": flops / 1e9, "steps_per_s": steps_per_s, "samples_per_s": steps_per_s * batch_size,
        "tflops": achieved, "mfu": achieved / peak if peak else float("nan"),
        "peak_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                     if device.type == "cuda" else float("nan")),
        "loss": result.loss,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    p.add_argument("--stage", type=Stage, default=Stage.MTD, choices=tuple(Stage))
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch-size", type=int, help="identities per step (preset default)")
    p.add_argument("--no-grad-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="override the GPU's peak")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = preset(args.preset)
    config.stage = args.stage
    config.backbone.weights = ""
    if args.no_grad_checkpointing:
        config.backbone.grad_checkpointing = False
    batch_size = args.batch_size or config.batch_size
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    m = measure(config, batch_size, device, args.steps, args.warmup,
                peak_override=args.peak_tflops)
    steps_per_s, samples_per_s, achieved, mfu = (m[k] for k in ("steps_per_s", "samples_per_s",
                                                                "tflops", "mfu"))
    flops, backend, peak = m["gflop"] * 1e9, m["attention"], peak_tflops(device, args.peak_tflops)
    memory = m["peak_gib"] if device.type == "cuda" else 0.0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = [("device", name), ("preset / stage", f"{args.preset} / {args.stage}"),
            ("parameters (M)", f"{m['params_M']:.1f}"), ("batch (identities)", batch_size),
            ("images per step (in + tgt)", batch_size * (config.data.n_in + config.data.n_tgt)),
            ("attention backend", backend), ("model GFLOP / step", f"{flops / 1e9:.1f}"),
            ("steps/s", f"{steps_per_s:.3f}"), ("samples/s", f"{samples_per_s:.2f}"),
            ("achieved TFLOP/s", f"{achieved:.2f}"),
            ("MFU", f"{mfu:.1%}" if peak else "n/a (no peak for this device)"),
            ("peak memory (GiB)", f"{memory:.1f}"), ("last loss", f"{m['loss']:.4f}")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"RESULT preset={args.preset} stage={args.stage} device={name!r} batch={batch_size} "
          f"steps_per_s={steps_per_s:.3f} samples_per_s={samples_per_s:.2f} "
          f"gflop_per_step={flops / 1e9:.1f} tflops={achieved:.2f} "
          f"mfu={mfu:.4f} attention={backend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
