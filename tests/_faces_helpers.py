"""Real face images shipped in our dependencies, warps of them, and small test videos."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from curation.records import ClipRecord

INSIGHTFACE_IMAGES = Path(__import__("insightface").__file__).parent / "data" / "images"


@cache
def _face_image(name: str) -> np.ndarray:
    if name == "astronaut":
        import skimage.data

        return cv2.resize(skimage.data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    if name == "tom":   # a 112 px ArcFace crop: enlarge and give it room around the face
        tom = cv2.imread(str(INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"))
        tom = cv2.resize(tom, (448, 448), interpolation=cv2.INTER_CUBIC)
        return cv2.cvtColor(cv2.copyMakeBorder(tom, 288, 288, 288, 288, cv2.BORDER_REPLICATE),
                            cv2.COLOR_BGR2RGB)
    if name == "t1":    # group photo: several people
        return cv2.cvtColor(cv2.imread(str(INSIGHTFACE_IMAGES / "t1.jpg")), cv2.COLOR_BGR2RGB)
    if name == "t1_face":   # one person of the group photo, enlarged (face box 729,365-836,472)
        return cv2.resize(_face_image("t1")[228:608, 592:972], (768, 768),
                          interpolation=cv2.INTER_CUBIC)
    raise KeyError(name)


def face_image(name: str) -> np.ndarray:
    """A fresh copy of a real face image (RGB uint8): astronaut, tom, t1 or t1_face."""
    return _face_image(name).copy()


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """In-plane rotation about the image centre, counter-clockwise for positive degrees."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def perspective_turn(image: np.ndarray, box: tuple[float, float, float, float],
                     strength: float) -> np.ndarray:
    """Simulated head turn: the right half of the face box recedes (shrinks vertically and
    narrows) by `strength` (0..0.5), like a face plane turned about its vertical axis."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_h = (y1 - y0) / 2
    source = np.float32([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    squeeze = half_h * strength
    target = np.float32([[x0 + strength * (cx - x0) * 0.5, y0 - squeeze * 0.3],
                         [x1 - strength * (x1 - cx), cy - half_h + squeeze],
                         [x1 - strength * (x1 - cx), cy + half_h - squeeze],
                         [x0 + strength * (cx - x0) * 0.5, y1 + squeeze * 0.3]])
    matrix = cv2.getPerspectiveTransform(source, target)
    height, width = image.shape[:2]
    return cv2.warpPerspective(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """An mp4 (MPEG-4 part 2, readable by decord) from RGB frames."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def moving_face_frames(count: int = 12, side: int = 512) -> list[np.ndarray]:
    """The astronaut's face, slowly rotating, at `side` x `side`."""
    base = cv2.resize(face_image("astronaut"), (side, side), interpolation=cv2.INTER_AREA)
    return [rotate(base, 2.0 * i - count) for i in range(count)]


def clip_for(path: Path | str, **fields) -> ClipRecord:
    record = ClipRecord(source="folder", clip_id=Path(path).stem or "clip",
                        original_clip_id=Path(path).name, identity_id="test:1",
                        source_video_id="test", video_path=str(path))
    return replace(record, **fields)
