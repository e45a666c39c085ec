"""Box geometry shared by the build and the evaluation.

A box is (x0, y0, x1, y1) in pixels of the image it was found in. Face size (`face_size`) is the
longer side of a detector's box; both detectors give tight boxes (about brow-to-chin by
ear-to-ear).
"""

from __future__ import annotations

import numpy as np

Box = tuple[float, float, float, float]


def face_size(bbox: Box) -> float:
    return float(max(bbox[2] - bbox[0], bbox[3] - bbox[1]))


def box_centre(box: Box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
