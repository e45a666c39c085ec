"""Face detectors (mediapipe, insightface SCRFD through its real loader) and target choice."""

import numpy as np
import pytest
from _faces_helpers import face_image

from curation.faces.tracks import ambiguous_target, select_target
from mfhq_faces.detection import (
    Detection,
    MediapipeFaceDetector,
    ScrfdFaceDetector,
    clean_detections,
    make_detector,
    scrfd_model_path,
)
from mfhq_faces.stand_ins import write_arcface_stand_in, write_scrfd_stand_in


def test_mediapipe_finds_several_people_in_the_group_photo():
    detector = MediapipeFaceDetector()
    faces = detector.detect(face_image("t1"))
    detector.close()
    assert len(faces) >= 3
    for face in faces:
        x0, y0, x1, y1 = face.bbox
        assert 0 <= x0 < x1 <= 1280 and 0 <= y0 < y1 <= 886
        assert face.keypoints5.shape == (5, 2)


@pytest.mark.parametrize("score_bias", [-8.0, 4.0])
def test_scrfd_stand_in_is_routed_and_runs_through_insightface(tmp_path, score_bias):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.scrfd import SCRFD

    root = tmp_path / "insightface"
    path = write_scrfd_stand_in(root / "models" / "buffalo_l" / "det_10g.onnx",
                                score_bias=score_bias)
    assert scrfd_model_path(root) == path
    assert isinstance(get_model(str(path), providers=["CPUExecutionProvider"]), SCRFD)
    detector = make_detector("insightface", str(root))
    assert isinstance(detector, ScrfdFaceDetector)
    image = face_image("astronaut")[:480, :640]
    faces = detector.detect(image)
    assert len(faces) <= detector.max_faces
    if score_bias < 0:
        assert faces == []      # nothing above threshold: an empty result is handled
    for face in faces:        # arbitrary boxes from random weights come back cleaned
        x0, y0, x1, y1 = face.bbox
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
        assert np.isfinite(face.score)


def test_wrong_onnx_for_detector_and_missing_root(tmp_path):
    arcface = write_arcface_stand_in(tmp_path / "w600k_r50.onnx")
    with pytest.raises(ValueError, match="not an SCRFD"):
        ScrfdFaceDetector(arcface)
    with pytest.raises(FileNotFoundError, match="det_10g.onnx.*mediapipe"):
        scrfd_model_path(tmp_path / "nowhere")


def test_clean_detections_drops_broken_boxes():
    raw = [Detection((np.nan, 0, 10, 10), 0.9), Detection((5, 5, 5.5, 30), 0.9),
           Detection((-20, -20, 50, 60), 0.7), Detection((10, 10, 40, 40), 0.95)]
    cleaned = clean_detections(raw, width=100, height=50)
    assert [d.bbox for d in cleaned] == [(10, 10, 40, 40), (0, 0, 50, 50)]


def box(x, y, side):
    return Detection((x, y, x + side, y + side), 0.9)


def test_target_follows_the_hint():
    frames = [[box(0, 0, 100), box(300, 0, 60)], [box(310, 5, 60), box(5, 0, 100)], []]
    assert select_target(frames, hint=(280, 0, 400, 100)) == [1, 0, None]


def test_without_hint_the_largest_face_is_tracked_through_the_clip():
    # the clip's person moves right and grows; a bystander keeps still, list order shuffled
    frames = [[box(10 * t, 0, 100 + 2 * t), box(400, 0, 95)] for t in range(5)]
    frames[1].reverse()
    chosen = select_target(frames)
    assert [frames[t][i].bbox[0] for t, i in enumerate(chosen)] == [0, 10, 20, 30, 40]


def test_two_similar_size_people_without_hint_are_ambiguous():
    # a turned head (smaller box) beside a frontal bystander of nearly the same size
    frames = [[box(0, 0, 100), box(300, 0, 92)] for _ in range(4)]
    chosen = select_target(frames)
    assert ambiguous_target(frames, chosen)


def test_a_clearly_larger_person_or_a_passing_bystander_is_not_ambiguous():
    clear = [[box(0, 0, 100), box(300, 0, 60)] for _ in range(4)]
    assert not ambiguous_target(clear, select_target(clear))
    # a bystander as large as the target, but only in one frame of four
    passing = [[box(0, 0, 100)] for _ in range(3)] + [[box(0, 0, 100), box(300, 0, 100)]]
    assert not ambiguous_target(passing, select_target(passing))
    assert not ambiguous_target([[], []], [None, None])
