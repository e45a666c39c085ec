"""Five-point similarity alignment to a square crop, and the face-region mask in crop pixels.

The template puts the eyes, nose tip and mouth corners where FFHQ-style crops have them: the
face is centred with room for the forehead, chin and ears (outer-eye distance 0.25 of the side,
eyes 45 % down, mouth corners 74 % down), i.e. ArcFace's five-point layout shrunk by about 0.8
and moved down so that the whole head fits. Alignment is a least-squares similarity transform
(rotation, uniform scale, translation) from the five points to the template.
"""

from __future__ import annotations

import cv2
import numpy as np

# unit-square template: subject's right eye centre (image left), left eye centre, nose tip,
# right mouth corner, left mouth corner
ALIGN_TEMPLATE = np.array([
    [0.374, 0.450],
    [0.626, 0.450],
    [0.500, 0.595],
    [0.395, 0.743],
    [0.605, 0.743],
])
# Where the face sits in an aligned crop (unit square, x0 y0 x1 y1): the template's points span
# x 0.37-0.63, y 0.45-0.74; a detector box is about 1.6 eye distances wide, from the brows to
# below the mouth. Used where the image is an aligned crop already (dlib's chip, the evaluation).
ALIGNED_FACE_BOX = (0.30, 0.34, 0.70, 0.80)
# FaceMesh indices for the five points (each eye centre is the mean of its two corners)
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)
NOSE_TIP = 1
MOUTH_RIGHT, MOUTH_LEFT = 61, 291


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(5, 2) alignment points from (468, 2+) FaceMesh landmarks."""
    pts = landmarks[:, :2]
    return np.array([
        pts[list(RIGHT_EYE_CORNERS)].mean(axis=0),
        pts[list(LEFT_EYE_CORNERS)].mean(axis=0),
        pts[NOSE_TIP],
        pts[MOUTH_RIGHT],
        pts[MOUTH_LEFT],
    ])


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (Umeyama, no reflection) mapping source to target points."""
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    variance = (centred_s ** 2).sum() / len(source)
    scale = np.trace(np.diag(singular) @ sign) / variance if variance > 0 else 1.0
    translation = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, translation[:, None]])


def alignment_matrix(points5: np.ndarray, size: int) -> np.ndarray:
    """2x3 matrix mapping frame pixels to the `size` x `size` aligned crop."""
    return similarity_transform(points5, ALIGN_TEMPLATE * size)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points[:, :2] @ matrix[:, :2].T + matrix[:, 2]


def aligned_crop(frame_rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The square crop (uint8 RGB); area outside the frame is black."""
    shrinking = np.sqrt(abs(np.linalg.det(matrix[:, :2]))) < 1.0
    return cv2.warpAffine(frame_rgb, matrix, (size, size),
                          flags=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def face_mask(landmarks: np.ndarray, oval_indices: list[int], matrix: np.ndarray,
              size: int) -> np.ndarray:
    """0/255 mask of the convex hull of the face outline, in crop pixels."""
    outline = transform_points(matrix, landmarks[oval_indices])
    hull = cv2.convexHull(np.round(outline).astype(np.int32))
    mask = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask, hull, 255)
    return mask


def usable_points(points: np.ndarray | None, side: int) -> bool:
    """Five finite points spread over more than a tenth of the image (not placeholders)."""
    if points is None or not np.isfinite(points).all():
        return False
    return float(np.ptp(points[:, 0])) > side / 10
