"""Procedural multi-view identities with known ground truth, written as MFHQ shards.

Each identity is a parametric head: ellipsoids for the skull, jaw, nose and ears, with skin,
hair, eyes, brows, mouth and one side mark painted on the skin. The mark sits far round one
side of the jaw, so it is seen only when the head turns that side towards the camera: a detail
that an encoder can learn only from the views that show it. Views are ray-cast exactly on a
pixel grid (orthographic camera looking down -z), z-buffered, Lambert-shaded from a per-view
light, and carry a face mask (head surface minus hair and background) and a part label map.

Conventions (degrees): yaw > 0 turns the face towards image right (the nose moves to +x), which
reveals the head's -x side; pitch > 0 tilts the face up; roll > 0 turns it counter-clockwise in
the image. Identity parameters come from a hash of the identity id alone, so identity i renders
the same wherever and whenever it is rendered.

    python -m training.synthetic OUT --identities 2000 --test-identities 200 --size 64 --seed 0

writes `OUT/train/mfhq-train-000000.tar ...` and `OUT/test/...` in the format of
`training.sample_format`. The bytes are a function of the arguments alone.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.sample_format import (
    FORMAT_VERSION,
    IMAGES_PER_IDENTITY,
    JSON_EXT,
    image_ext,
    mask_ext,
    sample_key,
    shard_name,
)

SOURCE = "synthetic"
QUALITY_MODEL = "synthetic"
VIEW_EXTENT = 1.3  # the image spans [-VIEW_EXTENT, VIEW_EXTENT] in head units on both axes
MAX_YAW = 75.0


class Part:
    """Part labels of the label map returned with every view."""

    BACKGROUND = 0
    SKIN = 1
    HAIR = 2
    NOSE = 3
    EAR = 4
    EYE = 5
    BROW = 6
    MOUTH = 7
    MARK = 8


@dataclass(frozen=True)
class IdentityParams:
    """Everything that makes one synthetic person themselves (head units, RGB in [0, 1])."""

    head_axes: tuple[float, float, float]
    jaw_axes: tuple[float, float, float]
    jaw_center_y: float
    nose_axes: tuple[float, float, float]
    nose_y: float
    ear_axes: tuple[float, float, float]
    ear_y: float
    ear_z: float
    eye_x: float
    eye_y: float
    eye_radii: tuple[float, float]
    iris_radius: float
    brow_gap: float
    brow_thickness: float
    mouth_y: float
    mouth_half_width: float
    lip_thickness: float
    hairline_y: float
    hair_back_z: float
    mark_side: int  # +1 or -1: the head-frame x side that carries the mark
    mark_azimuth: float  # degrees from the front, round the head towards mark_side
    mark_y: float
    mark_radius: float  # angular radius, degrees
    skin_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    iris_rgb: tuple[float, float, float]
    lip_rgb: tuple[float, float, float]
    mark_rgb: tuple[float, float, float]

    @property
    def mark_visible_yaw_sign(self) -> int:
        """Sign of the yaw that turns the marked side towards the camera."""
        return -self.mark_side


@dataclass(frozen=True)
class ViewParams:
    """One rendering condition: pose, expression and light."""

    yaw: float
    pitch: float
    roll: float
    mouth_open: float = 0.0  # 0 closed .. 1 wide open
    eye_open: float = 1.0  # 0 shut .. 1 open
    brow_raise: float = 0.0  # head units
    light_azimuth: float = 0.0  # degrees, 0 = from the camera, > 0 from image right
    light_elevation: float = 20.0
    ambient: float = 0.35
    background_gray: float = 0.5


@dataclass
class RenderedView:
    image: np.ndarray  # uint8 H x W x 3
    mask: np.ndarray  # bool H x W, face region
    parts: np.ndarray  # uint8 H x W, Part labels (nearest surface per pixel, not antialiased)
    landmarks5: list[list[float]]  # eyes, nose tip, mouth corners in image pixels
    view: ViewParams


def _rng_for(*keys: str) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(keys).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _tone(rng: np.random.Generator, base: tuple[float, float, float], spread: float):
    rgb = np.clip(np.asarray(base) + rng.uniform(-spread, spread, 3), 0.02, 0.98)
    return tuple(float(c) for c in rgb)


def identity_params(identity_id: str) -> IdentityParams:
    """The parameters of an identity, a pure function of its id."""
    rng = _rng_for("identity", identity_id)
    width, height, depth = rng.uniform(0.70, 0.88), rng.uniform(0.95, 1.12), rng.uniform(0.82, 0.98)
    skin_level = rng.uniform(0.25, 0.95)
    skin = _tone(rng, (skin_level, 0.78 * skin_level, 0.62 * skin_level), 0.05)
    hair_level = rng.uniform(0.05, 0.85)
    hair = _tone(rng, (hair_level, 0.75 * hair_level, 0.5 * hair_level), 0.12)
    iris = _tone(rng, tuple(rng.uniform(0.1, 0.6, 3)), 0.05)
    mark_palette = [(0.30, 0.15, 0.08), (0.10, 0.20, 0.65), (0.70, 0.10, 0.15), (0.10, 0.45, 0.20)]
    return IdentityParams(
        head_axes=(width, height, depth),
        jaw_axes=(width * rng.uniform(0.72, 0.95), rng.uniform(0.45, 0.62), depth * 0.8),
        jaw_center_y=-rng.uniform(0.38, 0.5),
        nose_axes=(rng.uniform(0.08, 0.15), rng.uniform(0.14, 0.26), rng.uniform(0.12, 0.26)),
        nose_y=-rng.uniform(0.08, 0.22),
        ear_axes=(rng.uniform(0.06, 0.11), rng.uniform(0.14, 0.27), rng.uniform(0.07, 0.16)),
        ear_y=-rng.uniform(0.0, 0.18),
        ear_z=-rng.uniform(0.0, 0.15),
        eye_x=rng.uniform(0.24, 0.36),
        eye_y=rng.uniform(0.08, 0.2),
        eye_radii=(rng.uniform(0.09, 0.14), rng.uniform(0.045, 0.075)),
        iris_radius=rng.uniform(0.035, 0.055),
        brow_gap=rng.uniform(0.08, 0.14),
        brow_thickness=rng.uniform(0.025, 0.06),
        mouth_y=-rng.uniform(0.45, 0.58),
        mouth_half_width=rng.uniform(0.14, 0.24),
        lip_thickness=rng.uniform(0.025, 0.055),
        hairline_y=rng.uniform(0.35, 0.62),
        hair_back_z=-rng.uniform(0.1, 0.45),
        mark_side=int(rng.choice((-1, 1))),
        mark_azimuth=rng.uniform(108.0, 122.0),
        mark_y=-rng.uniform(0.25, 0.45),
        mark_radius=rng.uniform(10.0, 15.0),
        skin_rgb=skin,
        hair_rgb=hair,
        iris_rgb=iris,
        lip_rgb=_tone(rng, (0.75 * skin[0] + 0.2, 0.45 * skin[1], 0.45 * skin[2]), 0.05),
        mark_rgb=mark_palette[int(rng.integers(len(mark_palette)))],
    )


def spread_views(identity_id: str, count: int = IMAGES_PER_IDENTITY) -> list[ViewParams]:
    """`count` views spread in yaw (one per yaw bin over +-MAX_YAW), sorted by yaw."""
    rng = _rng_for("views", identity_id)
    edges = np.linspace(-MAX_YAW, MAX_YAW, count + 1)
    views = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        views.append(ViewParams(
            yaw=float(rng.uniform(low, high)),
            pitch=float(rng.uniform(-20, 20)),
            roll=float(rng.uniform(-15, 15)),
            mouth_open=float(rng.beta(0.7, 1.5)),
            eye_open=float(np.clip(rng.beta(4.0, 1.0) * 1.1, 0.0, 1.0)),
            brow_raise=float(rng.uniform(0.0, 0.06)),
            light_azimuth=float(rng.uniform(-70, 70)),
            light_elevation=float(rng.uniform(-10, 50)),
            ambient=float(rng.uniform(0.25, 0.5)),
            background_gray=float(rng.uniform(0.2, 0.8)),
        ))
    return views


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


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(array).save(buffer, format="JPEG", quality=95, subsampling=0)
    else:
        Image.fromarray(array).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def identity_record(identity_id: str, split: str, size: int, views: list[RenderedView]) -> dict:
    """The sample's JSON record, with the fields the curation job writes."""
    key = sample_key(identity_id)
    images = []
    for index, view in enumerate(views):
        images.append({
            "index": index,
            "clip_id": f"{identity_id}:view{index}",
            "source": SOURCE,
            "frame_index": index,
            "yaw": round(view.view.yaw, 3),
            "pitch": round(view.view.pitch, 3),
            "roll": round(view.view.roll, 3),
            "quality": 1.0,
            "quality_model": QUALITY_MODEL,
            "face_size": size,
            "bbox": [0, 0, size, size],
            "landmarks5": view.landmarks5,
            "pose_cluster": index,
            "synthetic_view": {k: round(val, 4) for k, val in asdict(view.view).items()},
        })
    return {
        "format_version": FORMAT_VERSION,
        "key": key,
        "identity_id": identity_id,
        "sources": [SOURCE],
        "source_video_ids": [identity_id],
        "split": split,
        "crop_size": size,
        "images": images,
    }


def sample_members(identity_id: str, split: str, size: int) -> dict[str, bytes]:
    """Tar member name -> bytes for one identity."""
    views = render_identity(identity_id, size)
    key = sample_key(identity_id)
    record = identity_record(identity_id, split, size, views)
    members = {f"{key}.{JSON_EXT}": json.dumps(record, sort_keys=True).encode("utf-8")}
    for index, view in enumerate(views):
        members[f"{key}.{image_ext(index)}"] = _encode(view.image, "JPEG")
        members[f"{key}.{mask_ext(index)}"] = _encode(view.mask.astype(np.uint8) * 255, "PNG")
    return members


def synthetic_identity_id(seed: int, index: int) -> str:
    return f"synthetic:s{seed}:{index:07d}"


def _write_tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    """Write members in sample order, each sample's members sorted, with fixed metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".partial")
    with open(temp, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for members in samples:
                for name in sorted(members):
                    info = tarfile.TarInfo(name)
                    info.size = len(members[name])
                    info.mtime = 0
                    info.mode = 0o644
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(members[name]))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


@dataclass
class SyntheticConfig:
    out: Path
    identities: int = 2000
    test_identities: int = 200
    size: int = 64
    seed: int = 0
    per_shard: int = 500
    workers: int = 1
    progress: bool = True


def _write_one_shard(path: Path, split: str, identity_ids: list[str], size: int) -> int:
    _write_tar(path, [sample_members(i, split, size) for i in identity_ids])
    return len(identity_ids)


def shard_plan(config: SyntheticConfig) -> list[tuple[Path, str, list[str]]]:
    """(shard path, split, identity ids) for every shard; test ids continue after train ids."""
    ranges = {
        "train": range(config.identities),
        "test": range(config.identities, config.identities + config.test_identities),
    }
    plan = []
    for split, indices in ranges.items():
        for shard_index, start in enumerate(range(0, len(indices), config.per_shard)):
            ids = [synthetic_identity_id(config.seed, i)
                   for i in indices[start:start + config.per_shard]]
            plan.append((config.out / shard_name(split, shard_index), split, ids))
    return plan


def write_shards(config: SyntheticConfig) -> dict[str, list[Path]]:
    """Render every identity and write the train and test shards; returns the paths by split.

    With `workers` > 1 shards render in parallel processes; the bytes do not depend on it.
    """
    plan = shard_plan(config)
    total = config.identities + config.test_identities
    done = 0

    def report(count: int) -> None:
        nonlocal done
        done += count
        if config.progress:
            print(f"\r{done}/{total} identities", end="", file=sys.stderr, flush=True)

    if config.workers > 1 and len(plan) > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(min(config.workers, len(plan))) as pool:
            futures = [pool.submit(_write_one_shard, path, split, ids, config.size)
                       for path, split, ids in plan]
            for future in futures:
                report(future.result())
    else:
        for path, split, ids in plan:
            report(_write_one_shard(path, split, ids, config.size))
    if config.progress:
        print(file=sys.stderr)
    paths: dict[str, list[Path]] = {"train": [], "test": []}
    for path, split, _ in plan:
        paths[split].append(path)
    return paths


def parse_args(argv: list[str] | None = None) -> SyntheticConfig:
    parser = argparse.ArgumentParser(
        prog="python -m training.synthetic",
        description="Render procedural multi-view identities as MFHQ-format shards.",
    )
    parser.add_argument("out", type=Path, help="shards root (train/ and test/ go under it)")
    parser.add_argument("--identities", type=int, default=2000, help="training identities")
    parser.add_argument("--test-identities", type=int, default=200, help="held-out identities")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (part of every id)")
    parser.add_argument("--per-shard", type=int, default=500, help="identities per shard")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering shards")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if args.identities < 0 or args.test_identities < 0 or args.size < 8 or args.per_shard < 1:
        parser.error("need identities >= 0, test-identities >= 0, size >= 8, per-shard >= 1")
    return SyntheticConfig(
        out=args.out, identities=args.identities, test_identities=args.test_identities,
        size=args.size, seed=args.seed, per_shard=args.per_shard, workers=max(1, args.workers),
        progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    paths = write_shards(config)
    for split, shards in paths.items():
        print(f"{split}: {len(shards)} shard(s) under {config.out / split}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
