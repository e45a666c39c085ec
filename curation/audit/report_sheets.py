"""The report's pictures of identities: contact sheets of kept samples read from the shard
tars, and rejected faces cut from the source videos.

Crops are read from the tars with `tarfile` (members read as bytes, never extracted or
unpickled). Rejected faces (`identity_mismatch`) are in no shard: they are cut from the source
videos the clips manifest names, at the frame and box of the faces manifest, so they need the
source files where the build read them.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from curation import build_folder as bf
from curation.audit.report_data import BuildTables, ReportConfig, round_or_none
from curation.records import Status
from mfhq_contract import IMAGES_PER_IDENTITY, JSON_EXT, image_ext
from mfhq_contract.terminal import terminal

THUMB_JPEG_QUALITY = 85
MAX_MEMBER_BYTES = 32 * 1024 * 1024
MISMATCH_FACES_SHOWN = 8           # rejected faces cut from the source videos per identity


@dataclass
class SheetImage:
    index: int
    jpeg: bytes                           # the thumbnail
    width: int
    caption: dict[str, Any]               # yaw, pitch, roll, quality, quality_model, clip, source


@dataclass
class ContactSheet:
    identity_id: str
    requested: bool                       # named on the command line (not sampled)
    row: dict[str, Any] | None            # the identities-manifest row, None if unknown
    images: list[SheetImage] = field(default_factory=list)
    note: str | None = None               # why images are missing, if they are


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    """The iterable, wrapped in a tqdm bar on stderr when enabled."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=terminal())



# --- contact sheets -----------------------------------------------------------------------------

def choose_identities(identities: pd.DataFrame, n: int, seed: int,
                      named: list[str]) -> list[tuple[str, bool]]:
    """Named identities first (in the given order), then n kept ones sampled with the seed.

    Returns (identity_id, requested) pairs; the sample is a pure function of the seed and the
    sorted ids of kept identities, so two reports of one build show the same faces."""
    chosen = [(i, True) for i in dict.fromkeys(named)]
    kept = sorted(set(identities.loc[identities["status"] == Status.KEPT, "identity_id"])
                  - set(named))
    sample = random.Random(seed).sample(kept, min(max(n, 0), len(kept)))
    return chosen + [(i, False) for i in sorted(sample)]


def thumbnail_jpeg(data: bytes, size: int) -> tuple[bytes, int]:
    """Decode an image and re-encode it as a JPEG thumbnail whose longer side is at most
    `size`; returns the JPEG bytes and the thumbnail's width."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=THUMB_JPEG_QUALITY)
        return buffer.getvalue(), image.width


def read_sample_members(shard_path: Path, key: str) -> dict[str, bytes]:
    """The members of one sample in a shard tar, by extension (read as bytes only)."""
    prefix = f"{key}."
    return {m.name[len(prefix):]: m.data
            for m in bf.iter_tar(shard_path, wanted=lambda name: name.startswith(prefix),
                                 max_member_bytes=MAX_MEMBER_BYTES)
            if m.data is not None}


def _image_caption(record: dict) -> dict[str, Any]:
    return {k: record.get(k) for k in ("yaw", "pitch", "roll", "quality", "quality_model",
                                        "clip_id", "source", "frame_index")}


def load_contact_sheet(shards_dir: Path, identities: pd.DataFrame, identity_id: str,
                       requested: bool, thumb_size: int) -> ContactSheet:
    """An identity's selected crops (thumbnails) with their pose and quality, or a note why not."""
    rows = identities[identities["identity_id"] == identity_id]
    if not len(rows):
        return ContactSheet(identity_id, requested, None,
                            note="not in the identities manifest (unknown id or taken down)")
    row = rows.iloc[0].to_dict()
    sheet = ContactSheet(identity_id, requested, row)
    if row["status"] != Status.KEPT:
        sheet.note = f"dropped: {row.get('reason')} ({row.get('message') or 'no message'})"
        return sheet
    shard_path = shards_dir / str(row["shard"])
    try:
        members = read_sample_members(shard_path, str(row["key"]))
        record = json.loads(members[JSON_EXT]) if JSON_EXT in members else {}
        images = {int(im["index"]): im for im in record.get("images", [])
                  if isinstance(im, dict) and "index" in im}
        for index in range(IMAGES_PER_IDENTITY):
            if image_ext(index) not in members:
                continue
            jpeg, width = thumbnail_jpeg(members[image_ext(index)], thumb_size)
            sheet.images.append(SheetImage(index, jpeg, width,
                                           _image_caption(images.get(index, {}))))
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as exc:
        sheet.note = f"could not read {shard_path}: {type(exc).__name__}: {exc}"
        return sheet
    if len(sheet.images) != IMAGES_PER_IDENTITY and sheet.note is None:
        sheet.note = (f"{len(sheet.images)} of {IMAGES_PER_IDENTITY} crops found for key "
                      f"{row['key']} in {shard_path}")
    return sheet


def load_contact_sheets(config: ReportConfig, identities: pd.DataFrame) -> list[ContactSheet]:
    chosen = choose_identities(identities, config.identities, config.seed, config.identity)
    bar = _progress(chosen, len(chosen), "contact sheets", config.progress and bool(chosen))
    return [load_contact_sheet(config.shards_dir, identities, ident, requested,
                               config.thumb_size) for ident, requested in bar]


@dataclass
class MismatchSheet:
    """An identity that lost clips to another person: what was kept, what was rejected."""

    kept: ContactSheet
    rejected: list[SheetImage] = field(default_factory=list)
    note: str | None = None


def mismatch_identities(tables: BuildTables, limit: int) -> list[str]:
    from curation.records import Reason

    clips = tables.clips
    lost = clips[clips["reason"] == Reason.IDENTITY_MISMATCH]
    return sorted(set(lost["identity_id"].dropna()))[:max(limit, 0)]


def cut_rejected_faces(tables: BuildTables, identity_id: str, thumb_size: int
                       ) -> tuple[list[SheetImage], str | None]:
    """Up to MISMATCH_FACES_SHOWN `identity_mismatch` faces of an identity, cut from the source
    videos (frame and box from the faces manifest), spread over its rejected clips."""
    import numpy as np
    from PIL import Image

    from curation.faces.decoding import open_frames
    from curation.records import Reason

    faces = tables.faces
    rejected = faces[(faces["identity_id"] == identity_id)
                     & (faces["reason"] == Reason.IDENTITY_MISMATCH)].sort_values(
        ["clip_id", "frame_index"])
    if not len(rejected):
        return [], "no identity_mismatch face rows"
    step = max(1, len(rejected) // MISMATCH_FACES_SHOWN)
    chosen = rejected.iloc[::step].head(MISMATCH_FACES_SHOWN)
    clips = tables.clips.set_index(["source", "clip_id"])
    images: list[SheetImage] = []
    problems: list[str] = []
    for index, row in enumerate(chosen.itertuples(index=False)):
        try:
            clip = clips.loc[(row.source, row.clip_id)]
            clip = clip.iloc[0] if isinstance(clip, pd.DataFrame) else clip
            with open_frames(clip["video_path"]) as source:
                frame = source.read([int(row.frame_index)])[0]
            x0, y0, x1, y1 = (float(v) for v in row.bbox)
            pad = 0.25 * max(x1 - x0, y1 - y0)
            h, w = frame.shape[:2]
            box = (max(0, int(x0 - pad)), max(0, int(y0 - pad)), min(w, int(x1 + pad)),
                   min(h, int(y1 + pad)))
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(frame[box[1]:box[3], box[0]:box[2]])).save(
                buffer, format="PNG")
            jpeg, width = thumbnail_jpeg(buffer.getvalue(), thumb_size)
            images.append(SheetImage(index, jpeg, width, {
                "clip_id": row.clip_id, "source": row.source, "frame_index": row.frame_index,
                "identity_distance": round_or_none(row.identity_distance, 3)}))
        except Exception as exc:  # noqa: BLE001 - a moved video loses a picture, not the report
            problems.append(f"{row.clip_id}: {type(exc).__name__}: {exc}")
    note = None
    if problems:
        note = (f"{len(problems)} rejected face(s) could not be cut from their source videos "
                f"(moved or unreadable): {problems[0]}")
    return images, note


def load_mismatch_sheets(config: ReportConfig, tables: BuildTables) -> list[MismatchSheet]:
    sheets = []
    for identity_id in mismatch_identities(tables, config.identities):
        kept = load_contact_sheet(config.shards_dir, tables.identities, identity_id, False,
                                  config.thumb_size)
        rejected, note = cut_rejected_faces(tables, identity_id, config.thumb_size)
        sheets.append(MismatchSheet(kept, rejected, note))
    return sheets


def sheets_summary(sheets: list[ContactSheet]) -> list[dict]:
    return [{"identity_id": s.identity_id, "requested": s.requested,
             "status": (s.row or {}).get("status"), "note": s.note,
             "images": [{"index": im.index, **im.caption} for im in s.images]} for s in sheets]
