"""Synthetic identities written as MFHQ shards (`mfhq_contract`), and the CLI:

    python -m training.synthetic OUT --identities 2000 --test-identities 200 --size 64 --seed 0

writes `OUT/train/mfhq-train-000000.tar ...` and `OUT/test/...`. The bytes are a function of the
arguments alone (fixed member order and tar metadata; parallel rendering changes nothing).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mfhq_contract import FORMAT_VERSION, JSON_EXT, image_ext, mask_ext, sample_key, shard_name
from training.synthetic.render import RenderedView, render_identity

SOURCE = "synthetic"
QUALITY_MODEL = "synthetic"


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
