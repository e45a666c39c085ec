"""The manifest tables of a build: parts per shard, whole manifests, the shards table and the
outcome counts the summary, run.json and the report share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curation import manifests
from curation.build_folder.files import staged_path, write_parquet_atomic
from curation.build_folder.layout import SHARDS_TABLE, BuildFolder
from curation.build_folder.store import size
from curation.records import Status


def read_part(path: Path, table: str, columns: list[str] | None = None) -> pa.Table:
    """One manifest part with its declared schema (or only `columns` of it) and the file's own
    metadata (the shard sha256 and size it records); raises on an unreadable part."""
    data = pq.read_table(path, schema=manifests.SCHEMAS[table], columns=columns)
    return data.replace_schema_metadata(pq.read_schema(path).metadata)


def read_manifest_table(manifests_dir: Path | str, name: str,
                        columns: list[str] | None = None) -> pa.Table:
    """One manifest table (all its parts) with its declared schema; empty when none was
    written. Parts written before a column was added read it as nulls."""
    manifests_dir = Path(manifests_dir)
    schema = manifests.SCHEMAS[name]
    target = pa.schema([schema.field(c) for c in columns]) if columns else schema
    if name == "shards":
        path = manifests_dir / SHARDS_TABLE
        table = pq.read_table(path, schema=schema) if path.exists() else schema.empty_table()
        return table.select(columns) if columns else table
    folder = manifests_dir / name
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return target.empty_table()
    dataset = pads.dataset(folder, schema=schema, format="parquet")
    return dataset.to_table(columns=columns)


def iter_manifest_batches(manifests_dir: Path | str, name: str, columns: list[str]
                          ) -> Iterator[pa.RecordBatch]:
    """One manifest table's record batches (all its parts, its declared schema), for readers
    whose memory must not hold the whole table at once."""
    schema = manifests.SCHEMAS[name]
    folder = Path(manifests_dir) / name
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return
    yield from pads.dataset(folder, schema=schema, format="parquet").to_batches(columns=columns)


def read_manifest(manifests_dir: Path | str, name: str, columns: list[str] | None = None):
    """`read_manifest_table` as a pandas DataFrame."""
    return read_manifest_table(manifests_dir, name, columns).to_pandas()


def write_shard_parts(folder: BuildFolder, shard: str, shard_sha256: str,
                      rows: dict[str, list[dict[str, Any]]],
                      metadata: dict[bytes, bytes] | None = None,
                      shard_bytes: int | None = None) -> None:
    """Write the clips/faces/identities parts of one shard; each records the shard's sha256,
    byte size and name, so that a part and a tar that do not belong together are told apart
    (and a resume can tell a finished shard by its size without reading it).

    `shard_bytes` defaults to the size of the tar this process staged for `shard`
    (`staged_path`): parts are written between staging and commit."""
    if shard_bytes is None:
        staged = staged_path(folder.tar_path(shard))
        shard_bytes = staged.stat().st_size if staged.exists() else None
    meta = {**(metadata or {}), manifests.META_SHARD_SHA256: shard_sha256.encode(),
            manifests.META_SHARD: shard.encode()}
    if shard_bytes is not None:
        meta[manifests.META_SHARD_BYTES] = str(int(shard_bytes)).encode()
    for table, path in folder.part_paths(shard).items():
        write_parquet_atomic(manifests.to_table(table, rows.get(table, []), meta), path)


def write_shards_table(folder: BuildFolder, names: list[str]) -> list[dict]:
    """shards.parquet from the finished shards on disk among `names` (the source of truth after
    resumes and takedowns): path, split, kept samples, bytes, the sha256 its parts record."""
    rows = []
    for name in names:
        tar_bytes = size(folder.tar_path(name))
        part = folder.part_paths(name)["identities"]
        if tar_bytes is None or not part.exists():
            continue
        statuses = pq.read_table(part, columns=["status"]).column(0).to_pylist()
        rows.append({"path": name, "split": name.split("/", 1)[0],
                     "samples": sum(s == Status.KEPT for s in statuses),
                     "bytes": tar_bytes,
                     "sha256": manifests.part_shard_sha256(part)})
    write_parquet_atomic(manifests.to_table("shards", rows), folder.shards_table_path)
    return rows


def _value_counts(series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.fillna("unknown").value_counts().sort_index().items()}


def outcome_counts(clips, identities, faces) -> dict[str, Any]:
    """The build's outcome counts from its manifest frames (the summary, run.json, the report).
    `faces` needs only its `selected` column."""
    not_ok = clips[clips["status"] != Status.OK]
    kept = identities[identities["status"] == Status.KEPT]
    dropped = identities[identities["status"] != Status.KEPT]
    return {
        "clips_read": int(len(clips)),
        "clips_ok": int((clips["status"] == Status.OK).sum()),
        "clips_not_ok_by_reason": _value_counts(not_ok["reason"]),
        "identities_planned": int(len(identities)),
        "identities_kept": int(len(kept)),
        "identities_kept_by_split": {str(k): int(v) for k, v in
                                     kept["split"].value_counts().sort_index().items()},
        "identities_dropped_by_reason": _value_counts(dropped["reason"]),
        "faces_considered": int(len(faces)),
        "faces_selected": int(faces["selected"].sum()) if len(faces) else 0,
    }


def count_outcomes(manifests_dir: Path) -> dict[str, Any]:
    """`outcome_counts` of the manifests on disk, reading only the columns it counts (the
    whole clips manifest of a full-size build would hold ~3 kB per clip in the driver)."""
    return outcome_counts(read_manifest(manifests_dir, "clips", columns=["status", "reason"]),
                          read_manifest(manifests_dir, "identities",
                                        columns=["status", "reason", "split"]),
                          read_manifest(manifests_dir, "faces", columns=["selected"]))
