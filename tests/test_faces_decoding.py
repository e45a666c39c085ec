"""Sampled decoding of videos and frame folders, and reason codes for bad files."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from _faces_helpers import write_video

from curation.faces.decoding import (
    DecodeError,
    frame_range,
    open_frames,
    resize_max_side,
    sample_indices,
)
from curation.records import Reason


def numbered_frames(count, side=64):
    return [np.full((side, side + 16, 3), 10 + 8 * i, np.uint8) for i in range(count)]


def test_sample_indices_are_uniform_in_time_and_capped():
    assert sample_indices(0, 99, fps=25.0, sample_fps=2.0, max_frames=48) == \
        [6, 18, 31, 43, 56, 68, 81, 93]
    assert len(sample_indices(0, 9999, 25.0, 2.0, 48)) == 48
    assert sample_indices(10, 10, 25.0, 2.0, 48) == [10]
    picked = sample_indices(100, 199, 25.0, 1.0, 48)
    assert all(100 <= i <= 199 for i in picked) and len(picked) == 4


def test_frame_range_from_time_or_frames():
    from curation.faces.decoding import VideoInfo

    info = VideoInfo(width=10, height=10, fps=10.0, num_frames=50)
    assert frame_range(info) == (0, 49)
    assert frame_range(info, start_sec=1.0, end_sec=2.0) == (10, 20)
    assert frame_range(info, start_frame=5, end_frame=500) == (5, 49)
    with pytest.raises(DecodeError) as error:
        frame_range(info, start_sec=30.0, end_sec=40.0)
    assert error.value.reason == Reason.RANGE_EMPTY


def test_video_decodes_only_requested_frames(tmp_path):
    path = write_video(tmp_path / "v.mp4", numbered_frames(30), fps=10)
    with open_frames(str(path)) as source:
        assert (source.info.width, source.info.height, source.info.num_frames) == (80, 64, 30)
        assert source.info.fps == pytest.approx(10.0)
        frames = source.read([3, 17, 29])
    assert frames.shape == (3, 64, 80, 3)
    assert np.allclose(frames.reshape(3, -1).mean(axis=1), [34, 146, 242], atol=4)


def test_frame_folder_is_a_clip(tmp_path):
    folder = tmp_path / "Clip+abc+P0+C0+F1-20"
    folder.mkdir()
    for i, frame in enumerate(numbered_frames(12)):
        cv2.imwrite(str(folder / f"{i}.png"), frame)   # 0.png .. 11.png: natural order matters
    with open_frames(str(folder), fps_hint=30) as source:
        assert source.info.num_frames == 12 and source.info.fps == 30
        frames = source.read([2, 10])
    assert frames[:, 0, 0, 0].tolist() == [26, 90]


@pytest.mark.parametrize("content, reason", [
    (b"", Reason.VIDEO_EMPTY),
    (b"this is not a video at all" * 100, Reason.VIDEO_UNREADABLE),
])
def test_bad_files_raise_decode_error_with_reason(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(DecodeError) as error:
        open_frames(str(path))
    assert error.value.reason == reason


def test_truncated_video_gives_reason_not_crash(tmp_path):
    path = write_video(tmp_path / "v.mp4", numbered_frames(40), fps=10)
    data = Path(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        with open_frames(str(path)) as source:
            source.read(list(range(0, source.info.num_frames, 5)))
    except DecodeError as error:
        assert error.reason in (Reason.VIDEO_UNREADABLE, Reason.VIDEO_DECODE_ERROR)


def test_missing_path():
    with pytest.raises(DecodeError) as error:
        open_frames("/nonexistent/clip.mp4")
    assert error.value.reason == Reason.VIDEO_MISSING


def test_resize_max_side():
    image = np.zeros((1080, 1920, 3), np.uint8)
    small, scale = resize_max_side(image, 640)
    assert small.shape == (360, 640, 3) and scale == pytest.approx(1 / 3)
    same, scale = resize_max_side(image[:100, :100], 640)
    assert same.shape == (100, 100, 3) and scale == 1.0
