"""Render demo videos: head plates moved by a simulated head motion over a static background,
then degraded (blur, noise, brightness, JPEG loss, short occlusions), cropped to one or more
outputs (a raw video and the processed clips cut from it) and encoded with PyAV.

Conventions of the ground truth written per frame (also written into every sidecar file):
- roll_deg: in-plane rotation of the face; positive = counter-clockwise as seen on screen
  (image y axis points down).
- yaw_warp_deg / pitch_warp_deg: the face plate (a flat photo) is rotated in 3D about its
  vertical / horizontal axis through the face centre and projected from a distance of
  `VIEW_DISTANCE` face widths. Positive yaw: the image-right side of the face moves away
  (gets smaller); positive pitch: the top of the face moves away. A perspective warp of a photo
  only mimics a head turn: the face does not really turn, so estimated poses follow it loosely.
- scale: face width relative to the scene's base face width; shift_px: face centre offset.
- face_box: x0, y0, x1, y1 of the warped face box (axis-aligned bounds of its four corners),
  in pixels of the output video; landmarks5: eye image-left, eye image-right, nose tip, mouth
  corner image-left, mouth corner image-right.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from curation.democorpus.faces_source import Plate

VIEW_DISTANCE = 2.5
CONVENTIONS = {
    "roll_deg": "in-plane rotation, positive = counter-clockwise on screen (y axis down)",
    "yaw_warp_deg": "3D rotation of the flat face plate about its vertical axis, then "
                    f"perspective projection from {VIEW_DISTANCE} face widths; positive = "
                    "image-right side of the face farther away",
    "pitch_warp_deg": "same about the horizontal axis; positive = top of the face farther away",
    "scale": "face width / the scene's base face width",
    "shift_px": "face centre offset from its rest position, output pixels",
    "blur_sigma": "Gaussian blur sigma in pixels (0 = none)",
    "noise_sigma": "additive Gaussian grain, 0..255 scale",
    "brightness": "multiplicative gain",
    "jpeg_quality": "JPEG round trip quality (100 = none)",
    "occluded": "an occluder covers part of the target face",
    "face_box": "x0 y0 x1 y1 output pixels, bounds of the warped face box",
    "landmarks5": "eye image-left, eye image-right, nose tip, mouth image-left, mouth image-right",
}

# amplitude (deg) and cycles per segment for yaw, pitch, roll; scale and shift amplitudes
PROFILES: dict[str, dict[str, tuple[float, float]]] = {
    "yaw_sweep": {"yaw": (42, 1.0), "pitch": (10, 1.6), "roll": (12, 1.3)},
    "pitch_roll": {"yaw": (16, 0.7), "pitch": (30, 1.0), "roll": (25, 1.5)},
    "mixed": {"yaw": (34, 1.4), "pitch": (22, 0.9), "roll": (20, 1.0)},
    "roll_sweep": {"yaw": (24, 1.2), "pitch": (14, 0.8), "roll": (25, 1.0)},
    "idle": {"yaw": (8, 0.5), "pitch": (5, 0.7), "roll": (4, 0.6)},
}


@dataclass(frozen=True)
class Segment:
    """A stretch of the scene's timeline with one motion profile (a shot)."""

    start: int
    length: int
    profile: str
    seed: int
    cycles: float = 1.0             # repeats of the profile's motion over the segment (longer
                                    # clips repeat it to keep the demo's speed of head motion)


@dataclass(frozen=True)
class Actor:
    """A head in the scene. Frames outside every segment use the 'idle' profile."""

    plate: Plate
    anchor: tuple[float, float]     # face centre at rest, canvas pixels
    base_face_px: float             # face box width at scale 1
    segments: tuple[Segment, ...]
    target: bool = True             # the clip's own person (others are recorded as others)


@dataclass(frozen=True)
class Output:
    """One file cut from the scene: frames [first, first+count) inside region (x, y, w, h)."""

    path: str
    kind: str                       # "mp4", "png_dir" or "none" (ground truth only)
    first: int
    count: int
    region: tuple[int, int, int, int]
    groundtruth_path: str | None = None
    header: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    n_frames: int
    fps: int
    seed: int
    actors: tuple[Actor, ...]
    outputs: tuple[Output, ...]
    occlusions: tuple[tuple[int, int], ...] = ()   # (first frame, length) windows
    degrade: bool = True
    grain: bool = True              # off for PNG outputs: grain makes every PNG ~0.5 MB
    crf: int = 27


def motion_at(segment: Segment | None, t: int, idle_seed: int) -> dict[str, float]:
    """Pose-like warp parameters of one frame: smooth sinusoids with seeded phases."""
    if segment is None:
        profile, local, length, seed = PROFILES["idle"], t, 100, idle_seed
    else:
        profile = PROFILES[segment.profile]
        local, length, seed = t - segment.start, segment.length, segment.seed
    phases = np.random.default_rng(seed).uniform(0, 2 * math.pi, size=6)
    u = local / max(1, length)
    if segment is not None and segment.cycles != 1.0:
        u *= segment.cycles
    values = {}
    for i, key in enumerate(("yaw", "pitch", "roll")):
        amplitude, cycles = profile[key]
        values[key] = amplitude * math.sin(2 * math.pi * cycles * u + phases[i])
    values["scale"] = 1.0 + 0.1 * math.sin(2 * math.pi * 0.7 * u + phases[3])
    values["shift_x"] = 0.04 * math.sin(2 * math.pi * 0.8 * u + phases[4])
    values["shift_y"] = 0.03 * math.sin(2 * math.pi * 0.6 * u + phases[5])
    return values


def degradation_at(t: int, n_frames: int, seed: int) -> dict[str, float]:
    """Blur, grain, brightness and JPEG quality of one frame, varying smoothly over time."""
    phases = np.random.default_rng(seed + 7919).uniform(0, 2 * math.pi, size=4)
    u = t / max(1, n_frames) * 4.0                   # about one cycle per clip length
    blur = max(0.0, 2.6 * math.sin(2 * math.pi * 0.9 * u + phases[0]) - 0.6)
    noise = 1.0 + 4.0 * (0.5 + 0.5 * math.sin(2 * math.pi * 1.1 * u + phases[1]))
    brightness = 1.0 + 0.25 * math.sin(2 * math.pi * 0.7 * u + phases[2])
    quality = 62 + 32 * math.sin(2 * math.pi * 1.3 * u + phases[3])
    return {"blur_sigma": round(blur, 2), "noise_sigma": round(noise, 2),
            "brightness": round(brightness, 3), "jpeg_quality": int(round(quality))}


def actor_homography(actor: Actor, t: int) -> tuple[np.ndarray, dict[str, float]]:
    """3x3 map from plate pixels to canvas pixels at frame t, and the parameters used."""
    segment = next((s for s in actor.segments if s.start <= t < s.start + s.length), None)
    idle_seed = actor.segments[0].seed + 1 if actor.segments else 1
    m = motion_at(segment, t, idle_seed)
    plate = actor.plate
    cx, cy = plate.face_center
    s = actor.base_face_px * m["scale"] / plate.face_width
    to_origin = np.array([[s, 0, -s * cx], [0, s, -s * cy], [0, 0, 1]], np.float64)
    tilt = _tilt_homography(math.radians(m["yaw"]), math.radians(m["pitch"]),
                            VIEW_DISTANCE * actor.base_face_px)
    r = math.radians(m["roll"])
    roll = np.array([[math.cos(r), math.sin(r), 0], [-math.sin(r), math.cos(r), 0], [0, 0, 1]])
    shift = (m["shift_x"] * actor.base_face_px * 2, m["shift_y"] * actor.base_face_px * 2)
    place = np.array([[1, 0, actor.anchor[0] + shift[0]], [0, 1, actor.anchor[1] + shift[1]],
                      [0, 0, 1]], np.float64)
    params = {"roll_deg": round(m["roll"], 2), "yaw_warp_deg": round(m["yaw"], 2),
              "pitch_warp_deg": round(m["pitch"], 2), "scale": round(m["scale"], 4),
              "shift_px": [round(shift[0], 1), round(shift[1], 1)]}
    return place @ roll @ tilt @ to_origin, params


def _tilt_homography(yaw: float, pitch: float, distance: float) -> np.ndarray:
    """Rotate the plane z=0 about the origin in 3D and project it from `distance`."""
    ry = np.array([[math.cos(yaw), 0, -math.sin(yaw)], [0, 1, 0],
                   [math.sin(yaw), 0, math.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, math.cos(pitch), math.sin(pitch)],
                   [0, -math.sin(pitch), math.cos(pitch)]])
    src = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * distance * 0.4
    pts3 = np.c_[src, np.zeros(4)] @ (rx @ ry).T
    dst = pts3[:, :2] * (distance / (distance + pts3[:, 2:3]))
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))


def _project(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(points.reshape(-1, 1, 2).astype(np.float64), h).reshape(-1, 2)


def make_background(width: int, height: int, seed: int) -> np.ndarray:
    """A static, smooth 'room' background: colour field plus a few soft panels."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(50, 200, size=(4, 5, 1))
    tint = rng.integers(-35, 36, size=(4, 5, 3))
    field_ = np.clip(grey + tint, 0, 255).astype(np.uint8)
    bg = cv2.resize(field_, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 8, width // 2)), int(rng.integers(height // 8, height))
        colour = tuple(int(c) for c in rng.integers(20, 235, size=3))
        cv2.rectangle(bg, (x0, y0), (x0 + w, y0 + h), colour, -1)
    return cv2.GaussianBlur(bg, (0, 0), sigmaX=2.0)


def premultiplied(rgba: np.ndarray) -> np.ndarray:
    """uint8 (R*a, G*a, B*a, 255-a): one 4-channel warp gives both terms of the blend."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    colour = (rgba[..., :3].astype(np.uint16) * alpha + 127) // 255
    return np.concatenate([colour, 255 - alpha], axis=2).astype(np.uint8)


def composite(canvas: np.ndarray, plate: np.ndarray, h: np.ndarray) -> None:
    """Warp a premultiplied plate with h and blend it over the uint8 canvas inside its bounds."""
    ph, pw = plate.shape[:2]
    corners = _project(h, np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float64))
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(canvas.shape[1], x1), min(canvas.shape[0], y1)
    if x1 <= x0 or y1 <= y0:
        return
    to_roi = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64) @ h
    warped = cv2.warpPerspective(plate, to_roi, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 255))
    r, g, b, keep = cv2.split(warped)
    roi = canvas[y0:y1, x0:x1]
    blended = cv2.multiply(roi, cv2.merge([keep, keep, keep]), scale=1 / 255)
    roi[...] = cv2.add(blended, cv2.merge([r, g, b]))


def draw_occluder(canvas: np.ndarray, face_box: list[float], rng_seed: int) -> list[float]:
    """Cover 35-55 % of the face box with a skin-toned 'hand' or a dark bar; return its box."""
    rng = np.random.default_rng(rng_seed)
    x0, y0, x1, y1 = face_box
    w, h = x1 - x0, y1 - y0
    if rng.random() < 0.5:
        cx, cy = x0 + w * rng.uniform(0.3, 0.7), y0 + h * rng.uniform(0.55, 0.8)
        ax, ay = w * rng.uniform(0.35, 0.45), h * rng.uniform(0.25, 0.35)
        colour = (int(rng.uniform(170, 215)), int(rng.uniform(120, 160)),
                  int(rng.uniform(95, 130)))
        cv2.ellipse(canvas, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(-30, 30)),
                    0, 360, colour, -1)
        return [round(cx - ax, 1), round(cy - ay, 1), round(cx + ax, 1), round(cy + ay, 1)]
    bx0, by0 = x0 - 0.1 * w, y0 + h * rng.uniform(0.15, 0.35)
    bx1, by1 = x1 + 0.1 * w, by0 + h * rng.uniform(0.35, 0.5)
    shade = int(rng.uniform(15, 60))
    cv2.rectangle(canvas, (int(bx0), int(by0)), (int(bx1), int(by1)), (shade, shade, shade), -1)
    return [round(bx0, 1), round(by0, 1), round(bx1, 1), round(by1, 1)]


def degrade(canvas: np.ndarray, params: dict[str, float], grain: np.ndarray) -> np.ndarray:
    """Brightness, blur, grain then a JPEG round trip; uint8 RGB in and out."""
    img = canvas.astype(np.float32)
    if params["blur_sigma"] > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=params["blur_sigma"])
    img *= params["brightness"]
    cv2.scaleAdd(grain, params["noise_sigma"], img, dst=img)
    out = np.clip(img, 0, 255, out=img).astype(np.uint8)
    if params["jpeg_quality"] < 100:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, params["jpeg_quality"]])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


class Mp4Writer:
    """H.264 yuv420p mp4 with settings that make the bytes reproducible (one x264 thread,
    bit-exact muxing without version strings or dates)."""

    def __init__(self, path: str, width: int, height: int, fps: int, crf: int):
        import av

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(path, "w", format="mp4", options={"fflags": "+bitexact"})
        stream = self._container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "superfast", "g": "50",
                          "x264-params": "threads=1:sliced-threads=0"}
        stream.codec_context.thread_count = 1
        self._stream = stream

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


class PngDirWriter:
    """A folder of frames 00000000.png, 00000001.png, ... (how VFHQ clips are often kept)."""

    def __init__(self, path: str):
        self._dir = Path(path)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._index = 0

    def write(self, rgb: np.ndarray) -> None:
        # Pillow, not cv2.imwrite: cv2's PNG path breaks once decord is loaded (see
        # curation.faces.decoding.read_image_rgb).
        Image.fromarray(rgb).save(self._dir / f"{self._index:08d}.png", format="PNG")
        self._index += 1

    def close(self) -> None:
        pass


def render_scene(scene: Scene) -> list[dict]:
    """Render, write every output and its ground-truth sidecar; one summary dict per output."""
    cv2.setNumThreads(1)
    background = make_background(scene.width, scene.height, scene.seed)
    grain_rng = np.random.default_rng(scene.seed + 104729)
    grains = [np.repeat(grain_rng.standard_normal((scene.height, scene.width, 1),
                                                  dtype=np.float32), 3, axis=2)
              for _ in range(5)]
    plates = [premultiplied(actor.plate.rgba) for actor in scene.actors]
    writers = {}
    truths: dict[int, list[dict]] = {i: [] for i in range(len(scene.outputs))}
    for i, out in enumerate(scene.outputs):
        x, y, w, h = out.region
        if out.kind == "mp4":
            writers[i] = Mp4Writer(out.path, w, h, scene.fps, scene.crf)
        elif out.kind == "png_dir":
            writers[i] = PngDirWriter(out.path)
    try:
        for t in range(scene.n_frames):
            frame, truth = _render_frame(scene, plates, t, background, grains[t % len(grains)])
            for i, out in enumerate(scene.outputs):
                if out.first <= t < out.first + out.count:
                    x, y, w, h = out.region
                    if i in writers:
                        writers[i].write(frame[y:y + h, x:x + w])
                    truths[i].append(_shift_truth(truth, t - out.first, x, y))
    finally:
        for writer in writers.values():
            writer.close()
    summaries = []
    for i, out in enumerate(scene.outputs):
        if out.groundtruth_path:
            _write_groundtruth(out, scene, truths[i])
        summaries.append({"path": out.path, "frames": len(truths[i])})
    return summaries


def _render_frame(scene: Scene, plates: list[np.ndarray], t: int, background: np.ndarray,
                  grain: np.ndarray) -> tuple[np.ndarray, dict]:
    canvas = background.copy()
    truth: dict = {"face_box": None, "landmarks5": None, "other_faces": []}
    target_box = None
    for actor, plate in zip(scene.actors, plates, strict=True):
        h, params = actor_homography(actor, t)
        composite(canvas, plate, h)
        corners = _project(h, actor.plate.face_box)
        box = [*corners.min(0).tolist(), *corners.max(0).tolist()]
        box = [round(v, 1) for v in box]
        if actor.target and target_box is None:
            target_box = box
            truth.update(params)
            truth["face_box"] = box
            truth["landmarks5"] = np.round(_project(h, actor.plate.landmarks5), 1).tolist()
            truth["person"] = actor.plate.person
        else:
            truth["other_faces"].append({"person": actor.plate.person, "face_box": box})
    occluded = any(start <= t < start + length for start, length in scene.occlusions)
    truth["occluded"] = occluded
    truth["occluder_box"] = None
    if occluded and target_box is not None:
        truth["occluder_box"] = draw_occluder(canvas, target_box, scene.seed + t // 50)
    if scene.degrade:
        params = degradation_at(t, scene.n_frames, scene.seed)
        if not scene.grain:
            params["noise_sigma"] = 0.0
    else:
        params = {"blur_sigma": 0.0, "noise_sigma": 0.0, "brightness": 1.0, "jpeg_quality": 100}
    truth.update(params)
    return degrade(canvas, params, grain), truth


def _shift_truth(truth: dict, index: int, dx: int, dy: int) -> dict:
    """Frame truth in the coordinates of an output cut at (dx, dy)."""
    def move(box):
        return None if box is None else [round(box[0] - dx, 1), round(box[1] - dy, 1),
                                         round(box[2] - dx, 1), round(box[3] - dy, 1)]

    shifted = dict(truth, frame=index)
    shifted["face_box"] = move(truth["face_box"])
    shifted["occluder_box"] = move(truth["occluder_box"])
    if truth["landmarks5"] is not None:
        shifted["landmarks5"] = [[round(x - dx, 1), round(y - dy, 1)] for x, y in truth["landmarks5"]]
    shifted["other_faces"] = [dict(o, face_box=move(o["face_box"])) for o in truth["other_faces"]]
    return shifted


def _write_groundtruth(out: Output, scene: Scene, frames: list[dict]) -> None:
    path = Path(out.groundtruth_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = dict(out.header, frame_count=len(frames), fps=scene.fps,
                  width=out.region[2], height=out.region[3], conventions=CONVENTIONS)
    lines = [json.dumps(f, sort_keys=True, ensure_ascii=False) for f in frames]
    head = json.dumps(header, sort_keys=True, ensure_ascii=False)[:-1]
    path.write_text(head + ', "frames": [\n' + ",\n".join(lines) + "\n]}\n", encoding="utf-8")
