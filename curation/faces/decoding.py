"""Decoding only the sampled frames of a clip: a video file of any codec yt-dlp writes, or a
folder of frame images (VFHQ).

Contract:
- `open_frames(path)` returns a `FrameSource`; `read(indices)` gives those frames as an
  (N, H, W, 3) uint8 RGB array at full resolution, frames numbered in presentation order.
- Every video file is probed first with PyAV (container, video stream, codec, and the
  timestamp of every frame from the demuxer, no decoding). decord reads it where it can (the
  fast path: H.264, HEVC, VP9, ...); AV1, which decord 0.6's ffmpeg has no decoder for, and any
  file decord refuses are read with PyAV (its wheels carry dav1d and libvpx). Both paths give
  the same bytes for the same frame (swscale's rgb24 conversion), so which one read an H.264
  clip never changes a shard. `VideoInfo.codec` / `.decoder` say what was read and by whom.
- Time is presentation time from the first frame. On a constant-rate stream (every timestamp
  within one timestamp unit of i / fps) frame i is at i / fps exactly as before; otherwise
  (variable frame rate) `VideoInfo.frame_times` holds each frame's own time, and time ranges
  (`frame_range`) and sampling (`sample_indices`) use it.
- Sampling is uniform in time at `sample_fps` inside the clip's range, capped at `max_frames`.
- A file that cannot be used raises `DecodeError` carrying a `Reason` and the decoder's own
  message: zero bytes (video_empty), no video stream (video_no_stream), a codec no decoder here
  has (video_codec_unsupported), fewer frames than the container's index lists
  (video_truncated), a container or index that cannot be read (video_unreadable), frames that
  fail to decode (video_decode_error).

Why full resolution is decoded once instead of a reduced-size pass for detection followed by a
full-size pass for crops: decord's reduced-size decoding still runs the codec at full size and
only rescales afterwards, so two passes would decode every kept frame twice. The analyzer
instead reads the sampled frames in small chunks, downscales each in memory for detection and
keeps a full-resolution frame only while the faces of that chunk are cropped.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from curation.records import Reason

FRAME_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_FOLDER_FPS = 25.0   # VFHQ frame folders carry no rate; the metadata's FPS wins when known
# Codecs decord 0.6.0's bundled ffmpeg has no decoder for: trying it first would only cost a
# second open of the file before PyAV reads it anyway (any other refusal is found by trying).
DECORD_CANNOT_DECODE = frozenset({"av1"})
# A boundary timestamp this close to a range's end counts as inside (float noise in metadata).
TIME_TOLERANCE_S = 1e-6


class DecodeError(Exception):
    """A clip that cannot be decoded; `reason` is a `Reason` value for the clip record."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as an H x W x 3 uint8 RGB array.

    Read with Pillow, not cv2: decord loads its bundled zlib 1.2.3 into the process's global
    symbol scope, and cv2's libpng then binds to it and fails on every PNG ("bad parameters to
    zlib") whenever decord was imported first. Pillow carries its own zlib and is unaffected.
    """
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int
    codec: str | None = None      # ffmpeg's codec name ("h264", "av1", "vp9", "hevc"), "png"...
    decoder: str | None = None    # "decord", "pyav" or "pillow" (frame folders)
    # Per-frame presentation times (s, from the first frame) of a variable-frame-rate video;
    # None: constant rate, frame i is shown at i / fps.
    frame_times: np.ndarray | None = field(default=None, compare=False, repr=False)

    def time_of(self, index: int) -> float:
        """The presentation time (s) of frame `index`, from the first frame."""
        if self.frame_times is None:
            return index / self.fps
        return float(self.frame_times[index])


class FrameSource:
    """Random access to the frames of one clip."""

    info: VideoInfo

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` as an (N, H, W, 3) uint8 RGB array."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- probing (PyAV, demux only) -----------------------------------------------------------------

@dataclass(frozen=True)
class StreamProbe:
    """What the container says about a file's video stream, read without decoding."""

    stream_index: int
    codec: str
    width: int
    height: int
    rate: Fraction | None           # the container's average frame rate
    time_base: Fraction
    pts: np.ndarray                 # int64, presentation timestamps of the frames, sorted
    keyframe_pts: np.ndarray        # int64, those of keyframes, sorted

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def frame_times(self, fps: float) -> np.ndarray | None:
        """Seconds from the first frame per frame, or None when the stream is constant-rate at
        `fps` (every timestamp within one timestamp unit of i / fps)."""
        offsets = self.pts - self.pts[0]
        times = offsets * self.time_base.numerator / self.time_base.denominator
        grid = np.arange(len(times)) / fps
        if len(times) < 2 or np.abs(times - grid).max() <= float(self.time_base) + 1e-9:
            return None
        return times


@contextlib.contextmanager
def _ffmpeg_log() -> Iterator[list]:
    """ffmpeg's own error lines while the block runs in this thread (they name the problem:
    "moov atom not found", "partial file", "Error parsing OBU data")."""
    import av.logging

    if av.logging.get_level() is None:   # PyAV drops ffmpeg's log unless a level is set
        av.logging.set_level(av.logging.ERROR)
    with av.logging.Capture(local=True) as logs:
        yield logs


def _av_message(error: BaseException | None, logs: list) -> str:
    parts = [_first_line(error)] if error is not None else []
    for _level, _name, line in logs[-2:]:
        line = line.strip()
        if line and not any(line in part for part in parts):
            parts.append(f"ffmpeg: {line[:200]}")
    return "; ".join(parts)


def _video_stream(container, path: str):
    """The video stream to read; cover art (an attached picture) is not the video."""
    import av

    attached = getattr(getattr(av.stream, "Disposition", None), "attached_pic", 0)
    streams = [s for s in container.streams.video
               if not (attached and int(s.disposition) & int(attached))]
    if not streams:
        held = ", ".join(f"{s.type} {s.codec_context.name if s.codec_context else '?'}"
                         for s in container.streams) or "nothing"
        raise DecodeError(Reason.VIDEO_NO_STREAM,
                          f"{path} has no video stream (it holds: {held})")
    return streams[0]


def probe_video(path: str) -> StreamProbe:
    """Open `path` with PyAV and list its video frames' timestamps; raises DecodeError."""
    import av

    if os.path.getsize(path) == 0:
        raise DecodeError(Reason.VIDEO_EMPTY, f"zero-byte video file: {path}")
    with _ffmpeg_log() as logs:
        try:
            container = av.open(path)
        except Exception as error:  # noqa: BLE001 - av raises FFmpegError subclasses and OSError
            raise DecodeError(Reason.VIDEO_UNREADABLE,
                              f"cannot open video {path}: {_av_message(error, logs)}") from error
        try:
            stream = _video_stream(container, path)
            context = stream.codec_context
            if context is None:
                raise DecodeError(Reason.VIDEO_CODEC_UNSUPPORTED,
                                  f"no decoder for the video stream of {path}: its codec is "
                                  f"unknown to ffmpeg {av.ffmpeg_version_info} "
                                  f"({container.format.name} container)")
            codec = context.codec.canonical_name
            pts, keys = [], []
            try:
                for packet in container.demux(stream):
                    if packet.size == 0 or packet.is_discard:
                        continue   # the flush packet; pre-roll an edit list hides
                    time = packet.pts if packet.pts is not None else packet.dts
                    if time is None:
                        raise DecodeError(Reason.VIDEO_UNREADABLE,
                                          f"{path}: video packets carry no timestamps")
                    pts.append(time)
                    if packet.is_keyframe:
                        keys.append(time)
            except DecodeError:
                raise
            except Exception as error:  # noqa: BLE001 - a read error mid-file
                raise DecodeError(Reason.VIDEO_TRUNCATED if pts else Reason.VIDEO_UNREADABLE,
                                  f"{path}: the container fails after {len(pts)} frames: "
                                  f"{_av_message(error, logs)}") from error
            declared = int(stream.frames or 0)
            if not pts:
                raise DecodeError(Reason.VIDEO_UNREADABLE,
                                  f"{path}: no {codec} frame can be read from the container"
                                  + (f" (its index lists {declared})" if declared else "")
                                  + (f"; {_av_message(None, logs)}" if logs else ""))
            if declared > len(pts):
                raise DecodeError(Reason.VIDEO_TRUNCATED,
                                  f"{path} is truncated: its index lists {declared} {codec} "
                                  f"frames, the file holds {len(pts)}"
                                  + (f"; {_av_message(None, logs)}" if logs else ""))
            rate = stream.average_rate or stream.guessed_rate
            return StreamProbe(stream.index, codec, int(context.width), int(context.height),
                               Fraction(rate) if rate else None, Fraction(stream.time_base),
                               np.sort(np.asarray(pts, np.int64)),
                               np.sort(np.asarray(keys or pts[:1], np.int64)))
        finally:
            container.close()


# --- video files --------------------------------------------------------------------------------

class DecordSource(FrameSource):
    """A video file read with decord (seeks to each requested frame, decodes nothing else)."""

    def __init__(self, path: str, probe: StreamProbe, num_threads: int = 1):
        import decord  # imported here so that importing this module stays cheap

        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
            num_frames = len(self._reader)
            height, width = self._reader[0].shape[:2] if num_frames else (0, 0)
            self._reader.seek(0)
            fps = float(self._reader.get_avg_fps())
        except Exception as error:  # decord raises its own DECORDError and RuntimeError
            raise DecodeError(Reason.VIDEO_UNREADABLE,
                              f"decord cannot open {path}: {_first_line(error)}") from error
        if num_frames != probe.num_frames or width <= 0 or height <= 0:
            # frame i must be the same picture for decord and for the timestamps
            raise DecodeError(Reason.VIDEO_UNREADABLE,
                              f"decord finds {num_frames} frames of {width}x{height} in {path}, "
                              f"the container {probe.num_frames}")
        if not math.isfinite(fps) or fps <= 0:
            fps = DEFAULT_FOLDER_FPS
        self.path = path
        self.info = VideoInfo(width=int(width), height=int(height), fps=fps,
                              num_frames=int(num_frames), codec=probe.codec, decoder="decord",
                              frame_times=probe.frame_times(fps))

    def read(self, indices: Sequence[int]) -> np.ndarray:
        try:
            frames = self._reader.get_batch(list(indices)).asnumpy()
        except Exception as error:
            raise DecodeError(Reason.VIDEO_DECODE_ERROR,
                              f"frames {list(indices)[:4]}... of {self.path} fail to decode: "
                              f"{_first_line(error)}") from error
        if frames.ndim != 4 or frames.shape[0] != len(indices):
            raise DecodeError(Reason.VIDEO_DECODE_ERROR,
                              f"decoder returned {frames.shape} for {len(indices)} frames")
        return frames

    def close(self) -> None:
        self._reader = None


VideoFileSource = DecordSource   # the name this class had before PyAV joined


class PyAVSource(FrameSource):
    """A video file read with PyAV: seeks to the keyframe before a wanted frame (or decodes on
    when the wanted frame is ahead in the same group of pictures) and identifies frames by their
    timestamps, so frame i is the i-th by presentation time, as for decord."""

    def __init__(self, path: str, probe: StreamProbe, num_threads: int = 1):
        import av

        with _ffmpeg_log() as logs:
            try:
                self._container = av.open(path)
            except Exception as error:  # noqa: BLE001
                raise DecodeError(Reason.VIDEO_UNREADABLE,
                                  f"cannot open video {path}: {_av_message(error, logs)}"
                                  ) from error
        self._stream = self._container.streams[probe.stream_index]
        self._stream.codec_context.thread_count = max(1, num_threads)
        self._pts = probe.pts
        self._keys = probe.keyframe_pts
        self._index_of = {int(p): i for i, p in enumerate(probe.pts)}
        self._frames = None          # the decode iterator since the last seek
        self._position = -1          # index of the last frame decoded (-1: before any)
        rate = probe.rate
        fps = float(rate) if rate and math.isfinite(float(rate)) and rate > 0 else \
            DEFAULT_FOLDER_FPS
        self.path = path
        self.info = VideoInfo(width=probe.width, height=probe.height, fps=fps,
                              num_frames=probe.num_frames, codec=probe.codec, decoder="pyav",
                              frame_times=probe.frame_times(fps))

    def read(self, indices: Sequence[int]) -> np.ndarray:
        frames: dict[int, np.ndarray] = {}
        with _ffmpeg_log() as logs:
            for index in sorted(set(int(i) for i in indices)):
                if not 0 <= index < self.info.num_frames:
                    raise DecodeError(Reason.VIDEO_DECODE_ERROR,
                                      f"frame {index} is outside the {self.info.num_frames} "
                                      f"frames of {self.path}")
                try:
                    frames[index] = self._frame(index)
                except DecodeError:
                    raise
                except Exception as error:  # noqa: BLE001 - av's FFmpegError family, OSError
                    self._frames, self._position = None, -1
                    raise DecodeError(Reason.VIDEO_DECODE_ERROR,
                                      f"frame {index} of {self.path} fails to decode: "
                                      f"{_av_message(error, logs)}") from error
        return np.stack([frames[int(i)] for i in indices]) if len(indices) else \
            np.zeros((0, self.info.height, self.info.width, 3), np.uint8)

    def _frame(self, index: int) -> np.ndarray:
        target = int(self._pts[index])
        key = int(self._keys[max(0, np.searchsorted(self._keys, target, "right") - 1)])
        key_index = self._index_of.get(key, 0)
        # decode on from here when the frame is ahead in the same group of pictures; seek when
        # it is behind us or a keyframe nearer to it lies ahead
        if self._frames is None or not (key_index <= self._position < index):
            self._container.seek(key, stream=self._stream, backward=True, any_frame=False)
            self._frames = self._container.decode(self._stream)
            self._position = key_index - 1
        for frame in self._frames:
            time = frame.pts if frame.pts is not None else frame.dts
            if time is None or time < target:
                continue
            self._position = self._index_of.get(int(time), self._position)
            if time == target:
                return frame.to_ndarray(format="rgb24")
            break
        self._frames, self._position = None, -1
        raise DecodeError(Reason.VIDEO_DECODE_ERROR,
                          f"frame {index} (pts {target}) of {self.path} is not produced by the "
                          f"{self.info.codec} decoder")

    def close(self) -> None:
        self._frames = None
        with contextlib.suppress(Exception):
            self._container.close()


def open_video(path: str, num_threads: int = 1, decoder: str | None = None) -> FrameSource:
    """A video file, probed, then read by decord where it decodes the codec, else by PyAV.

    `decoder` ("decord" or "pyav") forces one path (tests compare them).
    """
    probe = probe_video(path)
    refusal = None
    if decoder != "pyav" and (decoder == "decord" or probe.codec not in DECORD_CANNOT_DECODE):
        try:
            return DecordSource(path, probe, num_threads)
        except DecodeError as error:
            if decoder == "decord":
                raise
            refusal = error
    try:
        return PyAVSource(path, probe, num_threads)
    except DecodeError as error:
        if refusal is not None:
            error.message = f"{error.message}; {refusal.message}"
        raise


# --- frame folders ------------------------------------------------------------------------------

class FrameFolderSource(FrameSource):
    """A folder of frame images in natural file-name order (how VFHQ clips are often stored)."""

    def __init__(self, path: str, fps: float | None = None):
        files = sorted((p for p in Path(path).iterdir()
                        if p.suffix.lower() in FRAME_IMAGE_SUFFIXES and p.is_file()),
                       key=lambda p: _natural_key(p.name))
        if not files:
            raise DecodeError(Reason.VIDEO_EMPTY, f"frame folder has no images: {path}")
        first = self._load(files[0])
        suffix = files[0].suffix.lower().lstrip(".")
        self.path = path
        self._files = files
        self.info = VideoInfo(width=first.shape[1], height=first.shape[0],
                              fps=float(fps) if fps and fps > 0 else DEFAULT_FOLDER_FPS,
                              num_frames=len(files), codec="jpeg" if suffix == "jpg" else suffix,
                              decoder="pillow")

    @staticmethod
    def _load(file: Path) -> np.ndarray:
        try:
            return read_image_rgb(file)
        except (OSError, ValueError) as exc:
            raise DecodeError(Reason.VIDEO_DECODE_ERROR,
                              f"cannot read frame image {file}: {exc}") from exc

    def read(self, indices: Sequence[int]) -> np.ndarray:
        frames = [self._load(self._files[i]) for i in indices]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1 or (frames and frames[0].shape[:2] != (self.info.height,
                                                                    self.info.width)):
            raise DecodeError(Reason.VIDEO_DECODE_ERROR,
                              f"frame images of {self.path} differ in size")
        return np.stack(frames) if frames else np.zeros((0, self.info.height,
                                                         self.info.width, 3), np.uint8)


def open_frames(path: str | None, fps_hint: float | None = None,
                num_threads: int = 1) -> FrameSource:
    """Open a clip given as a video file or a frame folder; raises DecodeError."""
    if not path or not os.path.exists(path):
        raise DecodeError(Reason.VIDEO_MISSING, f"no such video: {path}")
    if os.path.isdir(path):
        return FrameFolderSource(path, fps=fps_hint)
    return open_video(path, num_threads=num_threads)


# --- ranges and sampling ------------------------------------------------------------------------

def frame_range(info: VideoInfo, start_sec: float | None = None, end_sec: float | None = None,
                start_frame: int | None = None, end_frame: int | None = None) -> tuple[int, int]:
    """The clip's inclusive frame range; a frame range wins over a time range.

    A frame belongs to [start_sec, end_sec] when its presentation time lies inside it (i / fps
    on a constant-rate video, its own timestamp on a variable-rate one).
    Raises DecodeError(RANGE_EMPTY) when no frame of the video is inside the range.
    """
    last_frame = info.num_frames - 1
    times = info.frame_times
    if start_frame is not None or end_frame is not None:
        first = 0 if start_frame is None else int(start_frame)
        last = last_frame if end_frame is None else int(end_frame)
    elif times is not None:
        first = 0 if start_sec is None else int(np.searchsorted(
            times, start_sec - TIME_TOLERANCE_S, "left"))
        last = last_frame if end_sec is None else int(np.searchsorted(
            times, end_sec + TIME_TOLERANCE_S, "right")) - 1
    else:
        first = 0 if start_sec is None else math.ceil(start_sec * info.fps - 1e-6)
        last = last_frame if end_sec is None else math.floor(end_sec * info.fps + 1e-6)
    first, last = max(first, 0), min(last, last_frame)
    if last < first:
        raise DecodeError(Reason.RANGE_EMPTY,
                          f"range (frames {start_frame}-{end_frame}, seconds {start_sec}-{end_sec})"
                          f" has no frames in a video of {info.num_frames} frames at "
                          f"{info.fps:.3f} fps")
    return first, last


def sample_indices(first: int, last: int, fps: float, sample_fps: float,
                   max_frames: int, times: np.ndarray | None = None) -> list[int]:
    """Frame indices uniform in time at `sample_fps` inside [first, last], at most `max_frames`.

    Samples sit at the centres of equal time slots, so a short clip still gets its middle frame
    and the samples are symmetric about the clip's middle. With `times` (a variable-rate
    video's frame times) a sample is the frame on screen at its slot's centre; without, frame i
    lasts 1 / fps and the same rule reduces to index arithmetic.
    """
    count = last - first + 1
    if times is not None and count > 1:
        return _sample_by_time(np.asarray(times, np.float64), first, last, sample_fps,
                               max_frames)
    duration = count / fps
    wanted = max(1, round(duration * sample_fps)) if sample_fps > 0 else count
    wanted = min(wanted, count, max(1, max_frames))
    positions = first + (np.arange(wanted) + 0.5) * count / wanted
    indices = np.clip(np.floor(positions).astype(int), first, last)
    return sorted(set(int(i) for i in indices))


def _sample_by_time(times: np.ndarray, first: int, last: int, sample_fps: float,
                    max_frames: int) -> list[int]:
    count = last - first + 1
    # the last frame of the range is on screen until the next frame, or for the median
    # frame duration at the end of the video
    steps = np.diff(times[first:last + 1])
    tail = times[last + 1] - times[last] if last + 1 < len(times) else float(np.median(steps))
    start, end = times[first], times[last] + max(tail, 0.0)
    duration = max(end - start, 1e-9)
    wanted = max(1, round(duration * sample_fps)) if sample_fps > 0 else count
    wanted = min(wanted, count, max(1, max_frames))
    centres = start + (np.arange(wanted) + 0.5) * duration / wanted
    indices = np.clip(np.searchsorted(times, centres, "right") - 1, first, last)
    return sorted(set(int(i) for i in indices))


def iter_frame_chunks(source: FrameSource, indices: Sequence[int],
                      chunk_size: int = 8) -> Iterator[tuple[list[int], np.ndarray]]:
    """Sampled frames in chunks of `chunk_size`, so at most one chunk is held in memory."""
    for start in range(0, len(indices), chunk_size):
        chunk = list(indices[start:start + chunk_size])
        yield chunk, source.read(chunk)


def resize_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """`image` shrunk so its longer side is at most `max_side`, and the scale used (<= 1)."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width)) if max_side > 0 else 1.0
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
