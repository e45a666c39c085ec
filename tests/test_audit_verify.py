"""`python -m curation.audit.verify` on a copy of the demo build: clean when untouched; a flipped byte
in a tar, a deleted shard, a truncated Parquet part, an edited sample JSON, an unsafe member
name and a source video in both splits are each reported."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation import build_folder, manifests
from curation.audit.verify import VerifyConfig, main, verify_build
from curation.build_folder import file_sha256

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def build(demo_build, tmp_path) -> Path:
    output = tmp_path / "build"
    shutil.copytree(demo_build.paths.output, output)
    return output


def _problems(output: Path) -> list[str]:
    return verify_build(VerifyConfig(output=str(output), progress=False))


def _shards(output: Path):
    return build_folder.read_manifest(output / "manifests", "shards")


def _a_full_shard(output: Path) -> str:
    shards = _shards(output)
    return shards[shards.samples > 0].sort_values("path").iloc[0].path


def _rewrite_tar(tar: Path, edit) -> None:
    """Rewrite a tar, passing every (name, bytes) through edit -> (name, bytes)."""
    with tarfile.open(tar) as archive:
        members = [(m.name, archive.extractfile(m).read()) for m in archive]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
        for name, data in members:
            name, data = edit(name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    tar.write_bytes(buffer.getvalue())


def _reseal(output: Path, shard: str) -> None:
    """Record a modified tar's sha256 and size everywhere, as a careful forger would, so that
    only the content checks can catch the change."""
    tar = output / "shards" / shard
    sha = file_sha256(tar)
    for path in manifests.part_paths(output / "manifests", shard).values():
        table = pq.read_table(path)
        meta = dict(table.schema.metadata)
        meta[manifests.META_SHARD_SHA256] = sha.encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
    table_path = output / "manifests" / "shards.parquet"
    frame = pq.read_table(table_path).to_pandas()
    frame.loc[frame.path == shard, ["sha256", "bytes"]] = [sha, tar.stat().st_size]
    build_folder.write_parquet_atomic(manifests.to_table("shards", frame.to_dict("records")),
                                 table_path)


def test_an_untouched_build_is_clean(build, capsys):
    assert _problems(build) == []
    assert main(["--output", str(build), "--no-progress"]) == 0


def test_a_flipped_byte_in_a_tar_is_reported(build):
    shard = _a_full_shard(build)
    tar = build / "shards" / shard
    data = bytearray(tar.read_bytes())
    with tarfile.open(tar) as archive:
        jpg = next(m for m in archive if m.name.endswith(".3.jpg"))
    data[jpg.offset_data + jpg.size // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    problems = _problems(build)
    assert any(shard in line and "sha256" in line for line in problems), problems


def test_a_deleted_shard_is_reported(build):
    shard = _a_full_shard(build)
    (build / "shards" / shard).unlink()
    problems = _problems(build)
    assert any(shard in line and "missing" in line for line in problems), problems


def test_a_truncated_parquet_part_is_reported(build):
    part = sorted((build / "manifests" / "faces").glob("part-train-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    problems = _problems(build)
    assert any(part.name in line and "unreadable" in line for line in problems), problems


def test_an_edited_sample_json_is_reported_even_with_matching_hashes(build):
    shard = _a_full_shard(build)

    def edit(name, data):
        if name.endswith(".json"):
            record = json.loads(data)
            record["images"][2]["yaw"] = record["images"][2]["yaw"] + 30.0
            record["identity_id"] = "someone-else"
            data = json.dumps(record).encode()
        return name, data

    _rewrite_tar(build / "shards" / shard, edit)
    _reseal(build, shard)
    problems = _problems(build)
    assert any("image 2 yaw" in line for line in problems), problems
    assert any("identity_id 'someone-else'" in line for line in problems), problems
    assert not any("sha256" in line for line in problems), problems


def test_an_unsafe_member_name_and_a_broken_image_are_reported(build):
    shard = _a_full_shard(build)

    def edit(name, data):
        if name.endswith(".0.mask.png"):
            return "../" + name, data
        if name.endswith(".1.jpg"):
            return name, data[: len(data) // 3]
        return name, data

    _rewrite_tar(build / "shards" / shard, edit)
    _reseal(build, shard)
    problems = _problems(build)
    assert any("is not <safe key>.<ext>" in line for line in problems), problems
    assert any(".1.jpg does not decode" in line for line in problems), problems
    assert any("lacks" in line and "0.mask.png" in line for line in problems), problems


def test_a_source_video_in_both_splits_is_reported(build):
    idents = build_folder.read_manifest(build / "manifests", "identities")
    test_video = idents[idents.split == "test"].iloc[0].source_video_ids[0]
    train_part = sorted((build / "manifests" / "identities").glob("part-train-*.parquet"))[0]
    table = pq.read_table(train_part)
    rows = table.to_pylist()
    rows[0]["source_video_ids"] = list(rows[0]["source_video_ids"]) + [test_video]
    pq.write_table(manifests.to_table("identities", rows, dict(table.schema.metadata)),
                   train_part)
    problems = _problems(build)
    assert any(repr(test_video) in line and "both splits" in line for line in problems), problems


def test_the_command_line_exit_codes(build, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "curation.audit.verify", *args, "--no-progress",
                               "--no-images"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)

    assert run("--output", str(build)).returncode == 0
    shard = _a_full_shard(build)
    (build / "shards" / shard).unlink()
    broken = run("--output", str(build))
    assert broken.returncode == 1
    assert any(shard in line for line in broken.stdout.splitlines())
    assert run("--output", str(tmp_path / "nothing")).returncode == 2
