"""Deterministic, atomic WebDataset tar shards (the sample layout is `mfhq_contract`).

A shard is written in two steps so that the manifest parts can be written in between:
`stage_shard` writes the tar under a hidden temporary name in the final folder (fsynced) and
returns its sha256; `commit_shard` renames it into place (and on a store uploads it, see
`curation.build_folder.store`). A shard file under its final name is therefore always complete.

Bytes are reproducible: members in the given order, mtime 0, uid/gid 0, no user/group names,
mode 0644, and JSON with sorted keys and rounded floats.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from curation.build_folder import fsync_dir, publish, staged_path

JPEG_QUALITY = 95
FLOAT_DIGITS = 4


@dataclass
class Sample:
    """One WebDataset sample: a key and its members as (extension, bytes), in member order."""

    key: str
    members: list[tuple[str, bytes]]


@dataclass
class StagedShard:
    """A shard written under its temporary name, not yet renamed into place."""

    tmp_path: Path
    final_path: Path
    sha256: str
    bytes: int
    samples: int


def round_floats(value: Any, digits: int = FLOAT_DIGITS) -> Any:
    """The value with every float rounded (NaN/inf become None: JSON has no such numbers)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float | np.floating):
        value = float(value)
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [round_floats(v, digits) for v in value]
    return value


def encode_json(record: dict) -> bytes:
    """Canonical JSON bytes: sorted keys, rounded floats, ASCII, no spaces."""
    return json.dumps(round_floats(record), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode("ascii")


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """An HxWx3 uint8 RGB array as baseline JPEG bytes (4:2:0, no optimisation: reproducible)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(
        buffer, format="JPEG", quality=quality, subsampling=2, optimize=False)
    return buffer.getvalue()


def encode_png_mask(mask: np.ndarray) -> bytes:
    """An HxW uint8 0/255 mask as a single-channel PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), "L").save(
        buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def tar_bytes_to(fileobj, samples: list[Sample]) -> None:
    """Write the samples as a tar stream to an open binary file."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            for ext, data in sample.members:
                tar.addfile(_tar_info(f"{sample.key}.{ext}", len(data)), io.BytesIO(data))


class _HashingWriter:
    """A file wrapper that hashes and counts what is written through it."""

    def __init__(self, raw):
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


def stage_shard(final_path: Path, samples: list[Sample]) -> StagedShard:
    """Write the shard to a hidden temporary file beside `final_path`, fsynced; not renamed yet."""
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staged_path(final_path)
    with open(tmp, "wb") as raw:
        writer = _HashingWriter(raw)
        tar_bytes_to(writer, samples)
        raw.flush()
        os.fsync(raw.fileno())
    return StagedShard(tmp, final_path, writer.digest.hexdigest(), writer.size, len(samples))


def commit_shard(staged: StagedShard) -> Path:
    """Rename a staged shard into place (atomic on one filesystem) and fsync the folder; for an
    output on a store, upload it: the tar's PUT, after its parts', is the shard's commit."""
    os.replace(staged.tmp_path, staged.final_path)
    fsync_dir(staged.final_path.parent)
    publish(staged.final_path)
    return staged.final_path


def write_shard(final_path: Path, samples: list[Sample]) -> StagedShard:
    """Stage and commit in one go (when nothing has to be written in between)."""
    staged = stage_shard(final_path, samples)
    commit_shard(staged)
    return staged
