"""SCRFD and ArcFace: the provider each runs on, and our wrappers against insightface's own
FaceAnalysis pipeline on the same ONNX files and the same real images (a colour-order, resize or
normalisation slip in our wrappers makes these differ)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mfhq_contract.errors import SetupError
from mfhq_faces.onnx_runtime import CPU_PROVIDER, CUDA_PROVIDER, choose_providers
from mfhq_faces.stand_ins import write_arcface_stand_in, write_scrfd_stand_in


def test_cuda_is_chosen_where_onnxruntime_lists_it_and_the_cpu_otherwise():
    assert choose_providers([CUDA_PROVIDER, CPU_PROVIDER]) == [CUDA_PROVIDER, CPU_PROVIDER]
    assert choose_providers(["AzureExecutionProvider", CPU_PROVIDER]) == [CPU_PROVIDER]
    assert choose_providers([CUDA_PROVIDER, CPU_PROVIDER], "cpu") == [CPU_PROVIDER]
    with pytest.raises(SetupError, match=r"onnxruntime-gpu|\.\[gpu\]"):
        choose_providers([CPU_PROVIDER], "cuda")


@pytest.fixture(scope="module")
def buffalo(tmp_path_factory) -> Path:
    """An insightface root with stand-in det_10g.onnx and w600k_r50.onnx (buffalo_l layout)."""
    root = tmp_path_factory.mktemp("insightface")
    pack = root / "models" / "buffalo_l"
    # a high score bias: the random detector finds many "faces" on a real photo
    write_scrfd_stand_in(pack / "det_10g.onnx", score_bias=3.0)
    write_arcface_stand_in(pack / "w600k_r50.onnx")
    return root


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo with several people (insightface's t1.jpg), RGB."""
    import insightface
    from PIL import Image

    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


def test_the_models_run_on_the_provider_this_machine_has(buffalo):
    import onnxruntime

    from mfhq_faces.detection import ScrfdFaceDetector
    from mfhq_faces.embedders import ArcFaceEmbedder

    expected = choose_providers(onnxruntime.get_available_providers())[0]
    pack = buffalo / "models" / "buffalo_l"
    assert ScrfdFaceDetector(pack / "det_10g.onnx").provider == expected
    assert ArcFaceEmbedder(pack / "w600k_r50.onnx").provider == expected


def test_our_scrfd_and_arcface_give_what_insightface_face_analysis_gives(buffalo, photo):
    from insightface.app import FaceAnalysis

    from mfhq_faces.detection import ScrfdFaceDetector
    from mfhq_faces.embedders import ArcFaceEmbedder

    theirs = FaceAnalysis(name="buffalo_l", root=str(buffalo),
                          allowed_modules=["detection", "recognition"],
                          providers=["CPUExecutionProvider"])
    theirs.prepare(ctx_id=-1, det_thresh=0.5, det_size=(640, 640))
    faces = theirs.get(np.ascontiguousarray(photo[:, :, ::-1]))      # insightface reads BGR
    pack = buffalo / "models" / "buffalo_l"
    ours = ScrfdFaceDetector(pack / "det_10g.onnx", max_faces=10).detect(photo)
    assert len(faces) >= 10 and len(ours) == 10
    height, width = photo.shape[:2]
    by_score = sorted(faces, key=lambda f: -float(f.det_score))
    embedder = ArcFaceEmbedder(pack / "w600k_r50.onnx")
    for det, face in zip(ours, by_score, strict=False):
        assert det.score == pytest.approx(float(face.det_score), abs=1e-6)
        clipped = np.clip(face.bbox, 0, [width, height, width, height])
        np.testing.assert_allclose(det.bbox, clipped, atol=1e-3)
        np.testing.assert_allclose(det.keypoints5, face.kps, atol=1e-3)
        # our embedder takes RGB crops and five points; theirs the BGR photo and the face
        vector = embedder.embed([photo], [det.keypoints5])[0]
        assert float(vector @ face.normed_embedding) == pytest.approx(1.0, abs=1e-5)
