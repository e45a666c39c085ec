"""The corpus being planned: ids, seeds, paths, and scenes of single clips.

Layout writers (layouts.py, bad_inputs.py) add scenes to render and metadata to write here;
build.py renders the scenes and writes the metadata.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curation.democorpus.faces_source import Plate
from curation.democorpus.render import Actor, Output, Scene, Segment
from curation.records import safe_id

# The source layout of identity i is SOURCE_CYCLE[i % 5].
SOURCE_CYCLE = ("celebvhq", "vfhq", "talkinghead1kh", "celebvtext", "folder")

FPS = 25
CLIP_FRAMES = 88                 # 3.52 s at 25 fps: the default clip length
FACE_FRACTION = 0.5              # face box width / frame size at scale 1
OCCLUSION_FRAMES = 8
CLIP_PROFILES = (("yaw_sweep", "pitch_roll"), ("mixed", "roll_sweep"))


def even(value: float) -> int:
    """H.264 with yuv420p needs even frame sizes."""
    return int(round(value / 2)) * 2


@dataclass
class Identity:
    name: str                    # folder-safe, e.g. "astronaut", "t1_face2_variant1"
    person: str                  # the real person in the photo
    plate: Plate
    index: int                   # position in the identity list (drives profiles)
    origin: str                  # the photo it comes from
    variant_of: str | None = None


@dataclass
class CorpusPlan:
    out: Path
    seed: int
    size: int
    clip_frames: int = CLIP_FRAMES                           # frames of a good clip
    scenes: list[Scene] = field(default_factory=list)
    clips: list[dict] = field(default_factory=list)          # good clips, for corpus.json
    bad_inputs: list[dict] = field(default_factory=list)
    identity_cases: list[dict] = field(default_factory=list)  # identity_cases.py
    identities: list[dict] = field(default_factory=list)
    celebvhq: dict = field(default_factory=dict)             # clip key -> entry
    celebvtext: dict = field(default_factory=dict)           # "<clip>.mp4" -> entry
    vfhq_meta: dict = field(default_factory=dict)            # file name -> text
    th_tubes: dict = field(default_factory=lambda: {"small": [], "train": [], "val": []})
    th_video_ids: dict = field(default_factory=lambda: {"small": [], "train": [], "val": []})
    raw_files: dict = field(default_factory=dict)            # relative path -> bytes
    truncate: dict = field(default_factory=dict)             # relative path -> kept fraction

    # ids and seeds ---------------------------------------------------------------------------
    def youtube_id(self, label: str) -> str:
        """11 characters of [A-Za-z0-9_-], fixed by the seed and a label."""
        digest = hashlib.sha256(f"democorpus:{self.seed}:yt:{label}".encode()).digest()
        return base64.urlsafe_b64encode(digest).decode()[:11]

    def number(self, label: str, low: int, high: int) -> int:
        """A deterministic integer in [low, high) for a label."""
        digest = hashlib.sha256(f"democorpus:{self.seed}:n:{label}".encode()).digest()
        return low + int.from_bytes(digest[:8], "big") % (high - low)

    def rng(self, label: str) -> np.random.Generator:
        return np.random.default_rng(self.number(label, 0, 2**62))

    # paths ----------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return str(self.out.joinpath(*parts))

    def rel(self, path: str | None) -> str | None:
        return None if path is None else Path(path).relative_to(self.out).as_posix()

    def groundtruth_path(self, source: str, clip_id: str) -> str:
        return self.path("_groundtruth", source, safe_id(clip_id) + ".json")

    # scenes ---------------------------------------------------------------------------------
    def clip_profiles(self, identity: Identity) -> tuple[str, str]:
        return CLIP_PROFILES[identity.index % len(CLIP_PROFILES)]

    def motion_cycles(self, frames: int) -> float:
        """Repeats of a motion profile over a segment of `frames`: 1 up to the default clip
        length; a longer clip repeats the head sweeps at the default clip's speed instead of
        stretching one sweep over it."""
        return frames / CLIP_FRAMES if frames > CLIP_FRAMES else 1.0

    def occlusion(self, label: str, first: int, count: int) -> tuple[int, int]:
        start = first + self.number("occ:" + label, int(count * 0.3), int(count * 0.7))
        return (start, OCCLUSION_FRAMES)

    def single_clip(self, identity: Identity, label: str, profile: str, video_path: str | None,
                    header: dict, kind: str = "mp4", frames: int | None = None,
                    face_fraction: float = FACE_FRACTION) -> Output:
        """A frame_size x frame_size clip of one identity (`frames` long, default the plan's
        clip length); returns its output (for GT paths)."""
        s = self.size
        frames = self.clip_frames if frames is None else frames
        seed = self.number("scene:" + label, 0, 2**31)
        actor = Actor(identity.plate, (s / 2, s * 0.47), face_fraction * s,
                      (Segment(0, frames, profile, seed, self.motion_cycles(frames)),))
        gt = self.groundtruth_path(header["source"], header["clip_id"])
        output = Output(video_path or "", kind if video_path else "none", 0, frames,
                        (0, 0, s, s), gt, header)
        self.scenes.append(Scene(s, s, frames, FPS, seed, (actor,), (output,),
                                 occlusions=(self.occlusion(label, 0, frames),),
                                 grain=kind != "png_dir"))
        return output

    def add_clip(self, identity: Identity, output: Output, **fields) -> None:
        """Record a good clip for corpus.json."""
        header = output.header
        self.clips.append({
            "source": header["source"], "clip_id": header["clip_id"],
            "identity": identity.name, "person": identity.person,
            "video": self.rel(output.path) if output.kind != "none" else None,
            "frames": output.count, "groundtruth": self.rel(output.groundtruth_path),
            **fields})


def clip_header(source: str, clip_id: str, identity: Identity, **fields) -> dict:
    return {"source": source, "clip_id": clip_id, "identity": identity.name,
            "person": identity.person, "variant_of": identity.variant_of, **fields}
