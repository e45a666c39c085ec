"""Manifest schemas, atomic part writing and reading as one dataset (curation/manifests.py)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from curation import build_folder, manifests


def _face(identity: str, clip: str, selected: bool, quality: float | None) -> dict:
    return {"identity_id": identity, "clip_id": clip, "source": "vfhq", "frame_index": 3,
            "bbox": [1.0, 2.0, 30.0, 40.0], "yaw": 10.0, "pitch": -2.0, "roll": 0.5,
            "pose_cluster": 1, "quality": quality, "selected": selected,
            "image_index": 0 if selected else None,
            "reason": None if selected else "not_scored", "split": "train",
            "shard": "train/mfhq-train-000000.tar"}


def test_every_schema_is_versioned_and_named():
    for name, schema in manifests.SCHEMAS.items():
        assert schema.metadata[manifests.META_TABLE] == name.encode()
        assert schema.metadata[manifests.META_VERSION] == str(manifests.SCHEMA_VERSION).encode()


def test_shard_parts_round_trip_and_read_as_one_dataset(tmp_path):
    rows0 = {"faces": [_face("a", "c1", True, 0.9), _face("a", "c1", False, None)],
             "identities": [{"identity_id": "a", "key": "a-1", "split": "train",
                             "shard": "train/mfhq-train-000000.tar", "sources": ["vfhq"],
                             "source_video_ids": ["v"], "status": "kept"}],
             "clips": [{"source": "vfhq", "clip_id": "c1", "status": "ok"}]}
    rows1 = {"faces": [_face("b", "c2", True, 0.5)], "identities": [], "clips": []}
    folder = build_folder.BuildFolder(str(tmp_path))
    build_folder.write_shard_parts(folder, "train/mfhq-train-000000.tar", "aa" * 32, rows0)
    build_folder.write_shard_parts(folder, "test/mfhq-test-000003.tar", "bb" * 32, rows1)
    tmp_path = folder.manifests_dir
    assert (tmp_path / "faces" / "part-train-000000.parquet").exists()
    assert (tmp_path / "faces" / "part-test-000003.parquet").exists()
    assert not list(tmp_path.rglob("*.tmp"))

    faces = build_folder.read_manifest(tmp_path, "faces")
    assert sorted(faces["clip_id"]) == ["c1", "c1", "c2"]
    assert faces["quality"].isna().sum() == 1
    # The same folder reads with plain pandas and pyarrow too.
    assert len(pd.read_parquet(tmp_path / "faces")) == 3
    assert pads.dataset(tmp_path / "faces", format="parquet").count_rows() == 3
    ids = build_folder.read_manifest_table(tmp_path, "identities")
    assert ids.schema.field("sources").type == pa.list_(pa.string())
    assert ids.column("sources").to_pylist() == [["vfhq"]]

    part = tmp_path / "identities" / "part-train-000000.parquet"
    assert manifests.part_shard_sha256(part) == "aa" * 32
    assert pq.read_schema(part).metadata[manifests.META_VERSION] == str(manifests.SCHEMA_VERSION).encode()


def test_temporary_files_are_invisible_to_dataset_readers(tmp_path):
    build_folder.write_parquet_atomic(manifests.to_table("clips", [
        {"source": "folder", "clip_id": "x", "status": "failed", "reason": "video_empty"}]),
        tmp_path / "clips" / manifests.ENUMERATION_PART)
    # A writer killed mid-way leaves a hidden temporary file behind.
    (tmp_path / "clips" / ".part-train-000000.parquet.123.tmp").write_bytes(b"garbage")
    clips = build_folder.read_manifest(tmp_path, "clips")
    assert clips["reason"].tolist() == ["video_empty"]


def test_missing_tables_read_as_empty_with_schema(tmp_path):
    table = build_folder.read_manifest_table(tmp_path, "faces")
    assert table.num_rows == 0 and table.schema.names == manifests.FACES_SCHEMA.names
    assert build_folder.read_manifest_table(tmp_path, "shards").num_rows == 0


def test_required_fields_are_enforced():
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, ValueError)):
        manifests.to_table("shards", [{"path": None, "split": "train", "samples": 1,
                                       "bytes": 1, "sha256": "x"}])


def test_part_name_from_shard_name():
    assert manifests.part_name("train/mfhq-train-000012.tar") == "part-train-000012.parquet"
    assert manifests.part_name("test/mfhq-test-000000.tar") == "part-test-000000.parquet"
