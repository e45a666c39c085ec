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

Then, where the node has two or more GPUs (always in CPU mode, on gloo), the multi-process part:
`torchrun --nproc_per_node 2 -m training.train` (tiny preset, synthetic shards) for 6 steps with
a checkpoint at step 3, then a second job resumed from a copy of that checkpoint; its table gives
the wall time of each job, the steps/s of the DDP steps and whether the resumed steps 4-6 have
the uninterrupted job's losses (NCCL DDP over the trainable parts, the resume protocol).

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


DDP_HEADER = ["job", "processes", "backend", "wall s", "steps/s", "resume losses match", "note"]


def _torchrun(args: list[str], nproc: int, timeout_s: int) -> tuple[int, float, str]:
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), "-m", "training.train", *args]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return 124, time.perf_counter() - t0, f"timed out after {timeout_s} s"
    return done.returncode, time.perf_counter() - t0, (done.stdout + done.stderr)[-400:]


def ddp_resume_check(gpu: bool, timeout_s: int = 150) -> list[list[str]]:
    """Two processes of DDP, then a resumed job (module doc); one row per job."""
    import json
    import shutil
    import tempfile

    from training.synthetic import SyntheticConfig, write_shards

    nproc = 2
    if gpu and torch.cuda.device_count() < 2:
        return [["ddp", "1", "nccl", "", "", "", "skipped: one GPU on this node"]]
    backend = "nccl" if gpu else "gloo"
    work = Path(tempfile.mkdtemp(prefix="gpu-check-ddp-"))
    try:
        size = 64 if gpu else 32
        paths = write_shards(SyntheticConfig(out=work / "shards", identities=16,
                                             test_identities=0, size=size, per_shard=4,
                                             progress=False))
        train = sorted(str(p) for p in paths["train"])
        common = ["--preset", "tiny", "--device", "cuda" if gpu else "cpu", "--shards",
                  "::".join(train), "--image-size", str(size), "--batch-size", "2",
                  "--n-tgt", "2", "--shuffle-buffer", "2", "--max-steps", "6",
                  "--ckpt-every", "3", "--log-every", "1", "--no-progress"]
        rows = []
        rc, wall, tail = _torchrun(common + ["--out", str(work / "a")], nproc, timeout_s)
        rows.append(["ddp 6 steps", str(nproc), backend, f"{wall:.0f}", f"{6 / wall:.2f}", "",
                     "ok" if rc == 0 else f"failed ({rc}): {tail[-120:]}"])
        if rc != 0:
            return rows
        (work / "b").mkdir()
        shutil.copy(work / "a" / "checkpoint-00000003.pt", work / "b")
        rc, wall, tail = _torchrun(common + ["--out", str(work / "b"), "--resume"], nproc,
                                   timeout_s)
        match = ""
        if rc == 0:
            def losses(run: Path) -> dict[int, float]:
                lines = (run / "metrics.jsonl").read_text().splitlines()
                return {r["step"]: r["loss"] for r in map(json.loads, lines) if "eval" not in r}
            a, b = losses(work / "a"), losses(work / "b")
            match = "yes" if sorted(b) == [4, 5, 6] and all(
                abs(b[s] - a[s]) <= 1e-4 * max(1.0, abs(a[s])) for s in b) else \
                f"NO: {[(s, a.get(s), b[s]) for s in sorted(b)]}"
        rows.append(["resume from step 3", str(nproc), backend, f"{wall:.0f}", "", match,
                     "ok" if rc == 0 else f"failed ({rc}): {tail[-120:]}"])
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_rows(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--steps", type=int, help="timed steps per case (gpu 10, cpu 2)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="skip the remaining cases after this many seconds")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="override the GPU's peak")
    p.add_argument("--no-ddp", action="store_true",
                   help="skip the 2-process DDP + resume jobs")
    p.add_argument("--only-ddp", action="store_true",
                   help="run only the 2-process DDP + resume jobs")
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
    for case in [] if args.only_ddp else cases((1, 8) if gpu else (1, 2)):
        # the DDP + resume jobs after the cases take up to ~2.5 min: keep time for them
        if time.perf_counter() - started > args.budget_s - (0 if args.no_ddp else 150):
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
    if not args.no_ddp:
        t0 = time.perf_counter()
        print()
        print_rows(DDP_HEADER, ddp_resume_check(gpu))
        print(f"# ddp + resume done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"# total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
