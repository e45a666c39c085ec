"""Ray-casting one view of a synthetic identity: image, face mask, part labels, 5 landmarks.

Each identity is a parametric head: ellipsoids for the skull, jaw, nose and ears, with skin,
hair, eyes, brows, mouth and one side mark painted on the skin. The mark sits far round one
side of the jaw, so it is seen only when the head turns that side towards the camera: a detail
that an encoder can learn only from the views that show it. Views are ray-cast exactly on a
pixel grid (orthographic camera looking down -z), z-buffered, Lambert-shaded from a per-view
light, and carry a face mask (head surface minus hair and background) and a part label map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.synthetic.identity import (
    IdentityParams,
    Part,
    ViewParams,
    identity_params,
    spread_views,
)

VIEW_EXTENT = 1.3  # the image spans [-VIEW_EXTENT, VIEW_EXTENT] in head units on both axes


@dataclass
class RenderedView:
    image: np.ndarray  # uint8 H x W x 3
    mask: np.ndarray  # bool H x W, face region
    parts: np.ndarray  # uint8 H x W, Part labels (nearest surface per pixel, not antialiased)
    landmarks5: list[list[float]]  # eyes, nose tip, mouth corners in image pixels
    view: ViewParams



def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head-to-camera rotation: yaw about y, then pitch about x, then roll about z."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class _Ellipsoid:
    center: tuple[float, float, float]
    axes: tuple[float, float, float]
    part: int


def _ellipsoids(p: IdentityParams) -> list[_Ellipsoid]:
    width, height, depth = p.head_axes
    nose_surface_z = depth * math.sqrt(max(0.0, 1.0 - (p.nose_y / height) ** 2))
    ear_x = width * math.sqrt(max(0.0, 1.0 - (p.ear_y / height) ** 2)) - 0.3 * p.ear_axes[0]
    return [
        _Ellipsoid((0.0, 0.0, 0.0), p.head_axes, Part.SKIN),
        _Ellipsoid((0.0, p.jaw_center_y, 0.0), p.jaw_axes, Part.SKIN),
        _Ellipsoid((0.0, p.nose_y, nose_surface_z - 0.45 * p.nose_axes[2]), p.nose_axes, Part.NOSE),
        _Ellipsoid((ear_x, p.ear_y, p.ear_z), p.ear_axes, Part.EAR),
        _Ellipsoid((-ear_x, p.ear_y, p.ear_z), p.ear_axes, Part.EAR),
    ]


def _intersect(origins: np.ndarray, direction: np.ndarray, shape: _Ellipsoid) -> np.ndarray:
    """Ray parameter of the nearest hit of each ray with an axis-aligned ellipsoid (inf: miss)."""
    axes = np.asarray(shape.axes)
    q = (origins - np.asarray(shape.center)) / axes
    e = direction / axes
    a = float(e @ e)
    b = 2.0 * (q @ e)
    c = np.einsum("ij,ij->i", q, q) - 1.0
    disc = b * b - 4.0 * a * c
    t = np.full(len(origins), np.inf)
    hit = disc >= 0
    t[hit] = (-b[hit] - np.sqrt(disc[hit])) / (2.0 * a)
    return t


def _paint_skin(points: np.ndarray, p: IdentityParams, v: ViewParams) -> tuple[np.ndarray, np.ndarray]:
    """Albedo and part label of skin-surface points (head frame): hair, eyes, brows, mouth, mark."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    albedo = np.tile(np.asarray(p.skin_rgb), (len(points), 1))
    part = np.full(len(points), Part.SKIN, dtype=np.uint8)
    front = z > 0.2

    def paint(where: np.ndarray, rgb, label: int) -> None:
        albedo[where] = rgb
        part[where] = label

    width, height, depth = p.head_axes
    unit = points / np.asarray(p.head_axes)
    azimuth = np.degrees(np.arctan2(unit[:, 0] * p.mark_side, unit[:, 2]))
    elevation = np.degrees(np.arcsin(np.clip(unit[:, 1], -1, 1)))
    mark_elevation = math.degrees(math.asin(max(-1.0, min(1.0, p.mark_y / height))))
    mark_distance = np.hypot(azimuth - p.mark_azimuth, elevation - mark_elevation)
    paint(mark_distance < p.mark_radius, p.mark_rgb, Part.MARK)

    eye_rx, eye_ry = p.eye_radii
    open_ry = eye_ry * max(v.eye_open, 0.08)
    brow_bottom = p.eye_y + eye_ry + p.brow_gap * 0.5 + v.brow_raise
    for side in (-1.0, 1.0):
        dx, dy = x - side * p.eye_x, y - p.eye_y
        brow = front & (np.abs(dx) < eye_rx * 1.2) & (y > brow_bottom)
        paint(brow & (y < brow_bottom + p.brow_thickness), tuple(0.6 * np.asarray(p.hair_rgb)),
              Part.BROW)
        eye = front & ((dx / eye_rx) ** 2 + (dy / open_ry) ** 2 < 1.0)
        paint(eye, (0.93, 0.93, 0.9), Part.EYE)
        paint(eye & (dx * dx + dy * dy < p.iris_radius ** 2), p.iris_rgb, Part.EYE)
        paint(eye & (dx * dx + dy * dy < (0.45 * p.iris_radius) ** 2), (0.03, 0.03, 0.03), Part.EYE)

    mouth_dy = y - p.mouth_y
    lip_ry = p.lip_thickness + 0.09 * v.mouth_open
    lips = front & ((x / p.mouth_half_width) ** 2 + (mouth_dy / lip_ry) ** 2 < 1.0)
    paint(lips, p.lip_rgb, Part.MOUTH)
    inner_ry = 0.004 + 0.08 * v.mouth_open
    inner = lips & ((x / (0.85 * p.mouth_half_width)) ** 2 + (mouth_dy / inner_ry) ** 2 < 1.0)
    paint(inner, (0.25, 0.05, 0.07), Part.MOUTH)

    hair = (y > p.hairline_y - 0.35 * np.clip(-z, 0, None)) | ((z < p.hair_back_z) & (y > -0.3))
    paint(hair & (part != Part.MARK), p.hair_rgb, Part.HAIR)
    return albedo, part


def _light_direction(v: ViewParams) -> np.ndarray:
    az, el = math.radians(v.light_azimuth), math.radians(v.light_elevation)
    return np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])


def _project(points: np.ndarray, rot: np.ndarray, pixels: int) -> np.ndarray:
    camera = points @ rot.T
    scale = pixels / (2 * VIEW_EXTENT)
    return np.stack([(camera[:, 0] + VIEW_EXTENT) * scale, (VIEW_EXTENT - camera[:, 1]) * scale], 1)


def _landmarks5(p: IdentityParams, rot: np.ndarray, size: int) -> list[list[float]]:
    width, height, depth = p.head_axes

    def on_face(x: float, y: float) -> list[float]:
        inside = max(0.0, 1.0 - (x / width) ** 2 - (y / height) ** 2)
        return [x, y, depth * math.sqrt(inside)]

    nose_tip_z = on_face(0.0, p.nose_y)[2] + 0.55 * p.nose_axes[2]
    points = np.array([
        on_face(-p.eye_x, p.eye_y), on_face(p.eye_x, p.eye_y), [0.0, p.nose_y, nose_tip_z],
        on_face(-p.mouth_half_width, p.mouth_y), on_face(p.mouth_half_width, p.mouth_y),
    ])
    # image-left first, as five-point detectors list them
    projected = _project(points, rot, size)
    return [[round(float(px), 2), round(float(py), 2)] for px, py in projected]


def render(params: IdentityParams, view: ViewParams, size: int, supersample: int = 2) -> RenderedView:
    """Ray-cast one view at size x size pixels (supersampled, then box-filtered)."""
    fine = size * supersample
    centers = (np.arange(fine) + 0.5) / fine * 2 * VIEW_EXTENT - VIEW_EXTENT
    u, v = np.meshgrid(centers, -centers)
    rot = rotation(view.yaw, view.pitch, view.roll)
    cam_origins = np.stack([u.ravel(), v.ravel(), np.full(u.size, 10.0)], 1)
    origins = cam_origins @ rot  # camera -> head frame is rot.T, applied on the right
    direction = np.array([0.0, 0.0, -1.0]) @ rot

    shapes = _ellipsoids(params)
    depths = np.stack([_intersect(origins, direction, s) for s in shapes])
    nearest = np.argmin(depths, 0)
    t = depths[nearest, np.arange(len(origins))]
    hit = np.isfinite(t)

    rgb = np.full((len(origins), 3), view.background_gray)
    parts = np.zeros(len(origins), dtype=np.uint8)
    points = origins[hit] + t[hit, None] * direction
    which = nearest[hit]
    centers3 = np.array([s.center for s in shapes])[which]
    axes3 = np.array([s.axes for s in shapes])[which]
    normals = (points - centers3) / axes3**2
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)

    albedo = np.empty((len(points), 3))
    labels = np.array([s.part for s in shapes], dtype=np.uint8)[which]
    skin = labels == Part.SKIN
    albedo[~skin] = params.skin_rgb
    albedo[skin], labels[skin] = _paint_skin(points[skin], params, view)
    albedo[labels == Part.NOSE] *= 0.97
    albedo[labels == Part.EAR] *= 0.92

    lambert = np.clip((normals @ rot.T) @ _light_direction(view), 0.0, None)
    rgb[hit] = albedo * (view.ambient + (1.0 - view.ambient) * lambert)[:, None]
    parts[hit] = labels

    face = hit.copy()
    face[hit] = labels != Part.HAIR
    image = rgb.reshape(size, supersample, size, supersample, 3).mean((1, 3))
    coverage = face.reshape(size, supersample, size, supersample).mean((1, 3))
    # labels of the centre-most subpixel of each pixel (a label map must not be averaged)
    label_grid = parts.reshape(size, supersample, size, supersample)[:, supersample // 2, :,
                                                                      supersample // 2]
    return RenderedView(
        image=np.clip(np.round(image * 255), 0, 255).astype(np.uint8),
        mask=coverage >= 0.5,
        parts=label_grid.copy(),
        landmarks5=_landmarks5(params, rot, size),
        view=view,
    )


def render_identity(identity_id: str, size: int) -> list[RenderedView]:
    """The identity's IMAGES_PER_IDENTITY views, spread in pose and sorted by yaw."""
    params = identity_params(identity_id)
    return [render(params, view, size) for view in spread_views(identity_id)]


