"""Helpers for the demo corpus tests: reading clips and finding faces in frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def load_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_frames(path: Path, indices: list[int] | None = None) -> list[np.ndarray]:
    """RGB frames of an mp4 (decord) or of a folder of PNG frames. PNGs are read with PIL:
    cv2.imread of a PNG can fail ("libpng error: bad parameters to zlib") once decord has
    decoded in the same process."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        chosen = range(len(files)) if indices is None else indices
        return [np.asarray(Image.open(files[i]).convert("RGB")) for i in chosen]
    import decord

    reader = decord.VideoReader(str(path))
    chosen = list(range(len(reader))) if indices is None else indices
    return list(reader.get_batch(chosen).asnumpy())


def frame_count(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return len(list(path.glob("*.png")))
    import decord

    return len(decord.VideoReader(str(path)))


class FaceFinder:
    """mediapipe face detection: the short-range model, then the full-range one."""

    def __init__(self):
        import mediapipe as mp

        detection = mp.solutions.face_detection
        self._models = [detection.FaceDetection(model_selection=0, min_detection_confidence=0.5),
                        detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)]

    def boxes(self, rgb: np.ndarray, model: int | None = None) -> list[list[float]]:
        """x0, y0, x1, y1 boxes; with model=None, the first model that finds any face."""
        h, w = rgb.shape[:2]
        models = self._models if model is None else [self._models[model]]
        for detector in models:
            result = detector.process(np.ascontiguousarray(rgb))
            found = []
            for det in result.detections or []:
                rel = det.location_data.relative_bounding_box
                found.append([rel.xmin * w, rel.ymin * h, (rel.xmin + rel.width) * w,
                              (rel.ymin + rel.height) * h])
            if found:
                return found
        return []

    def all_boxes(self, rgb: np.ndarray) -> list[list[float]]:
        """Boxes of both models together (duplicates included)."""
        return self.boxes(rgb, model=0) + self.boxes(rgb, model=1)

    def close(self) -> None:
        for detector in self._models:
            detector.close()


def metadata_files(root: Path) -> list[Path]:
    """Every file of the corpus that is not a video or a frame: metadata, lists, ground truth."""
    return sorted(p for p in Path(root).rglob("*")
                  if p.is_file() and p.suffix not in {".mp4", ".png"})
