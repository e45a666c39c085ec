"""Small MFHQ-format shards built from real faces that ship inside our dependencies.

Faces: skimage's astronaut, insightface's Tom Hanks sample and six faces of its `t1.jpg` group
photo. Each identity gets 8 views with a small random rotation, scale, shift, brightness change
and mirror, plus an elliptical face mask, written exactly as `mfhq_contract/__init__.py` says,
so the curation build's real shards can replace these files without changing a test.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from mfhq_contract import (
    FORMAT_VERSION,
    IMAGES_PER_IDENTITY,
    JSON_EXT,
    image_ext,
    mask_ext,
    sample_key,
)

_INSIGHTFACE_IMAGES = "insightface/data/images"
# (left, top, right, bottom) of each face in t1.jpg (1280 x 886), by eye.
_T1_FACES = {
    "t1_rachel": (20, 230, 200, 410), "t1_monica": (250, 110, 420, 280),
    "t1_ross": (440, 235, 610, 405), "t1_chandler": (720, 300, 890, 470),
    "t1_joey": (885, 40, 1065, 220), "t1_phoebe": (1095, 245, 1265, 415),
}


def _insightface_image(name: str) -> Image.Image:
    import importlib.util
    spec = importlib.util.find_spec("insightface")
    root = Path(spec.origin).parent / "data" / "images"
    return Image.open(root / name).convert("RGB")


def face_sources() -> dict[str, Image.Image]:
    """Name -> a roughly square face crop (real photographs)."""
    from skimage import data
    faces = {"astronaut": Image.fromarray(data.astronaut()).crop((135, 20, 305, 190)),
             "tom_hanks": _insightface_image("Tom_Hanks_54745.png")}
    group = _insightface_image("t1.jpg")
    faces.update({name: group.crop(box) for name, box in _T1_FACES.items()})
    return faces


def augmented_view(face: Image.Image, size: int, rng: random.Random,
                   strength: float = 1.0) -> Image.Image:
    """A new 'view': rotation, scale, shift, brightness and mirror, scaled by `strength`."""
    angle = rng.uniform(-12, 12) * strength
    scale = 1 + rng.uniform(-0.1, 0.1) * strength
    w, h = face.size
    dx, dy = (rng.uniform(-0.05, 0.05) * strength * w, rng.uniform(-0.05, 0.05) * strength * h)
    view = face.rotate(angle, resample=Image.BICUBIC, translate=(dx, dy), fillcolor=(90, 80, 70))
    cw, ch = w / scale, h / scale
    left, top = (w - cw) / 2, (h - ch) / 2
    view = view.crop((round(left), round(top), round(left + cw), round(top + ch)))
    view = view.resize((size, size), Image.BICUBIC)
    view = ImageEnhance.Brightness(view).enhance(1 + rng.uniform(-0.15, 0.15) * strength)
    if rng.random() < 0.5 * strength:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return view


def face_mask(size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((0.2 * size, 0.12 * size, 0.8 * size, 0.92 * size), fill=255)
    return mask


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def identity_members(name: str, face: Image.Image, size: int, split: str, seed: int,
                     strength: float = 1.0) -> tuple[str, dict[str, bytes]]:
    rng = random.Random(f"{name}:{seed}")
    identity_id = f"test:{name}"
    key = sample_key(identity_id)
    images = []
    members: dict[str, bytes] = {}
    mask_bytes = _encode(face_mask(size), "PNG")
    for index in range(IMAGES_PER_IDENTITY):
        members[image_ext(index)] = _encode(augmented_view(face, size, rng, strength), "JPEG")
        members[mask_ext(index)] = mask_bytes
        images.append({"index": index, "clip_id": f"{name}-clip", "source": "test",
                       "frame_index": index, "yaw": 0.0, "pitch": 0.0, "roll": 0.0,
                       "quality": 1.0, "quality_model": "none", "face_size": size,
                       "bbox": [0, 0, size, size], "landmarks5": [[0.0, 0.0]] * 5,
                       "pose_cluster": index})
    record = {"format_version": FORMAT_VERSION, "key": key, "identity_id": identity_id,
              "sources": ["test"], "source_video_ids": [name], "split": split,
              "crop_size": size, "images": images}
    members[JSON_EXT] = json.dumps(record).encode()
    return key, members


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
    return path


def write_shards(root: Path, names: list[str] | None = None, per_shard: int = 2,
                 size: int = 64, split: str = "train", seed: int = 0,
                 strength: float = 1.0) -> list[Path]:
    """Write the identities (default: all 8 faces) into shards of `per_shard` samples each."""
    faces = face_sources()
    names = names or sorted(faces)
    samples = [identity_members(n, faces[n], size, split, seed, strength) for n in names]
    paths = []
    for i in range(0, len(samples), per_shard):
        index = i // per_shard
        paths.append(write_tar(Path(root) / f"mfhq-{split}-{index:06d}.tar",
                               samples[i:i + per_shard]))
    return paths


def brace_pattern(paths: list[Path]) -> str:
    """'dir/mfhq-train-{000000..000003}.tar' for consecutive shards written above."""
    first, last = paths[0], paths[-1]
    prefix = first.name.rsplit("-", 1)[0]
    lo, hi = first.stem.rsplit("-", 1)[1], last.stem.rsplit("-", 1)[1]
    return str(first.parent / f"{prefix}-{{{lo}..{hi}}}.tar")


def corrupt_samples(size: int = 64) -> list[tuple[str, dict[str, bytes]]]:
    """One sample with a broken JPEG member, one with malformed JSON, one with 2 good views."""
    faces = face_sources()
    _, good = identity_members("astronaut", faces["astronaut"], size, "train", 1)
    key1, broken_jpeg = "broken_jpeg-0", dict(good)
    broken_jpeg[image_ext(3)] = b"\xff\xd8\xff not a jpeg"
    key2, bad_json = "bad_json-0", dict(good)
    bad_json[JSON_EXT] = b"{not json"
    key3, few_views = "few_views-0", {k: v for k, v in good.items()
                                      if k in (JSON_EXT, image_ext(0), mask_ext(0),
                                               image_ext(1), mask_ext(1))}
    return [(key1, broken_jpeg), (key2, bad_json), (key3, few_views)]


def mean_image(paths: list[Path]) -> np.ndarray:  # pragma: no cover - debugging aid
    return np.mean([np.asarray(Image.open(p)) for p in paths], axis=0)
