"""Checkpoints: atomic writes, `weights_only` loads, exact-resume RNG state.

A checkpoint is a dict of tensors, plain containers and numbers only (config as a nested dict,
RNG states as tensors), so `torch.load(path, weights_only=True)` reads it and never runs pickled
code. Files are `checkpoint-<step>.pt`; a write goes to a hidden temp file in the same directory,
is fsynced, then renamed over, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from training.config import TrainConfig, from_dict

CHECKPOINT_FORMAT = "omni-id-checkpoint/1"
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"checkpoint-{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first (temp files of an interrupted save are not listed)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def atomic_save(obj: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an Omni-ID checkpoint ({CHECKPOINT_FORMAT})")
    return state


def load_latest(out_dir: str | Path, map_location: str | torch.device = "cpu") -> dict | None:
    """The newest checkpoint that loads; an unreadable newest one falls back to the previous."""
    for path in reversed(list_checkpoints(out_dir)):
        try:
            state = load(path, map_location)
        except Exception as exc:  # a truncated file from a crashed disk, not from our writes
            print(f"warning: skipping unreadable checkpoint {path}: {exc}")
            continue
        state["path"] = str(path)
        return state
    return None


def prune(out_dir: str | Path, keep: int) -> None:
    if keep <= 0:
        return
    for path in list_checkpoints(out_dir)[:-keep]:
        path.unlink(missing_ok=True)


def capture_rng() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as tensors and numbers."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python_version": py_version,
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy_name": str(np_name),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()),
                     state["python_gauss"]))
    np.random.set_state((state["numpy_name"], state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def encoder_state(state: dict, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """The encoder's weights from a checkpoint (EMA weights when present and preferred)."""
    if prefer_ema and state.get("ema"):
        return state["ema"]
    prefix = "encoder."
    return {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}


def saved_config(state: dict) -> TrainConfig:
    """The config a checkpoint was trained with; its backbone comes from the checkpoint, so the
    timm weight file it started from is not needed (nor read) again."""
    config = from_dict(TrainConfig, state["config"])
    config.backbone.weights = ""
    return config
