"""Parquet manifests of an MFHQ build: explicit versioned schemas and the names of their parts.

Layout under the manifests folder:

    clips/part-enumeration.parquet      clips that failed or were skipped while enumerating
    clips/part-<split>-NNNNNN.parquet   clips of the identities of one shard
    faces/part-<split>-NNNNNN.parquet   every face considered for those identities
    identities/part-<split>-NNNNNN.parquet
    shards.parquet                      one row per written shard
    run.json, plan.json                 run record and the shard plan (with the config hash)

This module holds the schemas and the part naming only; reading and writing go through
`curation.build_folder`. Each folder reads as one dataset (`pd.read_parquet("manifests/faces")`);
temporary files start with "." so dataset readers skip them. Every part carries `mfhq.table` and
`mfhq.schema_version` in its schema metadata; shard parts also carry the shard's sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# 1: the first release; 2: identities.mean_embedding, clips.codec and clips.decoder (nullable
# columns: parts of version 1 read them as nulls)
SCHEMA_VERSION = 2
TABLES = ("clips", "faces", "identities")
ENUMERATION_PART = "part-enumeration.parquet"

META_TABLE = b"mfhq.table"
META_VERSION = b"mfhq.schema_version"
META_SHARD_SHA256 = b"mfhq.shard_sha256"
META_SHARD = b"mfhq.shard"
# The tar's size in bytes, next to its sha256: a resume decides "finished" from the size and the
# parts' agreement without reading the tar (the full hash check is `mfhq verify`'s).
META_SHARD_BYTES = b"mfhq.shard_bytes"


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={META_TABLE: name.encode(),
                                       META_VERSION: str(SCHEMA_VERSION).encode()})


CLIPS_SCHEMA = _schema("clips", [
    pa.field("source", pa.string(), nullable=False),
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("original_clip_id", pa.string()),
    pa.field("identity_id", pa.string()),
    pa.field("source_video_id", pa.string()),
    pa.field("video_path", pa.string()),
    pa.field("is_raw", pa.bool_()),
    pa.field("status", pa.string(), nullable=False),       # ok | skipped | failed
    pa.field("reason", pa.string()),                        # a Reason value when not ok
    pa.field("message", pa.string()),
    pa.field("stage", pa.string()),                         # enumeration | analysis
    pa.field("start_sec", pa.float64()),
    pa.field("end_sec", pa.float64()),
    pa.field("start_frame", pa.int64()),
    pa.field("end_frame", pa.int64()),
    pa.field("frames_decoded", pa.int64()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("fps", pa.float64()),
    pa.field("num_frames", pa.int64()),
    pa.field("codec", pa.string()),                         # video codec (h264, av1, vp9, ...)
    pa.field("decoder", pa.string()),                       # decord | pyav | pillow
    pa.field("n_faces", pa.int64()),                        # faces recorded for this clip
    pa.field("n_candidates", pa.int64()),                   # of which usable candidates
    pa.field("analysis_seconds", pa.float64()),
    pa.field("split", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("license", pa.string()),
    pa.field("extra_json", pa.string()),
])

FACES_SCHEMA = _schema("faces", [
    pa.field("identity_id", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("frame_index", pa.int64()),
    pa.field("time_sec", pa.float64()),
    pa.field("bbox", pa.list_(pa.float64())),               # x0, y0, x1, y1 in source pixels
    pa.field("det_score", pa.float64()),
    pa.field("face_size", pa.float64()),
    pa.field("yaw", pa.float64()),
    pa.field("pitch", pa.float64()),
    pa.field("roll", pa.float64()),
    pa.field("sharpness", pa.float64()),
    pa.field("pose_cluster", pa.int64()),                   # null: not clustered (rejected)
    pa.field("quality", pa.float64()),                      # null: not scored
    pa.field("quality_model", pa.string()),
    pa.field("selected", pa.bool_(), nullable=False),
    pa.field("image_index", pa.int64()),                    # 0..7 in the sample when selected
    pa.field("reason", pa.string()),                        # null when selected
    pa.field("split", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("track", pa.int64()),                          # person track in its clip
    pa.field("embedding", pa.list_(pa.float32())),          # unit vector; null: not embedded
    pa.field("identity_model", pa.string()),                # the model of `embedding`
    pa.field("identity_distance", pa.float64()),            # cosine distance to the person kept
])

IDENTITIES_SCHEMA = _schema("identities", [
    pa.field("identity_id", pa.string(), nullable=False),
    pa.field("key", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("sources", pa.list_(pa.string())),
    pa.field("source_video_ids", pa.list_(pa.string())),
    pa.field("n_clips", pa.int64()),
    pa.field("n_clips_ok", pa.int64()),
    pa.field("n_candidates", pa.int64()),
    pa.field("n_pose_clusters", pa.int64()),
    pa.field("n_scored", pa.int64()),
    pa.field("yaw_std", pa.float64()),                      # of the selected faces
    pa.field("pitch_std", pa.float64()),
    pa.field("yaw_range", pa.float64()),
    pa.field("pitch_range", pa.float64()),
    pa.field("mean_quality", pa.float64()),                 # of the selected faces
    pa.field("median_quality_selected", pa.float64()),
    pa.field("median_quality_scored", pa.float64()),
    pa.field("quality_model", pa.string()),
    pa.field("status", pa.string(), nullable=False),        # kept | dropped
    pa.field("reason", pa.string()),
    pa.field("message", pa.string()),
    pa.field("n_persons", pa.int64()),                      # people told apart among its faces
    pa.field("identity_consistency", pa.float64()),         # max distance of kept faces to mean
    pa.field("duplicate_group", pa.string()),               # same person as other identities
    pa.field("mean_embedding", pa.list_(pa.float32())),     # unit mean of the kept person
])

SHARDS_SCHEMA = _schema("shards", [
    pa.field("path", pa.string(), nullable=False),          # relative to the shards folder
    pa.field("split", pa.string(), nullable=False),
    pa.field("samples", pa.int64(), nullable=False),
    pa.field("bytes", pa.int64(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
])

SCHEMAS: dict[str, pa.Schema] = {
    "clips": CLIPS_SCHEMA, "faces": FACES_SCHEMA, "identities": IDENTITIES_SCHEMA,
    "shards": SHARDS_SCHEMA,
}


def to_table(name: str, rows: list[dict[str, Any]], extra_metadata: dict[bytes, bytes] | None
             = None) -> pa.Table:
    """Rows (dicts keyed by field name; missing keys are null) as a table of schema `name`."""
    schema = SCHEMAS[name]
    if extra_metadata:
        schema = schema.with_metadata({**schema.metadata, **extra_metadata})
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    for f in schema:
        if not f.nullable and any(v is None for v in columns[f.name]):
            raise ValueError(f"manifest {name}: required field {f.name!r} is missing in a row")
    return pa.Table.from_pydict(columns, schema=schema)


def part_name(shard: str) -> str:
    """Manifest part file name of a shard given as 'train/mfhq-train-000000.tar'."""
    split, base = shard.split("/", 1)
    index = base.rsplit("-", 1)[1].split(".", 1)[0]
    return f"part-{split}-{index}.parquet"


def part_paths(manifests_dir: Path, shard: str) -> dict[str, Path]:
    name = part_name(shard)
    return {table: manifests_dir / table / name for table in TABLES}


def part_shard_sha256(path: Path) -> str | None:
    """The shard sha256 recorded in a part's metadata, or None if unreadable/absent."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    value = meta.get(META_SHARD_SHA256)
    return value.decode() if value else None


def part_shard_record(path: Path) -> tuple[str | None, int | None]:
    """(sha256, byte size) of the shard a part records; None for what is absent/unreadable.
    Reads the Parquet footer only."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None, None
    sha, size = meta.get(META_SHARD_SHA256), meta.get(META_SHARD_BYTES)
    return (sha.decode() if sha else None,
            int(size) if size is not None and size.isdigit() else None)
