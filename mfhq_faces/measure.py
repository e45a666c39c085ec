"""One face's geometry, measured the same way by the build and by the evaluation.

`measure_face(image, bbox, landmarker, crop_size)` runs FaceMesh around the face's box, then
head pose (`mfhq_faces.pose`, pinhole camera of the image's own size) and the five alignment
points, and the similarity that maps the image onto the `crop_size` aligned crop
(`mfhq_faces.align`). It returns None when FaceMesh finds no face there or pose has no solution.

The build calls it on a decoded frame with the detector's box (`curation.faces.analysis`); the
evaluation calls it on a generated or real aligned crop with the face box the template implies
(`aligned_face_box`). Both embed with `mfhq_faces.embedders` from the points this returns, so
"the same person" and "the same pose" mean the same thing in the dataset and in the paper's
metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mfhq_faces.align import (
    ALIGNED_FACE_BOX,
    aligned_crop,
    alignment_matrix,
    five_points,
    transform_points,
)
from mfhq_faces.geometry import Box
from mfhq_faces.pose import head_pose


@dataclass
class FaceGeometry:
    landmarks: np.ndarray               # (468, 3) FaceMesh points in image pixels
    pose: tuple[float, float, float]    # yaw, pitch, roll in degrees (`mfhq_faces.pose`)
    points5: np.ndarray                 # (5, 2) alignment points in image pixels
    matrix: np.ndarray                  # 2 x 3: image pixels -> aligned crop pixels
    crop_size: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The aligned `crop_size` square crop of `image` (uint8 RGB)."""
        return aligned_crop(image, self.matrix, self.crop_size)

    def crop_points5(self) -> np.ndarray:
        """The five points in crop pixels, rounded as the build records them (0.01 px)."""
        return transform_points(self.matrix, self.points5).round(2)


def measure_face(image: np.ndarray, bbox: Box, landmarker, crop_size: int) -> FaceGeometry | None:
    """Landmarks, pose and alignment of the face in `bbox` (None: no landmarks or no pose)."""
    landmarks = landmarker.landmarks(image, bbox)
    if landmarks is None:
        return None
    height, width = image.shape[:2]
    try:
        pose = head_pose(landmarks, width, height)
    except ValueError:
        return None
    points5 = five_points(landmarks)
    return FaceGeometry(landmarks, pose, points5, alignment_matrix(points5, crop_size),
                        crop_size)


def aligned_face_box(side: int) -> Box:
    """The face's box in an aligned `side` x `side` crop (`mfhq_faces.align.ALIGNED_FACE_BOX`)."""
    x0, y0, x1, y1 = ALIGNED_FACE_BOX
    return (x0 * side, y0 * side, x1 * side, y1 * side)


def pose_error(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Sum of absolute yaw, pitch and roll differences in degrees (the paper's pose error)."""
    return float(sum(abs(x - y) for x, y in zip(a, b, strict=True)))
