"""The resume check at the shard level, on finished builds written through the real writers
(`bench/resume_scale.write_finished_build`): finished is decided from sizes and the parts'
agreement without reading a tar; a rewrite killed at any point is finished by the next check."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from resume_scale import write_finished_build  # noqa: E402

from curation import build_folder as bf  # noqa: E402
from curation import manifests  # noqa: E402
from curation.pipeline.output import ShardState, resume_check, shard_state  # noqa: E402
from curation.pipeline.removal import rewrite_without  # noqa: E402


@pytest.fixture
def built(tmp_path):
    return write_finished_build(tmp_path / "out", n_shards=3, per_shard=3, shard_bytes=64 << 10)


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(2048, 2048 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_part_records_the_size_of_its_tar(built):
    folder, plan = built
    for spec in plan.shards:
        size = folder.tar_path(spec.name).stat().st_size
        for part in folder.part_paths(spec.name).values():
            assert manifests.part_shard_record(part) == (bf.file_sha256(folder.tar_path(spec.name)),
                                                         size)


def test_a_tar_with_flipped_bytes_of_the_same_size_is_finished_unless_verify_finished(built):
    folder, plan = built
    spec = plan.shards[1]
    tar = folder.tar_path(spec.name)
    _flip_bytes(tar)
    assert shard_state(folder, spec) is ShardState.FINISHED
    assert resume_check(folder, plan).todo == []
    assert shard_state(folder, spec, full_hash=True) is ShardState.UNFINISHED
    assert [s.name for s in resume_check(folder, plan, full_hash=True).todo] == [spec.name]


def test_a_tar_of_another_size_or_missing_parts_is_not_finished(built):
    folder, plan = built
    first, second = plan.shards[0], plan.shards[1]
    with open(folder.tar_path(first.name), "r+b") as f:
        f.truncate(4096)     # not a rewrite we can finish: the kept samples are gone
    folder.part_paths(second.name)["faces"].unlink()
    assert shard_state(folder, first) is ShardState.NEEDS_REPAIR
    assert shard_state(folder, second) is ShardState.UNFINISHED
    assert [s.name for s in resume_check(folder, plan).todo] == [first.name, second.name]


def _without_first_identity(plan, spec):
    smaller = dataclasses.replace(spec, identities=spec.identities[1:])
    return dataclasses.replace(plan, shards=[smaller if s is spec else s for s in plan.shards])


def test_a_shard_holding_an_identity_the_plan_took_out_is_rewritten_without_it(built):
    folder, plan = built
    spec = plan.shards[0]
    gone = spec.identities[0]
    smaller = _without_first_identity(plan, spec)
    other_bytes = {s.name: folder.tar_path(s.name).read_bytes() for s in plan.shards[1:]}
    check = resume_check(folder, smaller)
    assert check.todo == [] and [(r.shard, r.identities) for r in check.rewrites] == [
        (spec.name, [gone.identity_id])]
    assert gone.key not in bf.read_samples(folder.tar_path(spec.name))
    ids = bf.read_part(folder.part_paths(spec.name)["clips"], "clips").column("identity_id")
    assert gone.identity_id not in ids.to_pylist()
    assert {s: folder.tar_path(s).read_bytes() for s in other_bytes} == other_bytes
    assert resume_check(folder, smaller).rewrites == []      # done once


@pytest.mark.parametrize("killed_after", ["parts", "clips_part"])
def test_a_rewrite_killed_midway_is_finished_by_the_next_check_to_the_same_bytes(
        built, tmp_path, killed_after):
    folder, plan = built
    spec = plan.shards[2]
    smaller = _without_first_identity(plan, spec)
    tar, parts = folder.tar_path(spec.name), folder.part_paths(spec.name)
    saved = tmp_path / "saved"
    saved.mkdir()
    shutil.copy(tar, saved / "tar")
    for table, part in parts.items():
        shutil.copy(part, saved / table)
    # the undisturbed rewrite
    planned = {i.identity_id for i in smaller.shards[2].identities}
    rewrite_without(folder, spec.name, lambda rows: {r["identity_id"] for r in
                                                     rows["identities"]} - planned)
    undisturbed = {"tar": tar.read_bytes(), **{t: p.read_bytes() for t, p in parts.items()}}
    # what a kill leaves: the old tar under its name, and all parts (or only the first) new
    shutil.copy(saved / "tar", tar)
    if killed_after == "clips_part":
        shutil.copy(saved / "faces", parts["faces"])
        shutil.copy(saved / "identities", parts["identities"])
    assert shard_state(folder, smaller.shards[2]) is ShardState.NEEDS_REPAIR
    check = resume_check(folder, smaller)
    assert check.todo == []
    assert {"tar": tar.read_bytes(), **{t: p.read_bytes() for t, p in parts.items()}} == \
        undisturbed
