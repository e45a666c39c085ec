"""FaceAnalyzer on small real-face clips and on bad inputs: records with reasons, never raises."""

import cv2
import numpy as np
import pytest
from _faces_helpers import clip_for, face_image, moving_face_frames, write_video
from PIL import Image

from curation.faces.analysis import AnalysisConfig, FaceAnalyzer
from curation.records import Reason
from mfhq_faces.stand_ins import write_scrfd_stand_in

SMALL = dict(sample_fps=4.0, max_frames_per_clip=6, min_face_size=64, crop_size=128,
             detect_max_side=320, face_detector="mediapipe")


@pytest.fixture(scope="module")
def analyzer():
    with FaceAnalyzer(AnalysisConfig(**SMALL)) as instance:
        yield instance


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "astronaut.mp4", moving_face_frames(12),
                       fps=4.0)


def test_clip_with_a_face_gives_aligned_candidates(analyzer, face_video):
    result = analyzer.analyze_clip(clip_for(face_video))
    assert result.status == "ok", result.message
    assert (result.width, result.height, result.num_frames) == (512, 512, 12)
    assert result.frames_decoded == 6
    usable = result.usable
    assert len(usable) >= 5
    for face in usable:
        assert face.crop.shape == (128, 128, 3) and face.mask.shape == (128, 128)
        assert set(np.unique(face.mask)) <= {0, 255}
        assert None not in (face.yaw, face.pitch, face.roll, face.sharpness)
        assert len(face.landmarks5) == 5
        assert face.face_size >= 64 and face.time_sec == pytest.approx(face.frame_index / 4)
    rolls = [face.roll for face in usable]   # the clip turns the face counter-clockwise
    assert rolls[-1] - rolls[0] > 10


def test_time_range_and_empty_range(analyzer, face_video):
    inside = analyzer.analyze_clip(clip_for(face_video, start_sec=1.0, end_sec=2.0))
    assert inside.status == "ok"
    assert all(4 <= c.frame_index <= 8 for c in inside.candidates)
    empty = analyzer.analyze_clip(clip_for(face_video, start_sec=60.0, end_sec=70.0))
    assert (empty.status, empty.reason) == ("skipped", Reason.RANGE_EMPTY)


def test_small_faces_and_hints(analyzer, face_video):
    strict = FaceAnalyzer.__new__(FaceAnalyzer)
    strict.__dict__.update(analyzer.__dict__)
    strict.config = AnalysisConfig(**{**SMALL, "min_face_size": 400})
    small = strict.analyze_clip(clip_for(face_video))
    assert (small.status, small.reason) == ("skipped", Reason.FACE_TOO_SMALL)
    assert small.candidates and all(c.crop is None for c in small.candidates)

    outside = analyzer.analyze_clip(clip_for(face_video, bbox_hint=(600, 600, 900, 900)))
    assert (outside.status, outside.reason) == ("skipped", Reason.BBOX_OUTSIDE_FRAME)
    elsewhere = analyzer.analyze_clip(
        clip_for(face_video, bbox_hint_normalized=(0.0, 0.7, 0.3, 1.0)))
    assert elsewhere.reason == Reason.NOT_TARGET_PERSON and not elsewhere.usable
    on_face = analyzer.analyze_clip(
        clip_for(face_video, bbox_hint_normalized=(0.25, 0.05, 0.75, 0.6)))
    assert on_face.status == "ok"


@pytest.mark.parametrize("content, status, reason", [
    (b"", "failed", Reason.VIDEO_EMPTY),
    (b"<html>not a video</html>" * 50, "failed", Reason.VIDEO_UNREADABLE),
])
def test_broken_files_become_records(analyzer, tmp_path, content, status, reason):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    result = analyzer.analyze_clip(clip_for(path))
    assert (result.status, result.reason) == (status, reason)
    assert result.candidates == [] and result.message


def test_missing_truncated_faceless_and_timeout(analyzer, face_video, tmp_path):
    missing = analyzer.analyze_clip(clip_for(tmp_path / "gone.mp4"))
    assert (missing.status, missing.reason) == ("failed", Reason.VIDEO_MISSING)

    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(face_video.read_bytes()[: face_video.stat().st_size // 2])
    cut = analyzer.analyze_clip(clip_for(truncated))
    assert cut.status in ("ok", "failed") and cut.reason != Reason.INTERNAL_ERROR

    noise = [np.random.default_rng(i).integers(0, 255, (256, 256, 3), np.uint8) for i in range(8)]
    faceless = analyzer.analyze_clip(clip_for(write_video(tmp_path / "noise.mp4", noise)))
    assert (faceless.status, faceless.reason) == ("skipped", Reason.NO_FACE)

    hurried = FaceAnalyzer.__new__(FaceAnalyzer)
    hurried.__dict__.update(analyzer.__dict__)
    hurried.config = AnalysisConfig(**{**SMALL, "clip_time_limit_s": 0.0})
    late = hurried.analyze_clip(clip_for(face_video))
    assert (late.status, late.reason) == ("failed", Reason.VIDEO_TIMEOUT)


def test_frame_folder_group_photo_needs_a_hint(analyzer, tmp_path):
    folder = tmp_path / "Clip+vid+P0+C0+F0-9"
    folder.mkdir()
    group = cv2.resize(face_image("t1"), (1920, 1329), interpolation=cv2.INTER_CUBIC)
    for i in range(4):
        Image.fromarray(group).save(folder / f"{i:08d}.png")

    # Several people of similar size and no box hint: who the clip is about is a guess.
    unhinted = analyzer.analyze_clip(clip_for(folder, extra={"fps": 2.0}))
    assert (unhinted.status, unhinted.reason) == ("skipped", Reason.AMBIGUOUS_TARGET)
    assert unhinted.fps == 2.0 and unhinted.frames_decoded == 4
    assert not unhinted.usable

    # A metadata box hint around one person settles it, in every frame.
    faces = [c for c in unhinted.candidates if c.frame_index == 0]
    person = max(faces, key=lambda c: c.face_size)
    x0, y0, x1, y1 = person.bbox
    pad = 0.3 * (x1 - x0)
    hint = (x0 - pad, y0 - pad, x1 + pad, y1 + pad)
    result = analyzer.analyze_clip(clip_for(folder, extra={"fps": 2.0}, bbox_hint=hint))
    assert result.status == "ok", result.message
    reasons = {c.reason for c in result.candidates}
    assert Reason.NOT_TARGET_PERSON in reasons        # the other people are not taken
    frames = {c.frame_index for c in result.usable}
    assert len(result.usable) == len(frames) == 4     # one face of the person per frame
    centres = [((c.bbox[0] + c.bbox[2]) / 2) for c in result.usable]
    assert max(centres) - min(centres) < 20           # the same person every time
    assert abs(centres[0] - (x0 + x1) / 2) < 20       # and it is the hinted one


def test_insightface_detector_with_stand_in_weights_does_not_crash(tmp_path, face_video):
    root = tmp_path / "insightface"
    write_scrfd_stand_in(root / "models" / "buffalo_l" / "det_10g.onnx", score_bias=3.0)
    config = AnalysisConfig(**{**SMALL, "face_detector": "insightface",
                               "insightface_root": str(root)})
    with FaceAnalyzer(config) as scrfd_analyzer:
        result = scrfd_analyzer.analyze_clip(clip_for(face_video))
    assert result.status in ("ok", "skipped") and result.reason != Reason.INTERNAL_ERROR
    assert result.frames_decoded == 6


def test_face_size_is_the_side_of_the_source_region_that_becomes_the_crop(analyzer, face_video):
    from curation.faces.analysis import MAX_REGION_PER_BOX, REGION_PER_BOX
    from mfhq_faces.geometry import face_size

    result = analyzer.analyze_clip(clip_for(face_video))
    ratios = [c.face_size / face_size(c.bbox) for c in result.usable]
    assert ratios and all(0.75 * REGION_PER_BOX < r < MAX_REGION_PER_BOX for r in ratios), ratios
    # the rule is applied to the region itself: a minimum between the faces' regions splits them
    sizes = sorted(c.face_size for c in result.usable)
    middle = FaceAnalyzer.__new__(FaceAnalyzer)
    middle.__dict__.update(analyzer.__dict__)
    middle.config = AnalysisConfig(**{**SMALL, "min_face_size": int(np.median(sizes))})
    split = middle.analyze_clip(clip_for(face_video))
    assert all(c.face_size >= middle.config.min_face_size for c in split.usable)
    assert any(c.reason == Reason.FACE_TOO_SMALL and c.yaw is not None for c in split.candidates)
