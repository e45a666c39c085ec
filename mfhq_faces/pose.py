"""Head pose (yaw, pitch, roll in degrees) from FaceMesh landmarks against a canonical 3D face.

Sign convention (image as seen by the viewer, camera looking at the subject):
- yaw   > 0: the face turns towards the image's right (the subject's own left); nose moves right.
- pitch > 0: the face tilts up (looks above the camera); nose moves up.
- roll  > 0: the face rotates counter-clockwise in the image (as `cv2.getRotationMatrix2D`
  with a positive angle rotates the picture).
A frontal face is (0, 0, 0). Mirroring an image negates yaw and roll and keeps pitch.

The angles are Euler angles of the rotation R (model -> camera, OpenCV camera axes x right,
y down, z forward) with R = Rz(-roll) Ry(-yaw) Rx(-pitch), found with cv2.solvePnP under a
pinhole camera whose focal length is the frame's longer side and whose centre is the frame's.

Canonical model: mediapipe's wheel may ship `canonical_face_model.obj` under
`mediapipe/modules/face_geometry/data/`; when it is there, its vertices (which share FaceMesh's
indices) are used for the points below. The 0.10.21 wheel ships no such file; then a small
built-in set of 9 points is used, taken from insightface's 68-point 3D mean face shape
(`insightface/data/objects/meanshape_68.pkl`) at the points FaceMesh and the 68-point scheme
share, made exactly left-right symmetric (so mirrored faces give mirrored poses) and expressed
with x right, y down, z away from the camera, in units of the outer eye-corner distance, origin midway between
the outer eye corners.
Absolute pitch from a generic model is the weakest angle (a frontal face may read a few to ~10
degrees down); yaw and roll, and pitch differences between frames of one face, are reliable.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

# FaceMesh index -> canonical (x, y, z). Derived from insightface's meanshape_68 (see above):
# eye corners 36/39/42/45, nose bridge 27, subnasale 33, mouth corners 48/54, chin 8 of the
# 68-point scheme. The nose tip is left out on purpose: the 68-point "nose tip" (30) sits much
# higher on the ridge than FaceMesh's tip (1), and pairing them biased pitch by about 20 degrees.
CANONICAL_POINTS: dict[int, tuple[float, float, float]] = {
    33: (-0.500, 0.000, 0.000),    # subject's right eye, outer corner (image left)
    133: (-0.193, 0.001, -0.072),    # right eye, inner corner
    362: (0.193, 0.001, -0.072),     # left eye, inner corner
    263: (0.500, 0.000, 0.000),    # left eye, outer corner
    168: (0.000, -0.013, -0.263),    # nose bridge between the eyes
    2: (0.000, 0.463, -0.332),       # below the nose (subnasale)
    61: (-0.275, 0.723, -0.152),     # mouth corner, right
    291: (0.275, 0.723, -0.152),     # mouth corner, left
    152: (0.000, 1.176, -0.166),     # chin
}
MEDIAPIPE_CANONICAL_OBJ = Path("modules") / "face_geometry" / "data" / "canonical_face_model.obj"


@lru_cache(maxsize=1)
def canonical_model() -> tuple[np.ndarray, np.ndarray, str]:
    """(FaceMesh indices, (K, 3) canonical points, source description)."""
    indices = np.array(sorted(CANONICAL_POINTS))
    obj_points = _mediapipe_obj_vertices()
    if obj_points is not None and len(obj_points) >= 468:
        # mediapipe's model: x right, y up, z towards the viewer (cm); flip y and z to ours
        points = obj_points[indices] * np.array([1.0, -1.0, -1.0])
        return indices, points, "mediapipe canonical_face_model.obj"
    points = np.array([CANONICAL_POINTS[i] for i in indices])
    return indices, points, "built-in 9-point set from insightface meanshape_68"


def _mediapipe_obj_vertices() -> np.ndarray | None:
    try:
        import mediapipe
    except ImportError:
        return None
    path = Path(mediapipe.__file__).parent / MEDIAPIPE_CANONICAL_OBJ
    if not path.is_file():
        return None
    vertices = [line.split()[1:4] for line in path.read_text().splitlines()
                if line.startswith("v ")]
    return np.array(vertices, dtype=np.float64)


def camera_matrix(width: int, height: int) -> np.ndarray:
    focal = float(max(width, height))
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])


def head_pose(landmarks: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from (468, 2+) FaceMesh landmarks in frame pixels."""
    indices, model, _ = canonical_model()
    image_points = np.ascontiguousarray(landmarks[indices, :2], dtype=np.float64)
    camera = camera_matrix(width, height)
    ok, rvec, tvec = cv2.solvePnP(model, image_points, camera, None,
                                  flags=cv2.SOLVEPNP_EPNP)
    if ok:
        ok, rvec, tvec = cv2.solvePnP(model, image_points, camera, None, rvec, tvec,
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or tvec[2, 0] <= 0:
        raise ValueError("head pose: no solution in front of the camera")
    rotation, _ = cv2.Rodrigues(rvec)
    return euler_from_rotation(rotation)


def euler_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) of R = Rz(-roll) Ry(-yaw) Rx(-pitch) in our sign convention."""
    about_y = math.asin(max(-1.0, min(1.0, -rotation[2, 0])))
    about_x = math.atan2(rotation[2, 1], rotation[2, 2])
    about_z = math.atan2(rotation[1, 0], rotation[0, 0])
    # camera axes have y down: a positive turn about y moves the nose left, about x moves it
    # down, about z turns the image clockwise, hence the minus signs
    return -math.degrees(about_y), -math.degrees(about_x), -math.degrees(about_z)
