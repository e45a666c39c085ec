"""Deterministic, atomic tar shards (curation/pipeline/tar_writer.py), read back with webdataset."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import webdataset as wds
from PIL import Image

from curation.build_folder import file_sha256
from curation.pipeline.tar_writer import (
    Sample,
    commit_shard,
    encode_jpeg,
    encode_json,
    encode_png_mask,
    stage_shard,
    write_shard,
)
from mfhq_contract import image_ext, mask_ext


def _samples(seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for key in ("id_a-0123456789", "id_b-9876543210"):
        crop = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        mask = (rng.uniform(size=(32, 32)) > 0.5).astype(np.uint8) * 255
        record = {"key": key, "z": 1.234567891, "a": [0.1 + 0.2, float("nan")]}
        out.append(Sample(key, [("json", encode_json(record)),
                                (image_ext(0), encode_jpeg(crop)),
                                (mask_ext(0), encode_png_mask(mask))]))
    return out


def test_json_is_canonical():
    blob = encode_json({"b": 1.0000049, "a": {"y": np.float32(0.5), "x": np.int64(3)},
                        "n": float("inf")})
    assert blob == b'{"a":{"x":3,"y":0.5},"b":1.0,"n":null}'


def test_tar_bytes_are_reproducible_and_metadata_neutral(tmp_path):
    a = write_shard(tmp_path / "one" / "s.tar", _samples())
    b = write_shard(tmp_path / "two" / "s.tar", _samples())
    assert a.sha256 == b.sha256 == file_sha256(a.final_path)
    assert a.bytes == a.final_path.stat().st_size
    with tarfile.open(a.final_path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "id_a-0123456789.json", "id_a-0123456789.0.jpg", "id_a-0123456789.0.mask.png",
        "id_b-9876543210.json", "id_b-9876543210.0.jpg", "id_b-9876543210.0.mask.png"]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


def test_staged_shard_is_hidden_until_committed(tmp_path):
    final = tmp_path / "train" / "mfhq-train-000000.tar"
    staged = stage_shard(final, _samples())
    assert not final.exists()
    assert staged.tmp_path.parent == final.parent
    assert staged.tmp_path.name.startswith(".") and staged.tmp_path.name.endswith(".tmp")
    commit_shard(staged)
    assert final.exists() and not staged.tmp_path.exists()
    assert file_sha256(final) == staged.sha256


def test_webdataset_reads_the_samples_back(tmp_path):
    path = write_shard(tmp_path / "s.tar", _samples()).final_path
    got = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [s["__key__"] for s in got] == ["id_a-0123456789", "id_b-9876543210"]
    sample = got[0]
    assert json.loads(sample["json"])["z"] == 1.2346
    img = np.asarray(Image.open(io.BytesIO(sample["0.jpg"])))
    mask = np.asarray(Image.open(io.BytesIO(sample["0.mask.png"])))
    assert img.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert set(np.unique(mask)) <= {0, 255}


def test_empty_shard_is_a_valid_tar(tmp_path):
    # A shard whose identities were all dropped stays in the numbering as an empty tar.
    staged = write_shard(tmp_path / "empty.tar", [])
    assert staged.samples == 0
    with tarfile.open(staged.final_path) as tar:
        assert tar.getmembers() == []
    both = [str(staged.final_path), str(write_shard(tmp_path / "s.tar", _samples()).final_path)]
    assert len(list(wds.WebDataset(both, shardshuffle=False))) == 2
