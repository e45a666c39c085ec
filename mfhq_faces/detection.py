"""Face detectors: insightface SCRFD (buffalo_l weights) or mediapipe (bundled).

Boxes are (x0, y0, x1, y1) in pixels of the image given to `detect`. Detector outputs are
cleaned before use: non-finite or empty boxes are dropped, boxes are clipped to the image, and
at most `max_faces` best-scoring faces are kept (a detector with random stand-in weights can
return thousands of arbitrary boxes; the pipeline must stay bounded).

Both detectors give tight boxes (about brow-to-chin by ear-to-ear; `mfhq_faces.geometry`).
Choosing the clip's own person among the detections is the build's job
(`curation.faces.tracks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from mfhq_contract.errors import MissingWeightsError
from mfhq_faces.geometry import Box
from mfhq_faces.onnx_runtime import (
    CUDA_PROVIDER,
    OnnxDevice,
    provider_of,
    session_options,
    session_providers,
)


class DetectorKind(StrEnum):
    """The face detectors: insightface SCRFD (buffalo_l weights) or mediapipe (bundled)."""

    INSIGHTFACE = "insightface"
    MEDIAPIPE = "mediapipe"


SCRFD_RELATIVE_PATH = Path("models") / "buffalo_l" / "det_10g.onnx"


@dataclass
class Detection:
    bbox: Box
    score: float
    keypoints5: np.ndarray | None = None   # (5, 2): eyes, nose, mouth corners, in image px


def clean_detections(raw: Sequence[Detection], width: int, height: int,
                     max_faces: int = 20, min_side: float = 2.0) -> list[Detection]:
    """Detections clipped to the image, without degenerate boxes, best `max_faces` first."""
    kept = []
    for det in raw:
        box = np.asarray(det.bbox, dtype=np.float64)
        if box.shape != (4,) or not np.all(np.isfinite(box)) or not np.isfinite(det.score):
            continue
        x0, x1 = np.clip([box[0], box[2]], 0, width)
        y0, y1 = np.clip([box[1], box[3]], 0, height)
        if x1 - x0 < min_side or y1 - y0 < min_side:
            continue
        keypoints = det.keypoints5
        if keypoints is not None and (keypoints.shape != (5, 2)
                                      or not np.all(np.isfinite(keypoints))):
            keypoints = None
        kept.append(Detection((float(x0), float(y0), float(x1), float(y1)), float(det.score),
                              keypoints))
    kept.sort(key=lambda d: d.score, reverse=True)
    return kept[:max_faces]


class MediapipeFaceDetector:
    """mediapipe's bundled BlazeFace detector (full-range model by default)."""

    name = DetectorKind.MEDIAPIPE.value
    provider = "mediapipe (CPU, TF Lite)"

    def __init__(self, min_confidence: float = 0.5, model_selection: int = 1,
                 max_faces: int = 20):
        import mediapipe as mp

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=model_selection, min_detection_confidence=min_confidence)
        self.max_faces = max_faces

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        height, width = image_rgb.shape[:2]
        result = self._detector.process(np.ascontiguousarray(image_rgb))
        raw = []
        for found in result.detections or []:
            box = found.location_data.relative_bounding_box
            x0, y0 = box.xmin * width, box.ymin * height
            points = found.location_data.relative_keypoints
            # mediapipe keypoints: right eye, left eye, nose tip, mouth centre, two ear tragions
            keypoints = None
            if len(points) >= 4:
                keypoints = np.array([[p.x * width, p.y * height] for p in points[:4]])
                keypoints = np.vstack([keypoints[:3], keypoints[3:4], keypoints[3:4]])
            raw.append(Detection((x0, y0, x0 + box.width * width, y0 + box.height * height),
                                 float(found.score[0]), keypoints))
        return clean_detections(raw, width, height, self.max_faces)

    def close(self) -> None:
        self._detector.close()


def scrfd_model_path(insightface_root: str | Path) -> Path:
    """`<root>/models/buffalo_l/det_10g.onnx`; a clear error when it is not there."""
    path = Path(insightface_root).expanduser() / SCRFD_RELATIVE_PATH
    if not path.is_file():
        raise MissingWeightsError(
            f"insightface SCRFD detector not found: {path} (expected the buffalo_l layout "
            f"<root>/{SCRFD_RELATIVE_PATH}). Pass the right --insightface-root, or use the "
            f"bundled detector with --face-detector mediapipe.")
    return path


class ScrfdFaceDetector:
    """insightface's SCRFD, loaded through insightface's own model router."""

    name = DetectorKind.INSIGHTFACE.value

    def __init__(self, onnx_path: str | Path, det_thresh: float = 0.5, input_size: int = 640,
                 max_faces: int = 20, device: str = OnnxDevice.AUTO,
                 threads: int | None = None):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.scrfd import SCRFD

        self.model_path = str(onnx_path)
        providers = session_providers(device)
        # threads: CPU threads of the session (None: onnxruntime's default; session_options)
        model = get_model(self.model_path, providers=providers,
                          sess_options=session_options(threads))
        if not isinstance(model, SCRFD):
            raise ValueError(f"{onnx_path} is not an SCRFD detector (insightface routed it to "
                             f"{type(model).__name__})")
        model.prepare(ctx_id=0 if CUDA_PROVIDER in providers else -1, det_thresh=det_thresh,
                      input_size=(input_size, input_size))
        self.provider = provider_of(model.session)
        self._model = model
        self.input_size = input_size
        self.max_faces = max_faces

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        height, width = image_rgb.shape[:2]
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
        boxes, keypoints = self._model.detect(bgr, input_size=(self.input_size,
                                                                self.input_size))
        raw = []
        for i, row in enumerate(np.asarray(boxes).reshape(-1, 5)):
            points = None if keypoints is None else np.asarray(keypoints[i], dtype=np.float64)
            raw.append(Detection(tuple(float(v) for v in row[:4]), float(row[4]), points))
        return clean_detections(raw, width, height, self.max_faces)

    def close(self) -> None:
        self._model = None


def make_detector(kind: str, insightface_root: str | None = None,
                  device: str = OnnxDevice.AUTO, threads: int | None = None):
    """`threads`: SCRFD's onnxruntime CPU threads (None: its default); mediapipe's are its own."""
    if kind == DetectorKind.INSIGHTFACE:
        if not insightface_root:
            raise ValueError("--face-detector insightface needs --insightface-root")
        return ScrfdFaceDetector(scrfd_model_path(insightface_root), device=device,
                                 threads=threads)
    if kind == DetectorKind.MEDIAPIPE:
        return MediapipeFaceDetector()
    raise ValueError(f"unknown face detector {kind!r}; choose insightface or mediapipe")
