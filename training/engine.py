"""The training step and the training loop of one process.

`StepRunner` does one optimisation step: bf16 autocast on CUDA, backward, gradient clipping,
the optimiser, the EMA, and the non-finite guard (a step whose loss or gradient is not finite is
skipped; `max_nonfinite` in a row stop training with `NonFiniteLossError`).

`TrainingLoop` drives the runner over the data stream until `max_steps`: the LR schedule,
metrics rows (`metrics.jsonl`, rank 0), the progress bar, checkpoints (model, optimiser, EMA,
step, every rank's RNG and data position, so a resumed run continues exactly as an
uninterrupted one), the per-rank data report (`data-rank<r>.json`) and the held-out evaluation
at the end. What the loop starts from (model, optimiser, restored state) is set up by
`training.train`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from mfhq_contract.terminal import terminal
from training import checkpoint as ckpt
from training import storage
from training.config import OptimConfig, TrainConfig, to_dict
from training.data import BATCH_TENSORS, STATS_FIELDS, IdentityStream
from training.errors import InputError
from training.model import Phase, phase_at
from training.optim import EMA, lr_factor, set_lr


class NonFiniteLossError(RuntimeError):
    pass


class NoUsableSamplesError(InputError):
    pass


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    applied: bool          # False: the step was skipped (non-finite loss or gradient)
    parts: dict[str, float] = field(default_factory=dict)   # each loss before weighting


class StepRunner:
    """One optimisation step with autocast, clipping, EMA and the non-finite guard."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, optim: OptimConfig,
                 max_nonfinite: int, device: torch.device, ema: EMA | None = None,
                 ema_source: nn.Module | None = None, distributed: bool = False):
        self.model, self.optimizer, self.optim = model, optimizer, optim
        self.max_nonfinite = max_nonfinite
        self.device = device
        self.ema, self.ema_source = ema, ema_source
        self.distributed = distributed
        self.nonfinite_in_a_row = 0

    def all_finite(self, value: torch.Tensor) -> bool:
        ok = torch.isfinite(value.detach().float()).all().float().reshape(1)
        if self.distributed:  # every rank must take the same branch
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok.item())

    def skip(self, loss: float, grad_norm: float, what: str) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        if self.nonfinite_in_a_row >= self.max_nonfinite:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} steps in a row had a non-finite {what}; stopping. "
                f"Lower --lr, check the data (metrics.jsonl rows with 'skipped'), or resume "
                f"from an earlier checkpoint.")
        return StepResult(loss, grad_norm, applied=False)

    def __call__(self, batch: dict, lr_scale: float, phase: Phase | None = None) -> StepResult:
        """`model(inputs, targets, masks, landmarks, phase)` must return {"loss": ..., parts}."""
        set_lr(self.optimizer, lr_scale)
        tensors = [batch[k].to(self.device, non_blocking=True) if k in batch else None
                   for k in BATCH_TENSORS]
        autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                  enabled=self.device.type == "cuda")
        with autocast:
            losses = self.model(*tensors, phase=phase)
        loss = losses["loss"]
        parts = {k: v.item() for k, v in losses.items() if k != "loss"}
        if not self.all_finite(loss):
            return self.skip(float("nan"), float("nan"), "loss")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.optim.grad_clip if self.optim.grad_clip > 0 else 1e12)
        if not self.all_finite(grad_norm):
            return self.skip(loss.item(), float("nan"), "gradient")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and self.ema_source is not None:
            self.ema.update(self.ema_source)
        self.nonfinite_in_a_row = 0
        return StepResult(loss.item(), grad_norm.item(), applied=True, parts=parts)


class MetricsLog:
    """Appends JSON rows to metrics.jsonl (rank 0 only). In a local folder each row is appended
    at once; at a URL (objects cannot be appended to) the rows are kept and the whole object is
    rewritten by `flush` (at every checkpoint, evaluation and the end), after the rows an
    earlier run of the same --out left there."""

    NAME = "metrics.jsonl"

    def __init__(self, run: storage.RunDir, enabled: bool):
        self.run, self.enabled = run, enabled
        self.lines: list[str] | None = None

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(row) + "\n"
        if not self.run.remote:
            with open(self.run.path(self.NAME), "a") as f:
                f.write(line)
            return
        if self.lines is None:
            old = self.run.read_bytes(self.NAME).decode() if self.run.exists(self.NAME) else ""
            self.lines = [old] if old else []
        self.lines.append(line)

    def flush(self) -> None:
        if self.enabled and self.run.remote and self.lines is not None:
            self.run.write_text(self.NAME, "".join(self.lines))


def gather_states(world: int, data_state: dict, rng_state: dict) -> list[dict]:
    """Every rank's data position and RNG state, gathered on all ranks (rank order)."""
    mine = {"data": data_state, "rng": rng_state}
    if world == 1:
        return [mine]
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return gathered


def fresh_data_state(epoch: int = 0) -> dict:
    """Where a process is in its data: epoch, batches of it consumed, raw position per stream."""
    return {"epoch": epoch, "batches": 0, "positions": []}


@dataclass
class LoopState:
    """What a checkpoint restores besides the weights: the step and this rank's data position."""

    step: int = 0
    data: dict = field(default_factory=fresh_data_state)


class TrainingLoop:
    """Runs `runner` over `loader` from `state` to `config.max_steps` (see the module doc)."""

    def __init__(self, config: TrainConfig, model: nn.Module, runner: StepRunner,
                 optimizer: torch.optim.Optimizer, ema: EMA | None, dataset: IdentityStream,
                 loader: torch.utils.data.DataLoader, state: LoopState, rank: int, world: int,
                 device: torch.device):
        self.config, self.model, self.runner = config, model, runner
        self.optimizer, self.ema = optimizer, ema
        self.dataset, self.loader, self.state = dataset, loader, state
        self.rank, self.world, self.device = rank, world, device
        self.run_dir = storage.RunDir(config.out)
        self.metrics = MetricsLog(self.run_dir, enabled=rank == 0)
        self.stream_stats: dict[int, torch.Tensor] = {}
        self.shards_seen: set[str] = set()

    def save(self) -> None:
        config, step = self.config, self.state.step
        states = gather_states(self.world, self.state.data, ckpt.capture_rng())
        if self.rank == 0:
            state = {
                "format": ckpt.CHECKPOINT_FORMAT, "config": to_dict(config),
                "stage": str(config.stage), "step": step, "model": self.model.checkpoint_state(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {"name": "warmup_cosine", "step": step},
                "rng": [s["rng"] for s in states], "data": [s["data"] for s in states],
            }
            ckpt.atomic_save(state, ckpt.checkpoint_path(config.out, step))
            ckpt.prune(config.out, config.keep_checkpoints)
            self.metrics.flush()
        # every rank waits for the checkpoint: a rank that resumes reads what rank 0 wrote
        if self.world > 1:
            torch.distributed.barrier()

    def data_totals(self) -> list[int]:
        if not self.stream_stats:
            return [0] * len(STATS_FIELDS)
        return sum(self.stream_stats.values()).tolist()

    def run(self, progress: bool = True) -> dict:
        """Train to `max_steps`; returns a summary (last loss, steps, output paths, eval rows)."""
        config = self.config
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm
            bar = tqdm(total=config.max_steps, initial=self.state.step, desc=str(config.stage),
                       file=terminal(),
                       unit="step")
        last_loss = float("nan")
        try:
            last_loss = self._epochs(bar)
        except NonFiniteLossError as exc:
            self.metrics.write({"step": self.state.step, "loss": None, "stopped": str(exc)})
            print(f"error: {exc}", file=terminal())
            raise
        finally:
            if bar is not None:
                bar.close()
            self.metrics.flush()
            self.run_dir.write_text(f"data-rank{self.rank}.json", json.dumps({
                "rank": self.rank, "world": self.world, "shards_seen": sorted(self.shards_seen),
                "stats": dict(zip(STATS_FIELDS, self.data_totals(), strict=False))}, indent=1))

        step = self.state.step
        summary = {"step": step, "loss": last_loss, "out": str(config.out),
                   "checkpoint": str(ckpt.checkpoint_path(config.out, step))}
        rows = self.evaluate()
        self.metrics.flush()
        if rows:
            summary["eval"] = rows
        return summary

    def evaluate(self) -> list[dict]:
        """The held-out evaluation (`training.eval`), the same as `mfhq eval` scores: the EMA
        encoder where there is one (rows say which in `weights`). Every rank evaluates its
        slice of the test shards and the sums are reduced, so all ranks get the same rows;
        rank 0 writes them to metrics.jsonl with an `eval` field. Its RNG use is its own (fixed
        seeds, private generators), so evaluating does not change the training that follows."""
        config, rows = self.config, []
        if config.test_shards:
            from training.eval import Evaluator
            rng = ckpt.capture_rng()
            encoder = self.ema.module if self.ema is not None else None
            rows = Evaluator(config, device=self.device).run(
                self.model, config.test_shards, n_inputs=config.eval_inputs,
                max_samples=config.eval_samples, encoder=encoder)
            ckpt.restore_rng(rng)
            for row in rows:
                self.metrics.write({"step": self.state.step, "loss": row["loss"], "eval": row})
            self.metrics.flush()
        return rows

    def _epochs(self, bar) -> float:
        config, state = self.config, self.state
        last_loss, window_start, window_samples = float("nan"), time.perf_counter(), 0
        epoch = state.data["epoch"]
        self.dataset.set_epoch(epoch, state.data["positions"], state.data["batches"])
        while state.step < config.max_steps:
            positions = list(state.data["positions"])
            batches = state.data["batches"]
            for batch in self.loader:
                stream = int(batch["stream"])
                positions += [0] * (stream + 1 - len(positions))
                positions[stream] = int(batch["position"])
                batches += 1
                self.stream_stats[stream] = batch["stats"]
                self.shards_seen.update(batch["urls"])
                phase = phase_at(config, state.step)
                result = self.runner(batch, lr_factor(state.step, config.optim, config.max_steps),
                                     phase)
                state.step += 1
                step = state.step
                state.data = {"epoch": epoch, "batches": batches, "positions": positions}
                window_samples += batch["inputs"].shape[0]
                if result.applied:
                    last_loss = result.loss
                else:
                    self.metrics.write({"step": step, "loss": None, "skipped": "nonfinite",
                                        "grad_norm": None})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{result.loss:.4f}")
                if result.applied and (step % config.log_every == 0 or step == config.max_steps):
                    elapsed = time.perf_counter() - window_start
                    self.metrics.write({
                        "step": step, "loss": result.loss, "phase": str(phase.name),
                        **{f"{k}_loss": v for k, v in result.parts.items()},
                        "grad_norm": result.grad_norm,
                        "lr": self.optimizer.param_groups[-1]["lr"], "epoch": epoch,
                        "samples_per_s": window_samples * self.world / max(elapsed, 1e-9),
                        "data": dict(zip(STATS_FIELDS, self.data_totals(), strict=False)),
                    })
                    window_start, window_samples = time.perf_counter(), 0
                if step % config.ckpt_every == 0 or step == config.max_steps:
                    self.save()
                if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                    self.evaluate()
                if step >= config.max_steps:
                    break
            else:
                if batches == 0:
                    raise NoUsableSamplesError(
                        f"no usable samples in --shards {config.shards!r}"
                        f": check the URLs and that the files are "
                        f"MFHQ shards (tar files as mfhq_contract/__init__.py describes)")
                epoch += 1
                state.data = fresh_data_state(epoch)
                self.dataset.set_epoch(epoch)
        return last_loss
