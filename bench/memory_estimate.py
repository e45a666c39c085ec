"""Per-GPU memory of a training step, estimated without a GPU or real weights:

    python bench/memory_estimate.py --preset paper --stage joint --batch-sizes 1 8

The model is built under `FakeTensorMode` (shapes and dtypes only, no storage), FLUX at
FLUX.1-dev's full configuration (19 + 38 blocks, bf16, frozen) from the real diffusers classes,
and one training step (bf16 autocast, backward, AdamW step) runs under PyTorch's `MemTracker`,
which records the peak of live tensors by kind: parameters, gradients, optimiser state,
activations. The step runs on the CPU device (autocast "cpu" in bf16 follows the same
bf16-matmul policy as CUDA's); CUDA allocator overhead (caching, fragmentation, cuBLAS / flash
workspaces) is not included: budget ~10 % on top. `--stage mtd` is stage 1 of the two-stage
recipe (no FLUX in memory), `joint` the joint stage's MTD + flow step (its peak; the MTD warm-up
steps of stage `joint` hold the same weights and optimiser state with fewer activations).

Under torchrun the trainer wraps only what trains in DDP (`training.train.wrap_trainable`): the
frozen FLUX base is neither broadcast nor bucketed, and the gradients are views into DDP's
buckets, so DDP adds no gradient copy to these figures (its bucket memory is the "gradients"
column). With two or more batch sizes the script also fits total = fixed + per-identity x batch
and prints the largest batch per GPU that fits each `--cards` size (decimal GB, as sold), with
`--overhead` (default 10 %) on top for the CUDA allocator and workspaces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer import model_inputs, synthetic_batch  # noqa: E402

from training.config import FlowDecoderKind, Stage, TrainConfig, preset  # noqa: E402
from training.model import OmniID, phase_at  # noqa: E402
from training.optim import build_optimizer  # noqa: E402

GIB = 2**30


class _NoHook:
    """Takes the place of the gradient hooks MemTracker puts on every parameter it meets."""

    def remove(self) -> None:
        pass


def skip_grad_hooks(tracker, model: torch.nn.Module) -> None:
    """MemTracker registers a gradient hook on each parameter of a module it enters, and torch
    refuses hooks on tensors that do not require grad (the frozen FLUX base): mark those
    parameters as hooked already. They never get a gradient, so nothing goes untracked; they
    are still counted as parameters (`track_external`)."""
    for param in model.parameters():
        if not param.requires_grad:
            tracker._param_to_grad_hook_handles[param] = (_NoHook(), _NoHook())


def estimate(config: TrainConfig, batch_size: int, flux_size=None) -> dict[str, float]:
    """GiB by kind at the step's peak, plus parameter counts (millions)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from training.stand_ins import FLUX_DEV, build_flux_modules, stand_in_prompt

    # built on the meta device (timm's init reads values, which fake tensors cannot give), then
    # given fake storage
    with torch.device("meta"):
        modules = None
        if config.stage != Stage.MTD and config.flow.decoder == FlowDecoderKind.FLUX:
            size = flux_size or FLUX_DEV
            transformer, vae = build_flux_modules(size)
            dtype = getattr(torch, str(config.flow.flux_dtype))
            modules = (transformer.to(dtype), vae.to(dtype), stand_in_prompt(size))
        model = OmniID(config, flux_modules=modules)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu")
        optimizer = build_optimizer(model, config.optim)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        batch = model_inputs(synthetic_batch(config, batch_size), torch.device("cpu"))
        phase = phase_at(config, 10**9)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        # a first step allocates AdamW's state; the tracked second step is the steady state
        with autocast:
            model(*batch, phase=phase)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        skip_grad_hooks(tracker, model)
        with tracker:
            with autocast:
                model(*batch, phase=phase)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    out = {str(kind.value if hasattr(kind, "value") else kind): v / GIB for kind, v in peak.items()}
    out["trainable_M"], out["frozen_M"] = trainable / 1e6, frozen / 1e6
    return out


def largest_batch(points: list[tuple[int, float]], card_gb: float,
                  overhead: float = 0.10) -> tuple[int, float, float]:
    """(largest batch that fits, fixed GiB, GiB per identity) from (batch, total GiB) points by
    a least-squares line; the card's decimal GB as GiB, divided by 1 + overhead."""
    if len({b for b, _ in points}) < 2:
        raise ValueError("need totals at two or more batch sizes to fit a line")
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_t = sum(t for _, t in points) / n
    slope = (sum((b - mean_b) * (t - mean_t) for b, t in points)
             / sum((b - mean_b) ** 2 for b, _ in points))
    fixed = mean_t - slope * mean_b
    budget = card_gb * 1e9 / GIB / (1 + overhead)
    return max(0, int((budget - fixed) // slope)), fixed, slope


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper", choices=("tiny", "paper"))
    p.add_argument("--stage", type=Stage, default=Stage.JOINT, choices=tuple(Stage))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--cards", type=float, nargs="+", default=[80, 141],
                   help="GPU memory sizes in GB (decimal) for the largest-batch lines")
    p.add_argument("--overhead", type=float, default=0.10,
                   help="fraction added for the CUDA allocator and workspaces")
    p.add_argument("--totals", type=str, nargs="+", default=[], metavar="BATCH=GIB",
                   help="skip the estimate: fit these measured totals (e.g. 1=43.5 8=99.5)")
    args = p.parse_args(argv)
    if args.totals:
        points = [(int(b), float(t)) for b, t in (x.split("=") for x in args.totals)]
        print_fit(points, args.cards, args.overhead)
        return 0
    print(f"{'preset':<7} {'stage':<6} {'batch':>5} {'trainable M':>12} {'frozen M':>9} "
          f"{'params':>7} {'grads':>6} {'optim':>6} {'activ.':>7} {'total GiB':>9}")
    points: list[tuple[int, float]] = []
    for batch_size in args.batch_sizes:
        config = preset(args.preset)
        config.stage, config.backbone.weights = args.stage, ""
        row = estimate(config, batch_size)
        print(f"{args.preset:<7} {args.stage:<6} {batch_size:>5} {row['trainable_M']:>12.0f} "
              f"{row['frozen_M']:>9.0f} {row['Parameter'] + row['Buffer']:>7.1f} "
              f"{row['Gradient']:>6.1f} {row['Optstate']:>6.1f} "
              f"{row['Activation'] + row['Temp']:>7.1f} {row['Total']:>9.1f}")
        points.append((batch_size, row["Total"]))
    if len(set(args.batch_sizes)) > 1:
        print_fit(points, args.cards, args.overhead)
    return 0


def print_fit(points: list[tuple[int, float]], cards: list[float], overhead: float) -> None:
    for card in cards:
        batch, fixed, slope = largest_batch(points, card, overhead)
        print(f"{card:g} GB card: largest batch per GPU {batch} (fit: {fixed:.1f} GiB + "
              f"{slope:.2f} GiB per identity, +{overhead:.0%} overhead)")


if __name__ == "__main__":
    sys.exit(main())
