"""Real faces for the demo corpus, taken from photos that ship inside our dependencies.

Faces are found with mediapipe's face detector (never hard-coded boxes) and measured with
FaceMesh (five landmarks), then cut out as a "plate": an RGBA image of the head with a feathered
elliptical alpha, pre-scaled so the face box is `face_px` wide. The renderer moves plates around.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from curation.faces.decoding import read_image_rgb
from mfhq_faces.align import five_points
from mfhq_faces.geometry import iou
from mfhq_faces.landmarks import FaceMeshLandmarker

GROUP_PHOTO_MIN_FACES = 3
MIN_GROUP_FACE_FRACTION = 0.06


class SourceFaceError(RuntimeError):
    """A photo that should hold a face did not give one (a broken dependency install)."""


@dataclass(frozen=True)
class Photo:
    name: str          # short label used in identity names
    origin: str        # where the photo comes from (package + path inside it)
    rgb: np.ndarray    # H x W x 3 uint8
    group: bool        # many people: detect with the full-range model over tiles


@dataclass(frozen=True)
class SourceFace:
    """One person's face in a source photo: box and landmarks in photo pixels."""

    person: str                         # e.g. "astronaut", "t1_face2"
    origin: str
    box: tuple[int, int, int, int]      # x0, y0, x1, y1
    landmarks5: np.ndarray              # 5 x 2 float32, order documented above
    score: float


@dataclass(frozen=True)
class Plate:
    """A head cut out of a photo, ready to be warped: RGBA with the face box centred known."""

    person: str
    variant: str                        # "" for the photo as is, else what was changed
    rgba: np.ndarray                    # h x w x 4 uint8 (alpha: feathered ellipse)
    face_box: np.ndarray                # 4 corners of the face box, 4 x 2 float32, plate pixels
    landmarks5: np.ndarray              # 5 x 2 float32, plate pixels
    face_center: tuple[float, float]    # centre of the face box, plate pixels
    face_width: float                   # face box width, plate pixels


def load_photos() -> list[Photo]:
    """The photos whose faces become demo identities, in a fixed order."""
    import insightface
    import matplotlib.cbook
    import skimage.data

    insightface_images = Path(os.path.dirname(insightface.__file__)) / "data" / "images"
    hopper = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return [
        Photo("astronaut", "scikit-image: skimage.data.astronaut()", skimage.data.astronaut(),
              group=False),
        Photo("grace_hopper", "matplotlib: mpl-data/sample_data/grace_hopper.jpg",
              _read_rgb(hopper), group=False),
        Photo("tom_hanks", "insightface: data/images/Tom_Hanks_54745.png",
              _read_rgb(insightface_images / "Tom_Hanks_54745.png"), group=False),
        Photo("t1", "insightface: data/images/t1.jpg", _read_rgb(insightface_images / "t1.jpg"),
              group=True),
    ]


def _read_rgb(path: Path) -> np.ndarray:
    try:
        return read_image_rgb(path)
    except OSError as exc:
        raise SourceFaceError(f"cannot read the sample photo {path} ({exc}); reinstall its "
                              "package") from exc


def find_source_faces(photos: list[Photo]) -> list[SourceFace]:
    """Detect every face in the photos; group photos give one face per person, left to right."""
    import mediapipe as mp

    faces: list[SourceFace] = []
    detection = mp.solutions.face_detection
    with detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as near, \
            detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as far, \
            _SourceLandmarker() as mesh:
        for photo in photos:
            if photo.group:
                # Tiles also give small false hits (poker chips): a person worth a demo identity
                # has a face of at least MIN_GROUP_FACE_FRACTION of the photo's short side.
                min_side = MIN_GROUP_FACE_FRACTION * min(photo.rgb.shape[:2])
                boxes = [(box, score) for box, score in _detect_tiled(far, photo.rgb)
                         if box[2] - box[0] >= min_side]
                if len(boxes) < GROUP_PHOTO_MIN_FACES:
                    raise SourceFaceError(f"found {len(boxes)} faces in {photo.origin}, "
                                          f"expected at least {GROUP_PHOTO_MIN_FACES}")
                names = [f"{photo.name}_face{i}" for i in range(len(boxes))]
            else:
                boxes = _detect(near, photo.rgb, 0, 0)[:1] or _detect(far, photo.rgb, 0, 0)[:1]
                if not boxes:
                    raise SourceFaceError(f"no face found in {photo.origin}")
                names = [photo.name]
            for name, (box, score) in zip(names, boxes, strict=True):
                landmarks = _landmarks5(mesh, photo.rgb, box)
                faces.append(SourceFace(name, photo.origin, box, landmarks, score))
    return faces


def _detect(detector, rgb: np.ndarray, x_off: int, y_off: int
            ) -> list[tuple[tuple[int, int, int, int], float]]:
    """Face boxes (integer pixels, so reruns give the same bytes) sorted by score then x."""
    h, w = rgb.shape[:2]
    result = detector.process(np.ascontiguousarray(rgb))
    found = []
    for det in result.detections or []:
        rel = det.location_data.relative_bounding_box
        x0 = int(round(max(0.0, rel.xmin) * w)) + x_off
        y0 = int(round(max(0.0, rel.ymin) * h)) + y_off
        x1 = int(round(min(1.0, rel.xmin + rel.width) * w)) + x_off
        y1 = int(round(min(1.0, rel.ymin + rel.height) * h)) + y_off
        found.append(((x0, y0, x1, y1), round(float(det.score[0]), 3)))
    found.sort(key=lambda item: (-item[1], item[0]))
    return found


def _detect_tiled(detector, rgb: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
    """Detect small faces in a large group photo: square tiles of half the short side, half
    overlapping (edges included), merged by IoU keeping the best score; sorted left to right."""
    h, w = rgb.shape[:2]
    tile = max(64, min(h, w) // 2)
    step = tile // 2
    xs = sorted({*range(0, max(1, w - tile + 1), step), max(0, w - tile)})
    ys = sorted({*range(0, max(1, h - tile + 1), step), max(0, h - tile)})
    candidates = []
    for y in ys:
        for x in xs:
            candidates += _detect(detector, rgb[y:y + tile, x:x + tile], x, y)
    candidates.sort(key=lambda item: (-item[1], item[0]))
    kept: list[tuple[tuple[int, int, int, int], float]] = []
    for box, score in candidates:
        if all(iou(box, other) < 0.3 for other, _ in kept):
            kept.append((box, score))
    kept.sort(key=lambda item: ((item[0][0] + item[0][2]) / 2, (item[0][1] + item[0][3]) / 2))
    return kept


class _SourceLandmarker(FaceMeshLandmarker):
    """The toolkit's FaceMesh on a 384 px crop of twice the face box, edges replicated and
    cubic resampling (a photo's face may touch its border)."""

    def __init__(self):
        super().__init__(context=2.0, input_side=384, border=cv2.BORDER_REPLICATE,
                         interpolation=cv2.INTER_CUBIC)

    def __enter__(self) -> _SourceLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _landmarks5(mesh: FaceMeshLandmarker, rgb: np.ndarray,
                box: tuple[int, int, int, int]) -> np.ndarray:
    """Five landmarks (`mfhq_faces.align.five_points`) of the face in `box`, 0.1 px."""
    landmarks = mesh.landmarks(rgb, box)
    if landmarks is None:
        raise SourceFaceError(f"FaceMesh found no landmarks on the face at {box}")
    return np.round(five_points(landmarks), 1).astype(np.float32)


def make_plate(photo_rgb: np.ndarray, face: SourceFace, face_px: float) -> Plate:
    """Cut the head out of the photo with a feathered ellipse and scale the face to face_px."""
    x0, y0, x1, y1 = face.box
    fw, fh = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    scale = face_px / fw
    half_w, half_h = 1.25 * fw, 1.6 * fh
    out_w, out_h = int(round(2 * half_w * scale)), int(round(2 * half_h * scale))
    to_plate = np.array([[scale, 0, out_w / 2 - scale * cx],
                         [0, scale, out_h / 2 - scale * (cy + 0.15 * fh)]], np.float64)
    rgb = cv2.warpAffine(photo_rgb, to_plate, (out_w, out_h), flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REPLICATE)  # reflecting would mirror faces
    alpha = np.zeros((out_h, out_w), np.uint8)
    centre = (int(round(out_w / 2)), int(round(out_h / 2 - 0.05 * fh * scale)))
    axes = (int(round(0.95 * fw * scale)), int(round(1.3 * fh * scale)))
    cv2.ellipse(alpha, centre, axes, 0, 0, 360, 255, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=0.09 * face_px)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    return Plate(
        person=face.person,
        variant="",
        rgba=np.dstack([rgb, alpha]),
        face_box=_affine(to_plate, corners),
        landmarks5=_affine(to_plate, face.landmarks5),
        face_center=tuple(_affine(to_plate, np.array([[cx, cy]], np.float32))[0].tolist()),
        face_width=float(face_px),
    )


def _affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (points.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def make_variant(plate: Plate, index: int, rng: np.random.Generator) -> Plate:
    """A recognisably changed copy of a plate (mirror, colour shift, different crop), used to
    make more identities for benchmarks. Variants are the same real person, documented so."""
    rgba = plate.rgba.copy()
    landmarks = plate.landmarks5.copy()
    box = plate.face_box.copy()
    centre = np.array(plate.face_center, np.float32)
    changes = []
    if index % 2 == 1:
        w = rgba.shape[1]
        rgba = rgba[:, ::-1].copy()
        landmarks = _mirror_x(landmarks, w)[[1, 0, 2, 4, 3]]  # image-left first again
        box = _mirror_x(box, w)[[1, 0, 3, 2]]                  # corners clockwise from top-left
        centre = _mirror_x(centre[None], w)[0]
        changes.append("mirrored")
    gains = rng.uniform(0.8, 1.2, size=3)
    rgba[..., :3] = np.clip(rgba[..., :3].astype(np.float32) * gains, 0, 255).astype(np.uint8)
    changes.append("colour gains " + ",".join(f"{g:.2f}" for g in gains))
    zoom = float(rng.uniform(0.9, 1.1))
    if abs(zoom - 1) > 1e-3:
        h, w = rgba.shape[:2]
        m = np.array([[zoom, 0, (1 - zoom) * centre[0]], [0, zoom, (1 - zoom) * centre[1]]])
        rgba = cv2.warpAffine(rgba, m, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        landmarks, box = _affine(m, landmarks), _affine(m, box)
        changes.append(f"crop zoom {zoom:.2f}")
    return replace(plate, variant="; ".join(changes), rgba=rgba, face_box=box,
                   landmarks5=landmarks, face_center=(float(centre[0]), float(centre[1])),
                   face_width=plate.face_width * zoom)


def _mirror_x(points: np.ndarray, width: int) -> np.ndarray:
    mirrored = points.astype(np.float32).copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    return mirrored
