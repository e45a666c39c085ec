"""Identity embeddings of aligned face crops with insightface's ArcFace recognizer (optional).

Our crops use the roomier FFHQ-style template (`curation.faces.align`), ArcFace expects its own
tight 112 px five-point layout; each crop is re-aligned with insightface's `norm_crop` from its
five points (by default the template's points, which is where alignment put them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from curation.errors import MissingWeightsError
from curation.faces.align import ALIGN_TEMPLATE


class ArcFaceEmbedder:
    """(N, 512) L2-normalised ArcFace embeddings; the ONNX is loaded through insightface."""

    def __init__(self, onnx_path: str | Path):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        path = Path(onnx_path)
        if not path.is_file():
            raise MissingWeightsError(
                f"ArcFace model not found: {path} (buffalo_l ships it as "
                f"<root>/models/buffalo_l/w600k_r50.onnx); leave the identity check off to run "
                f"without it.")
        model = get_model(str(path), providers=["CPUExecutionProvider"])
        if not isinstance(model, ArcFaceONNX):
            raise ValueError(f"{path} is not an ArcFace recognizer (insightface routed it to "
                             f"{type(model).__name__})")
        model.prepare(ctx_id=-1)
        self._model = model
        self.model_path = str(path)
        self.input_size = int(model.input_size[0])

    def embed(self, crops: Sequence[np.ndarray],
              landmarks5: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Embeddings of RGB crops; `landmarks5` (crop px) default to the alignment template."""
        from insightface.utils.face_align import norm_crop

        if len(crops) == 0:
            return np.zeros((0, 512), np.float32)
        faces = []
        for i, crop in enumerate(crops):
            points = (np.asarray(landmarks5[i], np.float32) if landmarks5 is not None
                      else (ALIGN_TEMPLATE * crop.shape[0]).astype(np.float32))
            bgr = np.ascontiguousarray(crop[:, :, ::-1])
            faces.append(norm_crop(bgr, landmark=points, image_size=self.input_size))
        features = np.asarray(self._model.get_feat(faces), dtype=np.float32)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return features / np.maximum(norms, 1e-12)
