"""The ground floor both halves stand on (beside the face toolkit, `mfhq_faces`): the shard
contract between curation (writer) and training (reader), here, and the conventions both
commands share, in submodules: `errors` (what a person fixes: one line, exit code 2),
`terminal` (our messages on the terminal, library output in a log file), `storage` (local
paths and fsspec URLs with their options).

The shard contract:

One identity is one WebDataset sample:

    <key>.json                      identity record (see `identity_record` keys below)
    <key>.0.jpg .. <key>.7.jpg      aligned RGB face crops, S x S
    <key>.0.mask.png .. .7.mask.png face-region masks, single channel, 0/255, S x S

This module is pure Python (no numpy, no torch) so that the curation job and the trainer can
both import it without pulling each other's dependencies. Nothing here unpickles anything.

JSON record, format version 1:
    format_version   int, FORMAT_VERSION
    key              the sample key (also the tar member prefix)
    identity_id      stable global identity id, e.g. "yt:M2Ohb0FAaJU", "vfhq:abc:P0"
    sources          list of source datasets the identity's clips came from
    source_video_ids list of source video ids (YouTube ids, VFHQ video ids, folder names)
    split            "train" | "test"
    crop_size        S
    images           list of IMAGES_PER_IDENTITY dicts, in member order:
        index, clip_id, source, frame_index, yaw, pitch, roll (degrees), quality,
        quality_model, face_size (px), bbox [x0, y0, x1, y1] (source-frame px),
        landmarks5 [[x, y] x 5] (crop px), pose_cluster
"""

from __future__ import annotations

import hashlib
import re

FORMAT_VERSION = 1
IMAGES_PER_IDENTITY = 8
DEFAULT_CROP_SIZE = 512

JSON_EXT = "json"
SPLITS = ("train", "test")

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_KEY_PREFIX_MAX = 64


def image_ext(index: int) -> str:
    """Member extension of the index-th face crop (WebDataset splits key/ext at the first dot)."""
    return f"{index}.jpg"


def mask_ext(index: int) -> str:
    """Member extension of the index-th face mask."""
    return f"{index}.mask.png"


def sample_key(identity_id: str) -> str:
    """A WebDataset-safe, stable, unique key for an identity id.

    Keys may not contain dots (WebDataset splits key from extension at the first dot in the
    basename) or slashes; a readable prefix keeps them greppable, the hash keeps them unique.
    """
    digest = hashlib.sha1(identity_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    readable = _KEY_UNSAFE.sub("_", identity_id).strip("_")[:_KEY_PREFIX_MAX] or "id"
    return f"{readable}-{digest}"


def shard_name(split: str, index: int) -> str:
    """File name of the index-th shard of a split, relative to the shards root."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
    return f"{split}/mfhq-{split}-{index:06d}.tar"
