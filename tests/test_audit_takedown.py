"""Takedown after the build (`python -m curation.audit.takedown`) and at build time (`--takedown`):
only affected shards and parts are rewritten, `verify` passes, the removed ids occur nowhere
(shards, sample JSON, manifests, plan), the record keeps only salted hashes, and a resume with
the build's own arguments neither brings them back nor rebuilds anything differently."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation import build_folder, manifests, takedowns
from curation.audit import takedown
from curation.audit.verify import VerifyConfig, verify_build
from curation.build_folder import file_sha256
from curation.records import Reason


def _all_text(output: Path) -> str:
    """Every string a reader can get out of the build: tar member names and JSON, every value
    of every manifest table, plan.json and run.json."""
    chunks = []
    for tar in sorted((output / "shards").glob("*/*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive:
                chunks.append(member.name)
                if member.name.endswith(".json"):
                    chunks.append(archive.extractfile(member).read().decode())
    for path in sorted((output / "manifests").rglob("*.parquet")):
        chunks.append(json.dumps(pq.read_table(path).to_pylist(), default=str,
                                 ensure_ascii=False))
    for name in ("plan.json", "run.json"):
        chunks.append((output / "manifests" / name).read_text(encoding="utf-8"))
    return "\n".join(chunks)


def _pick_targets(output: Path) -> dict[str, str]:
    """Ids to take down, one of each kind, from different kept identities, plus a clip that
    failed at enumeration."""
    idents = build_folder.read_manifest(output / "manifests", "identities")
    clips = build_folder.read_manifest(output / "manifests", "clips")
    kept = idents[idents.status == "kept"].sort_values("identity_id")
    yt = kept[kept.identity_id.str.startswith("yt:")]
    by_video, by_identity = yt.iloc[0], kept[kept.identity_id != yt.iloc[0].identity_id].iloc[0]
    rest = kept[~kept.identity_id.isin([by_video.identity_id, by_identity.identity_id])]
    clip_row = clips[clips.identity_id == rest.iloc[0].identity_id].iloc[0]
    failed = clips[(clips.stage == "enumeration") & clips.identity_id.str.len().gt(0)
                   & ~clips.identity_id.isin(kept.identity_id)].iloc[0]
    return {"video": by_video.source_video_ids[0], "identity": by_identity.identity_id,
            "clip": f"{clip_row.source}:{clip_row.clip_id}",
            "enumeration_clip": failed.clip_id,
            "removed_identities": [by_video.identity_id, by_identity.identity_id,
                                   rest.iloc[0].identity_id]}


@pytest.fixture
def taken_down(demo_build, tmp_path):
    output = tmp_path / "build"
    shutil.copytree(demo_build.paths.output, output)
    before = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}
    targets = _pick_targets(output)
    listing = tmp_path / "takedown.txt"
    listing.write_text("# request 2024-001\n" + "\n".join(
        [targets["video"], targets["identity"] + "   # whole identity", targets["clip"],
         targets["enumeration_clip"], "never-existed"]) + "\n")
    assert takedown.main([str(listing), "--output", str(output), "--reason", "court order"]) == 0
    return output, before, targets, listing


def test_takedown_removes_every_trace_and_the_build_still_verifies(taken_down):
    output, before, targets, _ = taken_down
    assert verify_build(VerifyConfig(output=str(output), progress=False)) == []
    text = _all_text(output)
    idents_before = build_folder.read_manifest(Path(str(output)) / "manifests", "identities")
    for identity in targets["removed_identities"]:
        assert identity not in text
        assert identity not in set(idents_before.identity_id)
    for key in ("video", "clip", "enumeration_clip"):
        needle = targets[key].split(":", 1)[-1] if key == "clip" else targets[key]
        assert needle not in text, f"{key} {needle} still present"


def test_takedown_rewrites_only_the_affected_files(taken_down, demo_build):
    output, before, targets, _ = taken_down
    changed = {p.relative_to(output).as_posix() for p, data in before.items()
               if not p.exists() or p.read_bytes() != data}
    changed_shards = {c for c in changed if c.endswith(".tar")}
    affected = {r for r in build_folder.read_manifest(demo_build.manifests_dir, "identities")
                .query("identity_id in @targets['removed_identities']").shard}
    assert changed_shards == {f"shards/{s}" for s in affected}
    for shard in affected:
        part = manifests.part_name(shard)
        for table in manifests.TABLES:
            assert f"manifests/{table}/{part}" in changed
    allowed = changed_shards | {f"manifests/{t}/{manifests.part_name(s)}"
                                for t in manifests.TABLES for s in affected} | {
        "manifests/clips/part-enumeration.parquet", "manifests/shards.parquet",
        "manifests/plan.json",
        # the build's own removals (duplicate_across_splits) are already in the record
        "manifests/takedowns.parquet"}
    assert changed <= allowed, changed - allowed


def test_the_record_holds_salted_hashes_only(taken_down):
    output, _, targets, listing = taken_down
    path = output / "manifests" / takedowns.TAKEDOWNS_FILE
    record = pq.read_table(path).to_pandas()
    # Besides this takedown's rows, the record holds the build's own removals of a person's
    # minority split (duplicate_across_splits, recorded the same salted way).
    assert set(record.reason) - {Reason.DUPLICATE_ACROSS_SPLITS.value} == {"court order"}
    assert set(record.stage) == {"after_build"}
    removed = takedowns.removed_hashes(output / "manifests")
    for key in ("video", "identity", "clip", "enumeration_clip"):
        assert removed.contains(targets[key]), key
    for identity in targets["removed_identities"]:
        assert removed.contains(identity)
    assert not removed.contains("never-existed")
    raw = json.dumps(pq.read_table(path).to_pylist(), default=str)
    for identity in targets["removed_identities"]:
        assert identity not in raw
    # Running it again changes nothing (idempotent).
    sums = {p: file_sha256(p) for p in output.rglob("*") if p.is_file()}
    assert takedown.main([str(listing), "--output", str(output)]) == 0
    assert {p: file_sha256(p) for p in output.rglob("*") if p.is_file()} == sums


@pytest.mark.timeout(600)
def test_a_resume_keeps_them_out_and_a_rebuilt_shard_equals_the_rewritten_one(
        taken_down, demo_build, ray_local):
    from curation.executor.runner import run_build
    from mfhq.demo import demo_config

    output, _, targets, _ = taken_down
    config = demo_config(demo_build.paths, ["--no-progress"])
    config.output = str(output)
    again = run_build(config)
    assert again.ok and again.shards_built == 0
    for identity in targets["removed_identities"]:
        assert identity not in _all_text(output)
    # A rewritten shard that is lost is rebuilt without the removed identities, byte for byte.
    affected = sorted({r for r in build_folder.read_manifest(demo_build.manifests_dir, "identities")
                       .query("identity_id in @targets['removed_identities']").shard})
    victim = output / "shards" / affected[0]
    expected = file_sha256(victim)
    victim.unlink()
    rebuilt = run_build(config)
    assert rebuilt.ok and rebuilt.shards_built == 1
    assert file_sha256(victim) == expected
    assert verify_build(VerifyConfig(output=str(output), progress=False)) == []
    for identity in targets["removed_identities"]:
        assert identity not in _all_text(output)


@pytest.mark.timeout(600)
def test_build_time_takedown_leaves_only_hashes(demo_corpus, ray_local, tmp_path):
    from curation.executor.runner import run_build
    from curation.sources import enumerate_source
    from mfhq.demo import demo_config

    paths, _ = demo_corpus
    records = [r for kind in ("celebvhq", "celebvtext")
               for r in enumerate_source(kind, paths.corpus / kind)]
    ok = sorted((r for r in records if r.ok), key=lambda r: r.identity_id)
    failed = next(r for r in records if not r.ok and r.identity_id)
    whole, partial = ok[0].identity_id, next(r for r in ok if r.identity_id != ok[0].identity_id)
    listing = tmp_path / "takedown.txt"
    listing.write_text(f"{whole.split(':', 1)[1]}\n{partial.clip_id}\n{failed.original_clip_id}\n")
    output = tmp_path / "build"
    config = demo_config(paths, ["--no-progress", "--limit", "2"])
    config.output, config.takedown = str(output), str(listing)
    summary = run_build(config)
    assert summary.ok
    text = _all_text(output)
    for needle in (whole, partial.clip_id, failed.clip_id):
        assert needle not in text, needle
    removed = takedowns.removed_hashes(output / "manifests")
    assert removed.contains(f"{partial.source}:{partial.clip_id}")
    assert removed.contains(f"{failed.source}:{failed.clip_id}")
    assert verify_build(VerifyConfig(output=str(output), progress=False)) == []
