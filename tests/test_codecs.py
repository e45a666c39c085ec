"""Decoding what yt-dlp writes: AV1, VP9, HEVC and variable-frame-rate H.264 in the usual
containers, made here with PyAV's encoders from a real face (scikit-image's astronaut, the demo
corpus's first identity); frames, timestamps, the decoder chosen, and broken files' reasons."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from curation.faces.decoding import (
    DecodeError,
    frame_range,
    open_frames,
    open_video,
    sample_indices,
)
from curation.records import Reason

WIDTH, HEIGHT, FPS = 128, 96, 10
# frame i: a window sliding 3 px a frame across the astronaut's face, so every frame is told
# apart from its neighbours even after lossy coding
STEP = 3


def face_frames(count: int, width: int = WIDTH, height: int = HEIGHT) -> list[np.ndarray]:
    import skimage.data

    photo = skimage.data.astronaut()[40:280, 120:400]    # head and shoulders
    return [np.ascontiguousarray(photo[20:20 + height, i * STEP:i * STEP + width])
            for i in range(count)]


def encode(path: Path, frames: list[np.ndarray], codec: str, fmt: str | None = None,
           fps: int = FPS, times_ms: list[int] | None = None, movflags: str | None = None,
           ) -> Path:
    """Encode RGB frames with a PyAV encoder; `times_ms` gives each frame its own timestamp
    (a variable-frame-rate stream)."""
    options = {"movflags": movflags} if movflags else {}
    container = av.open(str(path), "w", format=fmt, options=options)
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], \
        "yuv420p"
    stream.options = {"libsvtav1": {"preset": "12"}, "libx265": {"log-level": "error"},
                      "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"}}.get(codec, {})
    if times_ms is not None:
        stream.codec_context.time_base = Fraction(1, 1000)
    def video_frames():
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            yield frame

    mux_all(container, stream, video_frames())
    return path


def mux_all(container, stream, frames) -> None:
    """Encode every frame into `stream`, flush the encoder, close the container."""
    for frame in frames:
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - av raises UnknownCodecError (a ValueError) or FFmpegError
        return False
    return True


def nearest(decoded: np.ndarray, sources: list[np.ndarray]) -> int:
    errors = [np.abs(decoded.astype(np.int16) - s).mean() for s in sources]
    return int(np.argmin(errors))


CODECS = [
    pytest.param("libx264", "mp4", None, "h264", "decord", id="h264-mp4"),
    pytest.param("libsvtav1", "mp4", None, "av1", "pyav", id="av1-mp4"),
    pytest.param("libsvtav1", "mkv", "matroska", "av1", "pyav", id="av1-mkv"),
    pytest.param("libvpx-vp9", "webm", "webm", "vp9", "decord", id="vp9-webm"),
    pytest.param("libvpx-vp9", "mkv", "matroska", "vp9", "decord", id="vp9-mkv"),
    pytest.param("libx265", "mp4", None, "hevc", "decord", id="hevc-mp4",
                 marks=pytest.mark.skipif(not has_encoder("libx265"), reason="no libx265")),
]


@pytest.mark.parametrize(("encoder", "ext", "fmt", "codec", "decoder"), CODECS)
def test_each_codec_decodes_to_the_expected_frames_with_the_decoder_that_can(
        tmp_path, encoder, ext, fmt, codec, decoder):
    sources = face_frames(24)
    path = encode(tmp_path / f"clip.{ext}", sources, encoder, fmt)
    with open_frames(str(path)) as source:
        info = source.info
        assert (info.width, info.height, info.num_frames) == (WIDTH, HEIGHT, 24)
        assert info.fps == pytest.approx(FPS) and info.frame_times is None   # constant rate
        assert (info.codec, info.decoder) == (codec, decoder)
        wanted = [17, 2, 3, 23, 0, 11, 12]      # out of order, repeats a group of pictures
        frames = source.read(wanted)
    assert frames.shape == (len(wanted), HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    assert [nearest(frame, sources) for frame in frames] == wanted


@pytest.mark.parametrize(("encoder", "ext", "fmt"), [
    ("libx264", "mp4", None), ("libvpx-vp9", "webm", "webm")])
def test_decord_and_pyav_give_the_same_bytes_for_the_same_frames(tmp_path, encoder, ext, fmt):
    path = encode(tmp_path / f"clip.{ext}", face_frames(30), encoder, fmt)
    indices = [0, 1, 9, 10, 29, 15, 4]
    with open_video(str(path), decoder="decord") as fast, \
            open_video(str(path), decoder="pyav") as other:
        assert fast.info.decoder == "decord" and other.info.decoder == "pyav"
        assert fast.info == other.info.__class__(**{**other.info.__dict__, "decoder": "decord"})
        assert np.array_equal(fast.read(indices), other.read(indices))


def test_variable_frame_rate_ranges_and_samples_land_on_the_timestamps(tmp_path):
    sources = face_frames(30)
    # bursts: 40 ms apart for ten frames, then 200 ms apart, then 40 ms again
    steps = [40] * 10 + [200] * 10 + [40] * 9
    times_ms = [0, *np.cumsum(steps).tolist()]
    path = encode(tmp_path / "vfr.mp4", sources, "libx264", times_ms=times_ms)
    with open_frames(str(path)) as source:
        info = source.info
        assert info.codec == "h264" and info.num_frames == 30
        assert info.frame_times is not None
        assert np.allclose(info.frame_times, np.array(times_ms) / 1000, atol=1e-9)
        # 0.4 s .. 2.4 s holds exactly the frames shown from 400 ms to 2400 ms
        first, last = frame_range(info, start_sec=0.4, end_sec=2.4)
        assert (times_ms[first], times_ms[last]) == (400, 2400)
        assert times_ms[first - 1] < 400 and times_ms[last + 1] > 2400
        # index arithmetic at the average rate would have cut elsewhere
        assert (first, last) != (round(0.4 * info.fps), int(2.4 * info.fps))
        assert info.time_of(15) == pytest.approx(times_ms[15] / 1000)
        # samples are uniform in time: the slow middle (2 s) gets most of them
        picked = sample_indices(0, 29, info.fps, 2.0, 48, times=info.frame_times)
        assert sum(10 <= i < 20 for i in picked) >= 3 and len(picked) <= 6
        frames = source.read([first, last])
    assert [nearest(frame, sources) for frame in frames] == [first, last]


# --- broken files ---------------------------------------------------------------------------------

def truncated_av1(tmp_path: Path) -> Path:
    # moov at the front (`+faststart`, as yt-dlp's ffmpeg merge writes it), then cut: the index
    # survives and lists frames the file no longer holds
    path = encode(tmp_path / "whole.mp4", face_frames(30), "libsvtav1", movflags="+faststart")
    data = path.read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def unknown_codec(tmp_path: Path) -> Path:
    # an H.264 mp4 whose sample entry says 'zzzz': no decoder anywhere has that codec
    data = encode(tmp_path / "h264.mp4", face_frames(10), "libx264").read_bytes()
    entry = data.index(b"avc1", data.index(b"stsd"))
    path = tmp_path / "unknown.mp4"
    path.write_bytes(data[:entry] + b"zzzz" + data[entry + 4:])
    return path


def audio_only(tmp_path: Path) -> Path:
    path = tmp_path / "audio.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("aac", rate=16000)
    tone = np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440).astype(np.float32)[None]
    def audio_frames():
        for i in range(0, 16000 - 1024, 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, i:i + 1024]),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i
            yield frame

    mux_all(container, stream, audio_frames())
    return path


def damaged_index(tmp_path: Path) -> Path:
    # the sample-size table (stsz) of the index overwritten: the frames cannot be located
    data = bytearray(encode(tmp_path / "h264.mp4", face_frames(10), "libx264").read_bytes())
    table = data.index(b"stsz")
    data[table + 12:table + 20] = b"\x00\x00\x00\x00\xff\xff\xff\xff"
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))
    return path


BROKEN = [
    pytest.param(truncated_av1, Reason.VIDEO_TRUNCATED,
                 ["lists 30 av1 frames, the file holds", "partial file"], id="truncated-av1"),
    pytest.param(unknown_codec, Reason.VIDEO_CODEC_UNSUPPORTED, ["no decoder"],
                 id="unknown-codec"),
    pytest.param(audio_only, Reason.VIDEO_NO_STREAM, ["has no video stream", "audio aac"],
                 id="audio-only"),
    pytest.param(damaged_index, Reason.VIDEO_UNREADABLE, ["broken header"],
                 id="damaged-index"),
]


@pytest.mark.parametrize(("make", "reason", "words"), BROKEN)
def test_a_broken_file_raises_its_own_reason_with_the_decoders_message(tmp_path, make,
                                                                         reason, words):
    path = make(tmp_path)
    with pytest.raises(DecodeError) as error:
        open_frames(str(path))
    assert error.value.reason == reason
    for word in words:
        assert word in error.value.message
    assert str(path) in error.value.message
