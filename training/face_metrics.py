"""The paper's face metrics for evaluation: ArcFace ID similarity on aligned faces, and head-pose
error (sum of |yaw|, |pitch|, |roll| differences, degrees).

Optional dependencies, imported only when a metric is asked for: `mediapipe` (FaceMesh, whose
weights ship in its wheel: landmarks for alignment and pose), `opencv` (solvePnP, which mediapipe
brings) and `onnxruntime` (the ArcFace recognizer). The trainer never imports this module.

- `FaceMesh.landmarks(image)` -> 468 FaceMesh points in image pixels, or None when no face is
  found (the aligned crop is padded first: FaceMesh's detector expects some context around a
  face).
- `five_points(mesh)`: eye centres, nose tip, mouth corners, image-left first (the order of
  ArcFace's template and of the build's `landmarks5`).
- `align(image, points)`: the 5-point similarity transform (least squares, Umeyama) onto the
  ArcFace 112 x 112 template, as insightface's `norm_crop` does.
- `head_pose(mesh, w, h)`: (yaw, pitch, roll) from solvePnP of six FaceMesh points against a
  generic 3D face (nose tip, chin, outer eye corners, mouth corners; the classic OpenCV head-pose
  model), pinhole camera with the focal length = the image side. yaw > 0: the nose moves to image
  right; pitch > 0: the face tilts up; roll > 0: counter-clockwise in the image. Absolute angles
  of a generic model carry a bias; a pose *error* compares two estimates of the same estimator.
- `ArcFace(path)`: insightface's `w600k_r50.onnx` (or any ONNX with its signature:
  (batch, 3, 112, 112) RGB in [-1, 1] -> (batch, 512)); `embed` returns unit vectors.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

ARCFACE_SIZE = 112
# insightface's arcface_dst: the 5 landmarks of an aligned 112 x 112 ArcFace input
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)

# FaceMesh indices (image-left = the subject's right side first)
EYE_RIGHT = (33, 133, 159, 145)      # subject's right eye: outer, inner corner, upper, lower lid
EYE_LEFT = (362, 263, 386, 374)
NOSE_TIP, CHIN = 1, 152
MOUTH_RIGHT, MOUTH_LEFT = 61, 291
EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 33, 263
# Generic 3D face (mm; x right, y down, z away from the camera for a frontal face), at the
# FaceMesh points above: nose tip, chin, outer eye corners, mouth corners.
POSE_POINTS = (NOSE_TIP, CHIN, EYE_OUTER_RIGHT, EYE_OUTER_LEFT, MOUTH_RIGHT, MOUTH_LEFT)
POSE_MODEL = np.array([[0.0, 0.0, 0.0], [0.0, 330.0, 65.0], [-225.0, -170.0, 135.0],
                       [225.0, -170.0, 135.0], [-150.0, 150.0, 125.0], [150.0, 150.0, 125.0]])
PAD = 0.35   # context added round an aligned crop before FaceMesh, as a fraction of its side


class FaceMesh:
    """mediapipe FaceMesh on single images (its weights ship in the mediapipe wheel)."""

    def __init__(self, min_confidence: float = 0.3):
        try:
            import mediapipe as mp
        except ImportError as exc:
            raise ImportError("pose error and landmark alignment need mediapipe: "
                              "pip install mediapipe==0.10.21 (or omit --pose)") from exc
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False,
            min_detection_confidence=min_confidence)

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """uint8 [H, W, 3] RGB -> (468, 2) landmarks in its pixels, or None."""
        h, w = image.shape[:2]
        pad = int(round(PAD * max(h, w)))
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        found = self._mesh.process(np.ascontiguousarray(padded))
        if not found.multi_face_landmarks:
            return None
        points = np.array([(p.x, p.y) for p in found.multi_face_landmarks[0].landmark])
        return points * np.array([padded.shape[1], padded.shape[0]]) - pad

    def close(self) -> None:
        self._mesh.close()


def five_points(mesh: np.ndarray) -> np.ndarray:
    """(5, 2): eye centres, nose tip, mouth corners, image-left first."""
    return np.stack([mesh[list(EYE_RIGHT)].mean(0), mesh[list(EYE_LEFT)].mean(0), mesh[NOSE_TIP],
                     mesh[MOUTH_RIGHT], mesh[MOUTH_LEFT]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2 x 3 matrix of the least-squares similarity (rotation, scale, shift) src -> dst."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    rotation = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align(image: np.ndarray, points: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """uint8 [H, W, 3] and its 5 landmarks -> the ArcFace-aligned uint8 [size, size, 3] face."""
    forward = similarity_transform(points.astype(np.float64), ARCFACE_TEMPLATE * size / 112.0)
    # PIL maps output -> input pixels: invert the 2 x 3 similarity
    full = np.vstack([forward, [0, 0, 1]])
    inverse = np.linalg.inv(full)[:2].ravel()
    out = Image.fromarray(image).transform((size, size), Image.AFFINE, tuple(inverse),
                                           resample=Image.BILINEAR)
    return np.asarray(out)


def usable_points(points: np.ndarray | None, side: int) -> bool:
    """Five finite landmarks spread over more than a tenth of the image (not placeholders)."""
    if points is None or not np.isfinite(points).all():
        return False
    return float(np.ptp(points[:, 0])) > side / 10


def head_pose(mesh: np.ndarray, width: int, height: int) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) degrees from FaceMesh landmarks, or None when solvePnP fails."""
    import cv2  # mediapipe's dependency; only pose needs it

    focal = float(max(width, height))
    camera = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    image_points = np.ascontiguousarray(mesh[list(POSE_POINTS)], dtype=np.float64)
    ok, rvec, tvec = cv2.solvePnP(POSE_MODEL, image_points, camera, None,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or tvec[2, 0] <= 0:
        return None
    rotation, _ = cv2.Rodrigues(rvec)
    # R = Rz(a_z) Ry(a_y) Rx(a_x) in camera axes (y down): a turn about +y moves the nose to
    # image left, about +x moves it down, about +z turns the image clockwise; hence the signs.
    about_y = math.asin(max(-1.0, min(1.0, -rotation[2, 0])))
    about_x = math.atan2(rotation[2, 1], rotation[2, 2])
    about_z = math.atan2(rotation[1, 0], rotation[0, 0])
    return -math.degrees(about_y), -math.degrees(about_x), -math.degrees(about_z)


def pose_error(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Sum of absolute yaw, pitch and roll differences in degrees (the paper's pose error)."""
    return float(sum(abs(x - y) for x, y in zip(a, b, strict=True)))


class ArcFace:
    """ArcFace recognizer ONNX: aligned 112 x 112 RGB faces -> unit embeddings."""

    def __init__(self, path: str | Path):
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"ArcFace model not found: {path}. Put insightface buffalo_l's w600k_r50.onnx "
                f"there (unpack buffalo_l.zip) or omit --arcface to skip ID similarity.")
        import onnxruntime  # only ID similarity needs it

        self.session = onnxruntime.InferenceSession(str(path),
                                                    providers=["CPUExecutionProvider"])
        spec = self.session.get_inputs()[0]
        self.input = spec.name
        if isinstance(spec.shape[2], int) and spec.shape[2] != ARCFACE_SIZE:
            raise ValueError(f"{path}: input side {spec.shape[2]}, expected {ARCFACE_SIZE}")

    def embed(self, faces: np.ndarray) -> np.ndarray:
        """uint8 [M, 112, 112, 3] aligned RGB faces -> [M, 512] unit vectors."""
        blob = (faces.astype(np.float32) - 127.5) / 127.5
        out = self.session.run(None, {self.input: blob.transpose(0, 3, 1, 2)})[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-8)
