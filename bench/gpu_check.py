"""The trainer's GPU check (run through `bench/gpu_check.sh`): one table of training-step figures.

GPU mode (`--mode gpu`, the default), paper preset, bf16 autocast, stand-in (random) weights:
- `mtd`: the MTD warm-up step (CLIP ViT-H/14 at 224 px -> 256 x 1280 tokens; MTD on 512 px
  targets) at batch sizes 1 and 8, eager and `torch.compile`d;
- `joint`: the MTD + FLUX step, FLUX at FLUX.1-dev's widths but 2 + 4 of its 19 + 38 blocks
  (`training.stand_ins.REDUCED_FLUX`), batch sizes 1 and 8 (and compiled at the largest);
- `flux`: the flow stage alone on the same reduced FLUX (encoder + IP branches training).
Columns: samples/s (identities/s), model GFLOP per step (meta-device count, no recompute),
achieved TFLOP/s, MFU against the GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s, the
datasheet's 1,979 with sparsity halved), peak allocated memory, the SDPA kernel used, last loss.
A case that runs out of memory or fails prints its error in the table and the check goes on.

CPU mode (`--mode cpu`): the same cases on the tiny preset (32 px, tiny FLUX) with batch sizes
1 and 2 and 2 timed steps: it checks the script end to end on any machine (437 s on 2 shared
cores, 387 s of them in the two `torch.compile` cases; the eager cases take under a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer import measure  # noqa: E402

from training.config import FlowDecoderKind, Stage, TrainConfig, preset  # noqa: E402
from training.stand_ins import REDUCED_FLUX, TINY_FLUX  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    stage: Stage
    batch_size: int
    compiled: bool = False


def cases(batch_sizes: tuple[int, ...]) -> list[Case]:
    large = batch_sizes[-1]
    out = []
    for stage, name in ((Stage.MTD, "mtd"), (Stage.JOINT, "joint")):
        out += [Case(name, stage, b) for b in batch_sizes]
        out.append(Case(name, stage, large, compiled=True))
    out.append(Case("flux", Stage.FLOW, large))
    return out


def case_config(mode: str, case: Case) -> TrainConfig:
    config = preset("paper" if mode == "gpu" else "tiny")
    config.stage = case.stage
    config.backbone.weights = ""                       # stand-in (random) backbone weights
    config.flow.decoder = FlowDecoderKind.FLUX
    if mode == "cpu":
        config.data.image_size = 32
    return config


def row_text(case: Case, m: dict | None, error: str = "") -> list[str]:
    head = [case.name, str(case.batch_size), "on" if case.compiled else "off"]
    if m is None:
        return head + [error] + [""] * 7
    mfu = "n/a" if m["mfu"] != m["mfu"] else f"{m['mfu']:.1%}"
    peak = "n/a" if m["peak_gib"] != m["peak_gib"] else f"{m['peak_gib']:.1f}"
    return head + [f"{m['samples_per_s']:.2f}", f"{m['gflop']:.0f}", f"{m['tflops']:.1f}", mfu,
                   peak, m["attention"], f"{m['trainable_M']:.0f}/{m['params_M']:.0f}",
                   f"{m['loss']:.3f}"]


HEADER = ["case", "batch", "compile", "samples/s", "GFLOP/step", "TFLOP/s", "MFU", "peak GiB",
          "attention", "train/all M", "loss"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER] + rows) for i in range(len(HEADER))]
    for r in [HEADER] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--steps", type=int, help="timed steps per case (gpu 10, cpu 2)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="skip the remaining cases after this many seconds")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="override the GPU's peak")
    args = p.parse_args(argv)
    gpu = args.mode == "gpu"
    if gpu and not torch.cuda.is_available():
        print("error: --mode gpu needs CUDA; use bench/gpu_check.sh --cpu to check the script "
              "itself on a CPU machine", file=sys.stderr)
        return 2
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        name = "cpu"
    steps, warmup = (args.steps or 10, 3) if gpu else (args.steps or 2, 1)
    flux_size = REDUCED_FLUX if gpu else TINY_FLUX
    print(f"# {name}, torch {torch.__version__}, mode {args.mode}, "
          f"{'paper' if gpu else 'tiny'} preset, bf16 autocast on CUDA, stand-in weights; "
          f"FLUX {flux_size.layers}+{flux_size.single_layers} blocks of width "
          f"{flux_size.heads * flux_size.head_dim}", flush=True)
    rows, started = [], time.perf_counter()
    for case in cases((1, 8) if gpu else (1, 2)):
        if time.perf_counter() - started > args.budget_s:
            rows.append(row_text(case, None, "skipped: time budget"))
            continue
        t0 = time.perf_counter()
        try:
            m = measure(case_config(args.mode, case), case.batch_size, device, steps, warmup,
                        compile_model=case.compiled, peak_override=args.peak_tflops,
                        flux_size=flux_size)
            rows.append(row_text(case, m))
        except Exception as exc:  # an OOM or a compile failure is a result, not the end
            traceback.print_exc(limit=2, file=sys.stderr)
            rows.append(row_text(case, None, f"failed: {type(exc).__name__}: {str(exc)[:60]}"))
        finally:
            if gpu:
                torch.cuda.empty_cache()
        print(f"# {case} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print_table(rows)
    print(f"# total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
