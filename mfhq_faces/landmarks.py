"""mediapipe FaceMesh landmarks of one detected face, computed on a crop around its box.

FaceMesh runs on a square crop (`context` x the face size, resized to `input_side` px) rather
than the whole frame: it is faster, and a face that is small in a large frame still gets the
model's full resolution. Landmarks are returned in full-frame pixels: (468, 3) with x, y in
pixels and z (relative depth, camera-facing negative) in the same pixel units.
"""

from __future__ import annotations

import numpy as np

from mfhq_faces.geometry import Box, face_size

NUM_LANDMARKS = 468


def face_oval_indices() -> list[int]:
    """FaceMesh indices of the face outline (chin, jaw, temples, forehead)."""
    import mediapipe as mp

    edges = mp.solutions.face_mesh.FACEMESH_FACE_OVAL
    return sorted({i for edge in edges for i in edge})


def crop_transform(bbox: Box, context: float, side: int) -> np.ndarray:
    """2x3 matrix mapping frame px to a `side` x `side` crop centred on the box."""
    centre_x, centre_y = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    scale = side / max(face_size(bbox) * context, 1.0)
    return np.array([[scale, 0.0, side / 2 - scale * centre_x],
                     [0.0, scale, side / 2 - scale * centre_y]])


class FaceMeshLandmarker:
    """`border` and `interpolation` (OpenCV flags) say how the crop round the box is cut: black
    outside the frame and area/linear resampling by default (the build's); None picks area when
    shrinking and linear otherwise."""

    def __init__(self, context: float = 2.0, input_side: int = 256,
                 min_confidence: float = 0.5, border: int | None = None,
                 interpolation: int | None = None):
        import cv2
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False,
            min_detection_confidence=min_confidence)
        self.context = context
        self.input_side = input_side
        self.border = cv2.BORDER_CONSTANT if border is None else border
        self.interpolation = interpolation

    def landmarks(self, frame_rgb: np.ndarray, bbox: Box) -> np.ndarray | None:
        """(468, 3) landmarks in frame pixels, or None when FaceMesh finds no face there."""
        import cv2

        to_crop = crop_transform(bbox, self.context, self.input_side)
        flags = self.interpolation
        if flags is None:
            flags = cv2.INTER_AREA if to_crop[0, 0] < 1 else cv2.INTER_LINEAR
        crop = cv2.warpAffine(frame_rgb, to_crop, (self.input_side, self.input_side),
                              flags=flags, borderMode=self.border)
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        points = np.array([[p.x, p.y, p.z] for p in result.multi_face_landmarks[0].landmark])
        points = points[:NUM_LANDMARKS] * self.input_side
        scale = to_crop[0, 0]
        frame_points = np.empty_like(points)
        frame_points[:, 0] = (points[:, 0] - to_crop[0, 2]) / scale
        frame_points[:, 1] = (points[:, 1] - to_crop[1, 2]) / scale
        frame_points[:, 2] = points[:, 2] / scale
        if not _centre_inside(frame_points, bbox):
            return None   # FaceMesh locked onto another face that shares the crop
        return frame_points

    def close(self) -> None:
        self._mesh.close()


def _centre_inside(points: np.ndarray, bbox: Box) -> bool:
    centre = points[:, :2].mean(axis=0)
    margin = 0.25 * face_size(bbox)
    return (bbox[0] - margin <= centre[0] <= bbox[2] + margin
            and bbox[1] - margin <= centre[1] <= bbox[3] + margin)
