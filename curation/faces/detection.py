"""Face detection (insightface SCRFD or mediapipe) and the choice of the clip's own person.

Boxes are (x0, y0, x1, y1) in pixels of the image given to `detect`. Detector outputs are
cleaned before use: non-finite or empty boxes are dropped, boxes are clipped to the image, and
at most `max_faces` best-scoring faces are kept (a detector with random stand-in weights can
return thousands of arbitrary boxes; the pipeline must stay bounded).

Face size (`face_size`) is the longer side of the detector's box in full-resolution pixels.
Both detectors give tight boxes (about brow-to-chin by ear-to-ear), so a 448 px face size means
the aligned 512 px crop is made from roughly 1.5x as many source pixels as it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from curation.errors import MissingWeightsError

Box = tuple[float, float, float, float]
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


def face_size(bbox: Box) -> float:
    return float(max(bbox[2] - bbox[0], bbox[3] - bbox[1]))


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
                 max_faces: int = 20):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.scrfd import SCRFD

        self.model_path = str(onnx_path)
        model = get_model(self.model_path, providers=["CPUExecutionProvider"])
        if not isinstance(model, SCRFD):
            raise ValueError(f"{onnx_path} is not an SCRFD detector (insightface routed it to "
                             f"{type(model).__name__})")
        model.prepare(ctx_id=-1, det_thresh=det_thresh, input_size=(input_size, input_size))
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


def make_detector(kind: str, insightface_root: str | None = None):
    if kind == DetectorKind.INSIGHTFACE:
        if not insightface_root:
            raise ValueError("--face-detector insightface needs --insightface-root")
        return ScrfdFaceDetector(scrfd_model_path(insightface_root))
    if kind == DetectorKind.MEDIAPIPE:
        return MediapipeFaceDetector()
    raise ValueError(f"unknown face detector {kind!r}; choose insightface or mediapipe")


# ---- choosing the clip's own person -----------------------------------------------------------

def iou(a: Box, b: Box) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre(box: Box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _same_face(reference: Box, box: Box) -> float:
    """Similarity of two boxes in consecutive samples; 0 means 'not the same face'."""
    overlap = iou(reference, box)
    distance = np.linalg.norm(_centre(reference) - _centre(box)) / max(face_size(reference), 1)
    if overlap < 0.15 and distance > 0.6:
        return 0.0
    return overlap + max(0.0, 1.0 - distance)


def matches_hint(hint: Box, box: Box) -> float:
    """How well a face box fits the metadata box hint (0 = not the hinted person).

    Hints are usually looser than detector boxes (CelebV-HQ's covers head and shoulders), so a
    face counts when its centre lies inside the hint; better-overlapping faces win.
    """
    centre = _centre(box)
    if not (hint[0] <= centre[0] <= hint[2] and hint[1] <= centre[1] <= hint[3]):
        return 0.0
    inside = iou(hint, box) + (box[2] - box[0]) * (box[3] - box[1]) / max(
        (hint[2] - hint[0]) * (hint[3] - hint[1]), 1e-9)
    return 0.1 + inside


AMBIGUOUS_SIZE_RATIO = 0.8
AMBIGUOUS_FRAME_SHARE = 0.5


def ambiguous_target(per_frame: Sequence[Sequence[Detection]], chosen: Sequence[int | None],
                     ratio: float = AMBIGUOUS_SIZE_RATIO,
                     share: float = AMBIGUOUS_FRAME_SHARE) -> bool:
    """Whether a hint-less choice of the clip's person is a guess.

    Without a box hint the clip's person is the largest tracked face. When another face is at
    least `ratio` of its size in at least `share` of the frames where it was found, "largest"
    does not tell who the clip is about (a turned head has a smaller box than a frontal
    bystander), and guessing could put two people under one identity - the one mistake a
    multi-view identity dataset must not make.
    """
    frames = close = 0
    for target, detections in zip(chosen, per_frame, strict=True):
        if target is None:
            continue
        frames += 1
        size = face_size(detections[target].bbox)
        if any(i != target and face_size(d.bbox) >= ratio * size
               for i, d in enumerate(detections)):
            close += 1
    return frames > 0 and close >= share * frames


def select_target(per_frame: Sequence[Sequence[Detection]],
                  hint: Box | None = None) -> list[int | None]:
    """For each sampled frame, the index of the clip's own person's face, or None.

    With a hint: the face that fits the hint best, frame by frame. Without: the faces are linked
    into tracks across the samples and the clip's person is the track with the largest total
    face size - big and present through the clip - so a bystander who is large in one frame
    does not take over, and a person who turns away for a while is not lost.
    """
    if hint is not None:
        chosen: list[int | None] = []
        for dets in per_frame:
            scores = [matches_hint(hint, d.bbox) for d in dets]
            best = int(np.argmax(scores)) if scores else -1
            chosen.append(best if best >= 0 and scores[best] > 0 else None)
        return chosen
    chosen = [None] * len(per_frame)
    tracks = ranked_tracks(per_frame)
    if not tracks:
        return chosen
    for frame, index in tracks[0].items():
        chosen[frame] = index
    return chosen


def ranked_tracks(per_frame: Sequence[Sequence[Detection]]) -> list[dict[int, int]]:
    """`face_tracks`, the heaviest first: total face size over the clip (ties: earlier start).
    The first is the clip's person when there is no hint (`select_target`)."""
    def weight(track: dict[int, int]) -> tuple[float, int]:
        total = sum(face_size(per_frame[f][i].bbox) for f, i in track.items())
        return total, -min(track)

    return sorted(face_tracks(per_frame), key=weight, reverse=True)


def face_tracks(per_frame: Sequence[Sequence[Detection]]) -> list[dict[int, int]]:
    """Faces of successive samples linked into tracks ({frame: detection index}).

    Each frame's faces join the tracks whose last box they resemble most (`_same_face`, best
    pairs first, one face per track); a face that resembles none starts a new track.
    """
    tracks: list[dict[int, int]] = []
    last_box: list[Box] = []
    for frame, dets in enumerate(per_frame):
        pairs = sorted(((_same_face(last_box[t], d.bbox), t, i)
                        for t in range(len(tracks)) for i, d in enumerate(dets)),
                       key=lambda p: (-p[0], p[1], p[2]))
        taken_tracks: set[int] = set()
        taken_faces: set[int] = set()
        for score, t, i in pairs:
            if score <= 0 or t in taken_tracks or i in taken_faces:
                continue
            tracks[t][frame] = i
            last_box[t] = dets[i].bbox
            taken_tracks.add(t)
            taken_faces.add(i)
        for i, det in enumerate(dets):
            if i not in taken_faces:
                tracks.append({frame: i})
                last_box.append(det.bbox)
    return tracks
    largest = [(face_size(d.bbox), f, i) for f, dets in enumerate(per_frame)
               for i, d in enumerate(dets)]
    chosen = [None] * len(per_frame)
    if not largest:
        return chosen
    _, anchor_frame, anchor_index = max(largest)
    chosen[anchor_frame] = anchor_index
    for step in (1, -1):
        reference = per_frame[anchor_frame][anchor_index].bbox
        frame = anchor_frame + step
        while 0 <= frame < len(per_frame):
            scores = [_same_face(reference, d.bbox) for d in per_frame[frame]]
            if scores and max(scores) > 0:
                chosen[frame] = int(np.argmax(scores))
                reference = per_frame[frame][chosen[frame]].bbox
            frame += step
    return chosen
