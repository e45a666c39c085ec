"""Decoding only the sampled frames of a clip: an mp4 (decord) or a folder of frame images (VFHQ).

Frames come back as RGB uint8 arrays at full resolution. Sampling is uniform in time at
`sample_fps` inside the clip's range, capped at `max_frames`. A file that cannot be used raises
`DecodeError` carrying a `Reason`, which the analyzer turns into a clip record.

Why full resolution is decoded once instead of a reduced-size pass for detection followed by a
full-size pass for crops: decord's reduced-size decoding still runs the codec at full size and
only rescales afterwards, so two passes would decode every kept frame twice. The analyzer
instead reads the sampled frames in small chunks, downscales each in memory for detection and
keeps a full-resolution frame only while the faces of that chunk are cropped.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from curation.records import Reason

FRAME_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_FOLDER_FPS = 25.0   # VFHQ frame folders carry no rate; the metadata's FPS wins when known


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


class VideoFileSource(FrameSource):
    """A video file read with decord (seeks to each requested frame, decodes nothing else)."""

    def __init__(self, path: str, num_threads: int = 1):
        import decord  # imported here so that importing this module stays cheap

        if os.path.getsize(path) == 0:
            raise DecodeError(Reason.VIDEO_EMPTY, f"zero-byte video file: {path}")
        try:
            self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
            num_frames = len(self._reader)
            height, width = self._reader[0].shape[:2] if num_frames else (0, 0)
            self._reader.seek(0)
            fps = float(self._reader.get_avg_fps())
        except DecodeError:
            raise
        except Exception as error:  # decord raises its own DECORDError and RuntimeError
            raise DecodeError(Reason.VIDEO_UNREADABLE,
                              f"cannot open video {path}: {_first_line(error)}") from error
        if num_frames <= 0 or width <= 0 or height <= 0:
            raise DecodeError(Reason.VIDEO_UNREADABLE, f"video has no frames: {path}")
        if not math.isfinite(fps) or fps <= 0:
            fps = DEFAULT_FOLDER_FPS
        self.path = path
        self.info = VideoInfo(width=int(width), height=int(height), fps=fps,
                              num_frames=int(num_frames))

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


class FrameFolderSource(FrameSource):
    """A folder of frame images in natural file-name order (how VFHQ clips are often stored)."""

    def __init__(self, path: str, fps: float | None = None):
        files = sorted((p for p in Path(path).iterdir()
                        if p.suffix.lower() in FRAME_IMAGE_SUFFIXES and p.is_file()),
                       key=lambda p: _natural_key(p.name))
        if not files:
            raise DecodeError(Reason.VIDEO_EMPTY, f"frame folder has no images: {path}")
        first = self._load(files[0])
        self.path = path
        self._files = files
        self.info = VideoInfo(width=first.shape[1], height=first.shape[0],
                              fps=float(fps) if fps and fps > 0 else DEFAULT_FOLDER_FPS,
                              num_frames=len(files))

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
    return VideoFileSource(path, num_threads=num_threads)


def frame_range(info: VideoInfo, start_sec: float | None = None, end_sec: float | None = None,
                start_frame: int | None = None, end_frame: int | None = None) -> tuple[int, int]:
    """The clip's inclusive frame range; a frame range wins over a time range.

    A frame t belongs to [start_sec, end_sec] when its timestamp t / fps lies inside it.
    Raises DecodeError(RANGE_EMPTY) when no frame of the video is inside the range.
    """
    last_frame = info.num_frames - 1
    if start_frame is not None or end_frame is not None:
        first = 0 if start_frame is None else int(start_frame)
        last = last_frame if end_frame is None else int(end_frame)
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
                   max_frames: int) -> list[int]:
    """Frame indices uniform in time at `sample_fps` inside [first, last], at most `max_frames`.

    Samples sit at the centres of equal time slots, so a short clip still gets its middle frame
    and the samples are symmetric about the clip's middle.
    """
    count = last - first + 1
    duration = count / fps
    wanted = max(1, round(duration * sample_fps)) if sample_fps > 0 else count
    wanted = min(wanted, count, max(1, max_frames))
    positions = first + (np.arange(wanted) + 0.5) * count / wanted
    indices = np.clip(np.floor(positions).astype(int), first, last)
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
