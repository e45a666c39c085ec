"""Checkpoints: atomic writes, `weights_only` loads, exact-resume RNG state.

A checkpoint is a dict of tensors, plain containers and numbers only (config as a nested dict,
RNG states as tensors), so `torch.load(path, weights_only=True)` reads it and never runs pickled
code. Files are `checkpoint-<step>.pt` in a local folder or at a URL (`training.storage`); a
write is atomic (locally a hidden temp file, fsynced, renamed over; on an object store one
upload that becomes visible only whole), so a kill at any moment leaves the previous checkpoint
intact. `from_bytes` reads a checkpoint that rank 0 broadcast to the other ranks, with the same
`weights_only` rule.
"""

from __future__ import annotations

import io
import random
import re
from pathlib import Path

import numpy as np
import torch

from training import storage
from training.config import TrainConfig, from_dict
from training.errors import InputError

CHECKPOINT_FORMAT = "omni-id-checkpoint/1"
_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pt"


def checkpoint_path(out_dir: str | Path, step: int) -> str | Path:
    """Where step `step`'s checkpoint goes: a Path in a local folder, a URL string otherwise."""
    if storage.is_url(out_dir):
        return storage.join(out_dir, checkpoint_name(step))
    return Path(out_dir) / checkpoint_name(step)


def list_checkpoints(out_dir: str | Path) -> list[str | Path]:
    """Finished checkpoints, oldest first (temp files of an interrupted save are not listed)."""
    run = storage.RunDir(out_dir)
    found = sorted((int(m.group(1)), name) for name in run.names() if (m := _NAME.match(name)))
    return [checkpoint_path(out_dir, step) for step, _ in found]


def atomic_save(obj: dict, path: str | Path) -> None:
    """Write a checkpoint atomically (`storage.RunDir.write`): a kill at any moment leaves the
    previous one intact, and no reader ever sees a partial file."""
    text = str(path)
    folder, name = (text.rsplit("/", 1) if storage.is_url(text)
                    else (str(Path(path).parent), Path(path).name))
    storage.RunDir(folder).write(name, lambda f: torch.save(obj, f))


def from_bytes(data: bytes, origin: str = "checkpoint") -> dict:
    """A checkpoint from its bytes (as broadcast between ranks), `weights_only` as from a file."""
    return _checked(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), origin)


def _checked(state: object, origin: str | Path) -> dict:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise NotACheckpointError(f"{origin} is not an Omni-ID checkpoint ({CHECKPOINT_FORMAT}): "
                                  f"give a checkpoint-<step>.pt written by `mfhq train`")
    return state


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint from a path or URL, read with `torch.load(weights_only=True)`."""
    if not storage.exists(path):
        raise MissingCheckpointError(
            f"checkpoint not found: {path}. Give a checkpoint-<step>.pt written by `mfhq train` "
            f"(a path or an s3:// / gs:// URL; see --out of the training run).")
    with storage.local_copy(path) as local:
        try:
            state = torch.load(local, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise NotACheckpointError(f"{path} is not a readable Omni-ID checkpoint ({exc}); it may be "
                             f"truncated, or not a checkpoint-<step>.pt of `mfhq train`") from None
    return _checked(state, path)


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
    run = storage.RunDir(out_dir)
    for path in list_checkpoints(out_dir)[:-keep]:
        run.delete(Path(str(path)).name)


class MissingCheckpointError(FileNotFoundError):
    pass


class NotACheckpointError(InputError):
    pass


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
