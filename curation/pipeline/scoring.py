"""Face quality in the caller's process, and the fixed requests every scorer is asked in.

`LocalScorer` holds one QualityScorer (the model of a pool actor, and the fallback of a caller
whose actor is gone). `score_in_requests` splits one identity's crops (S x S x 3 uint8 arrays)
into requests of `REQUEST_CROPS` in an order that does not depend on scheduling, so every
score, and so every byte of the output, is the same whoever answers. Plain Python: the Ray pool that serves these
requests is `curation.executor.quality_pool`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from curation.faces.quality import QualityConfig

REQUEST_CROPS = 64                  # crops per request a caller sends to one actor


class LocalScorer:
    """The quality model in this process (the fallback, and the model of a pool actor), made
    from the build's `quality` section."""

    def __init__(self, quality: QualityConfig, device: str = "cpu"):
        from curation.faces.quality import QualityScorer

        self.device, self.note = device, ""
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                self.device = "cpu"
                self.note = ("this node declares a GPU but torch sees none "
                             f"(torch {torch.__version__}, CUDA {torch.version.cuda}); "
                             "quality runs on its CPU")
        self.scorer = QualityScorer.from_config(quality, device=self.device)

    def score(self, crops: list[np.ndarray]) -> np.ndarray:
        """One score per crop (S x S x 3 uint8 RGB), higher is better."""
        if not crops:
            return np.zeros(0)
        return np.asarray(self.scorer.score(list(crops)), dtype=np.float64).reshape(-1)


def score_in_requests(score, crops: list[np.ndarray], first_request: int = 0) -> np.ndarray:
    """All scores of a list of crops, sent as fixed requests of REQUEST_CROPS; request i is
    asked as `score(crops, first_request + i)` (the number only spreads requests over actors)."""
    out = []
    for i, start in enumerate(range(0, len(crops), REQUEST_CROPS)):
        out.append(np.asarray(score(crops[start:start + REQUEST_CROPS], first_request + i),
                              dtype=np.float64).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0)


# One fallback model per process: a caller whose actor is gone scores here, and loads it once.
_LOCAL: dict[str, LocalScorer] = {}


def local_scores(quality: QualityConfig, crops: list[np.ndarray]) -> np.ndarray:
    """The scores of `crops` on this process's CPU, in the same fixed requests an actor
    answers (the fallback when no actor can); the model is loaded once per process."""
    import dataclasses
    import json

    key = json.dumps(dataclasses.asdict(quality), sort_keys=True, default=str)
    if key not in _LOCAL:
        _LOCAL.clear()
        _LOCAL[key] = LocalScorer(quality, "cpu")
    scorer = _LOCAL[key]
    return score_in_requests(lambda request, _index: scorer.score(request), crops)
