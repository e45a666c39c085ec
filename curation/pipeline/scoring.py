"""Face quality in the caller's process, and the fixed requests every scorer is asked in.

`LocalScorer` holds one QualityScorer (the model of a pool actor, and the fallback of a caller
whose actor is gone). `score_in_requests` splits a list of crops into requests of
`REQUEST_CROPS` in an order that does not depend on scheduling, so every score, and so every
byte of the output, is the same whoever answers. Plain Python: the Ray pool that serves these
requests is `curation.executor.quality_pool`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from curation.pipeline.config import BuildConfig

REQUEST_CROPS = 64                  # crops per request a caller sends to one actor


def _decode(crops_png: list[bytes]) -> list[np.ndarray]:
    from curation.pipeline.analyze import decode_png

    return [decode_png(data) for data in crops_png]


class LocalScorer:
    """The quality model in this process (the fallback, and the model of a pool actor)."""

    def __init__(self, config: BuildConfig, device: str = "cpu"):
        from curation.faces.quality import QualityScorer

        self.device, self.note = device, ""
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                self.device = "cpu"
                self.note = ("this node declares a GPU but torch sees none "
                             f"(torch {torch.__version__}, CUDA {torch.version.cuda}); "
                             "quality runs on its CPU")
        self.scorer = QualityScorer.from_config(config.quality, device=self.device)

    def score(self, crops_png: list[bytes]) -> np.ndarray:
        if not crops_png:
            return np.zeros(0)
        return np.asarray(self.scorer.score(_decode(crops_png)), dtype=np.float64).reshape(-1)


def score_in_requests(score, crops_png: list[bytes]) -> np.ndarray:
    """All scores of a list of crops, sent as fixed requests of REQUEST_CROPS."""
    out = []
    for i, start in enumerate(range(0, len(crops_png), REQUEST_CROPS)):
        out.append(np.asarray(score(crops_png[start:start + REQUEST_CROPS], i),
                              dtype=np.float64).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0)
