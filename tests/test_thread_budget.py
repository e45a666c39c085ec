"""A build process computes on as many threads as the CPUs Ray gave it (issue 22): an analyzer's
onnxruntime sessions (SCRFD, ArcFace) and OpenCV on `AnalysisConfig.threads` (1 by default),
a quality scorer's and a quality actor's torch on `SCORER_THREADS` (1); and fewer threads change
no result, so the build's bytes stay the same."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from _faces_helpers import face_image

from curation.executor.quality_pool import QualityActor
from curation.faces.analysis import AnalysisConfig, FaceAnalyzer
from curation.faces.identity import IdentityConfig
from curation.faces.quality import SCORER_THREADS, QualityConfig, QualityScorer
from mfhq_faces.stand_ins import write_arcface_stand_in, write_scrfd_stand_in


@pytest.fixture(scope="module")
def insightface_root(tmp_path_factory):
    """An insightface root with stand-in SCRFD and ArcFace files (the real loaders run)."""
    root = tmp_path_factory.mktemp("insightface")
    pack = root / "models" / "buffalo_l"
    # a high score bias: the random detector finds "faces" on a real photo, so there is output
    write_scrfd_stand_in(pack / "det_10g.onnx", score_bias=3.0)
    write_arcface_stand_in(pack / "w600k_r50.onnx")
    return root


def _analyzer(root, threads: int | None = None) -> FaceAnalyzer:
    config = AnalysisConfig(face_detector="insightface", insightface_root=str(root),
                            onnx_device="cpu")
    if threads is not None:
        config.threads = threads
    return FaceAnalyzer(config, IdentityConfig(model="arcface"))


def _sessions(analyzer: FaceAnalyzer):
    return {"detector": analyzer.detector._model.session,
            "embedder": analyzer.embedder._model.session}


def _photo() -> np.ndarray:
    return cv2.resize(face_image("astronaut"), (640, 640), interpolation=cv2.INTER_AREA)


def test_a_loaded_analyzer_runs_its_onnx_sessions_and_opencv_on_the_one_thread_a_task_holds(
        insightface_root):
    cv2.setNumThreads(4)   # as a library default would leave it
    with _analyzer(insightface_root) as analyzer:
        assert analyzer.config.threads == 1
        for name, session in _sessions(analyzer).items():
            options = session.get_session_options()
            assert (name, options.intra_op_num_threads, options.inter_op_num_threads) == \
                (name, 1, 1)
        assert cv2.getNumThreads() == 1


def test_an_analyzer_given_more_threads_gives_them_to_its_onnx_sessions(insightface_root):
    with _analyzer(insightface_root, threads=2) as analyzer:
        assert {name: s.get_session_options().intra_op_num_threads
                for name, s in _sessions(analyzer).items()} == {"detector": 2, "embedder": 2}
        assert cv2.getNumThreads() == 2
    cv2.setNumThreads(1)


def test_one_onnx_thread_detects_and_embeds_exactly_what_onnxruntimes_default_does(
        insightface_root):
    from mfhq_faces.detection import ScrfdFaceDetector
    from mfhq_faces.embedders import ArcFaceEmbedder

    pack = insightface_root / "models" / "buffalo_l"
    photo = _photo()
    crops = [photo[100:356, 200:456], photo[150:406, 150:406]]
    results = []
    for threads in (1, None):   # None: onnxruntime's default, a thread per physical core
        detector = ScrfdFaceDetector(pack / "det_10g.onnx", device="cpu", threads=threads)
        embedder = ArcFaceEmbedder(pack / "w600k_r50.onnx", device="cpu", threads=threads)
        found = detector.detect(photo)
        results.append(([d.bbox for d in found], [d.score for d in found],
                         embedder.embed(crops).tobytes()))
    assert results[0][0], "the stand-in detector found nothing: nothing was compared"
    assert results[0] == results[1]


def test_a_quality_scorer_and_a_quality_actor_score_on_one_torch_thread_with_the_same_scores():
    import torch

    crops = [np.ascontiguousarray(cv2.resize(face_image("astronaut")[150:650, 250:750],
                                             (128, 128), interpolation=cv2.INTER_AREA))
             for _ in range(2)]
    crops[1] = np.roll(crops[1], 5, axis=0)
    torch.set_num_threads(2)
    several = QualityScorer("piqe", threads=None).raw_score(crops)   # torch's setting left
    assert torch.get_num_threads() == 2
    scorer = QualityScorer("piqe")
    assert SCORER_THREADS == 1 and torch.get_num_threads() == 1
    assert scorer.raw_score(crops).tobytes() == several.tobytes()
    torch.set_num_threads(2)
    actor = QualityActor(QualityConfig(model="piqe"), None, "cpu")   # the actor's own body
    assert torch.get_num_threads() == 1
    assert actor.score(crops).shape == (2,)
