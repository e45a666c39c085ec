"""Synthetic identities: the parameters that make a procedural person themselves, and the
views (pose, expression, light) each identity is rendered in.

Identity parameters come from a hash of the identity id alone, so identity i is the same person
wherever and whenever it is rendered; `spread_views` gives its IMAGES_PER_IDENTITY views spread
in yaw. Conventions (degrees): yaw > 0 turns the face towards image right (the nose moves to +x),
which reveals the head's -x side; pitch > 0 tilts the face up; roll > 0 turns it
counter-clockwise in the image.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import numpy as np

from mfhq_contract import IMAGES_PER_IDENTITY

MAX_YAW = 75.0


class Part(enum.IntEnum):
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

