"""ArcFace embeddings through insightface's real loader, with a stand-in ONNX."""

import numpy as np
import pytest
from _faces_helpers import face_image

from curation.faces.identity import ArcFaceEmbedder
from curation.stand_in_models import write_arcface_stand_in, write_scrfd_stand_in


def test_stand_in_is_routed_to_arcface_and_gives_unit_embeddings(tmp_path):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = write_arcface_stand_in(tmp_path / "w600k_r50.onnx")
    assert isinstance(get_model(str(path), providers=["CPUExecutionProvider"]), ArcFaceONNX)
    embedder = ArcFaceEmbedder(path)
    crops = [face_image("astronaut")[100:612, 250:762], face_image("tom")[200:712, 200:712]]
    embeddings = embedder.embed(crops)
    assert embeddings.shape == (2, 512)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1])
    assert embedder.embed([]).shape == (0, 512)


def test_wrong_or_missing_model(tmp_path):
    with pytest.raises(ValueError, match="not an ArcFace"):
        ArcFaceEmbedder(write_scrfd_stand_in(tmp_path / "det.onnx"))
    with pytest.raises(FileNotFoundError, match="w600k_r50.onnx"):
        ArcFaceEmbedder(tmp_path / "missing.onnx")
