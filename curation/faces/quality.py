"""Face quality scores on aligned crops through pyiqa: TOPIQ-face, or PIQE as the offline choice.

`QualityScorer.score` returns higher = better for every model; `raw_score` returns the model's
own value (PIQE: lower = better, 0..100). Every score is reported together with `model_name`.

TOPIQ-face is built the way pyiqa's `topiq_nr-face` config builds it, with three deliberate
differences that keep it offline: the backbone is not fetched from timm's hub
(`backbone_pretrain=False`; the checkpoint holds the backbone too), the checkpoint is a local
file (`pretrained_model_path`), and the registered `model_name` does not contain "gfiqa" (that
would build facexlib's face aligner, which downloads two more files and accepts batch size 1
only; our crops are already aligned, so it is not needed).

Threads: a scorer sets torch's intra-op threads for its whole process to `threads` when it
loads (default SCORER_THREADS, 1); None leaves torch's own setting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from curation.build_folder import file_sha256
from curation.errors import MissingWeightsError
from curation.models_fetch import TOPIQ_FACE_FILE, pyiqa_cache_dir


class QualityModel(StrEnum):
    """The face quality models: TOPIQ-face (needs its weights file) or PIQE (needs none)."""

    TOPIQ_FACE = "topiq_nr-face"
    PIQE = "piqe"


TOPIQ_FACE, PIQE = QualityModel.TOPIQ_FACE.value, QualityModel.PIQE.value
SUPPORTED_MODELS = tuple(m.value for m in QualityModel)


@dataclass
class QualityConfig:
    """Which quality model ranks the faces, from which weights, in batches of how many crops."""

    model: str = QualityModel.TOPIQ_FACE
    weights: str | None = None      # TOPIQ checkpoint; default: pyiqa's cache location
    batch_size: int = 8             # crops per forward pass (does not change the scores)
TOPIQ_INPUT_SIZE = 512
# torch threads of a scorer's process. 1: the build scores in a Ray worker that holds one CPU
# (a finish task's own scoring) or in a quality actor that computes on one (a CPU actor holds
# none and computes beside the tasks; a GPU actor holds one for the host side). More threads
# than the CPUs a process was given only contend with the analysis workers on the same cores
# (issue 22).
SCORER_THREADS = 1
# The file name pyiqa gives the TOPIQ-face checkpoint in its cache folder.
_OFFLINE_MODEL_NAME = "topiq_nr_face_res50_local"   # no "gfiqa": see the module docstring


def default_topiq_weights() -> Path:
    return pyiqa_cache_dir() / TOPIQ_FACE_FILE


def missing_weights_message(expected: Path) -> str:
    return (f"TOPIQ-face weights not found: {expected}. Put the file "
            f"{TOPIQ_FACE_FILE} (from pyiqa's releases, format {{'params': state_dict}}) in "
            f"{pyiqa_cache_dir()}/ or pass its path with --quality-weights; or run fully offline "
            f"without weights with --quality-model {PIQE}.")


def build_topiq_face_network(weights: str | Path | None):
    """pyiqa's CFANet as configured for `topiq_nr-face`, loading `weights` when given."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pyiqa.archs.topiq_arch import CFANet
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    options = dict(DEFAULT_CONFIGS[TOPIQ_FACE]["metric_opts"])
    options.pop("type")
    options.update(model_name=_OFFLINE_MODEL_NAME, backbone_pretrain=False,
                   pretrained=weights is not None,
                   pretrained_model_path=None if weights is None else str(weights))
    return CFANet(**options)


def _check_checkpoint_matches(network, weights: Path) -> None:
    """pyiqa loads TOPIQ checkpoints non-strictly: make sure this one really is TOPIQ-face."""
    import torch

    checkpoint = torch.load(str(weights), map_location="cpu", weights_only=True)
    params = checkpoint.get("params", checkpoint) if isinstance(checkpoint, dict) else {}
    expected = network.state_dict()
    matched = sum(1 for key, value in params.items()
                  if key in expected and tuple(value.shape) == tuple(expected[key].shape))
    if matched < len(expected):
        raise MissingWeightsError(
            f"{weights} is not a TOPIQ-face checkpoint: {matched} of {len(expected)} parameter "
            f"tensors match. {missing_weights_message(weights)}")


class QualityScorer:
    """Batched quality scores of aligned RGB face crops (uint8, H x W x 3)."""

    def __init__(self, model: str = TOPIQ_FACE, weights: str | None = None,
                 device: str = "cpu", batch_size: int = 8,
                 threads: int | None = SCORER_THREADS):
        if model not in SUPPORTED_MODELS:
            raise ValueError(f"unknown quality model {model!r}; choose one of {SUPPORTED_MODELS}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import pyiqa.default_model_configs as configs
        import torch

        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))   # process-wide, before the first batch

        model = QualityModel(model).value
        self.model_name = model
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.weights_path: str | None = None
        self.weights_sha256: str | None = None
        config = configs.DEFAULT_CONFIGS[model]
        self.lower_better = bool(config.get("lower_better", False))
        self._raw_range = _parse_range(config.get("score_range"))
        if model == TOPIQ_FACE:
            self._network = self._load_topiq(weights)
        else:
            import pyiqa

            self._network = pyiqa.create_metric(PIQE, device=device).net
        self._network.eval()

    @classmethod
    def from_config(cls, config: QualityConfig, device: str = "cpu",
                    threads: int | None = SCORER_THREADS) -> QualityScorer:
        return cls(model=config.model, weights=config.weights, device=device,
                   batch_size=config.batch_size, threads=threads)

    def _load_topiq(self, weights: str | None):
        if weights:
            from curation.storage import local_weights  # a URL: fetched once per machine

            weights = local_weights(weights)
        path = Path(weights) if weights else default_topiq_weights()
        if not path.is_file():
            raise MissingWeightsError(missing_weights_message(path))
        network = build_topiq_face_network(path)
        _check_checkpoint_matches(network, path)
        self.weights_path = str(path.resolve())
        self.weights_sha256 = file_sha256(path)
        return network.to(self.device)

    def raw_score(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """The model's own scores, one per crop (float64)."""
        import torch

        scores: list[np.ndarray] = []
        for start in range(0, len(crops), self.batch_size):
            batch = _to_tensor(crops[start:start + self.batch_size]).to(self.device)
            with torch.inference_mode():
                out = self._network(batch)
            scores.append(out.detach().float().cpu().numpy().reshape(-1))
        return np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores mapped so that higher = better (PIQE 0..100 -> 1..0)."""
        if not self.lower_better:
            return raw
        if self._raw_range is not None:
            low, high = self._raw_range
            return (high - raw) / (high - low)
        return -raw

    def score(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Higher = better, whatever the model."""
        return self.normalise(self.raw_score(crops))


def _to_tensor(crops: Sequence[np.ndarray]):
    import torch

    if not crops:
        raise ValueError("no crops to score")
    shapes = {crop.shape for crop in crops}
    if len(shapes) != 1:
        raise ValueError(f"crops in one batch must share a shape, got {sorted(shapes)}")
    array = np.stack([np.asarray(crop, dtype=np.uint8) for crop in crops])
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"crops must be H x W x 3 RGB, got {array.shape[1:]}")
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)


def _parse_range(text: str | None) -> tuple[float, float] | None:
    try:
        low, high = (float(part) for part in str(text).split(","))
    except (TypeError, ValueError):
        return None   # "~0, ~1" style ranges are approximate: no normalisation from them
    return (low, high) if high > low else None
