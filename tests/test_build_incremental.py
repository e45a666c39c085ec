"""Builds that grow: a rerun after sources changed builds only what changed.

One small real build (the demo corpus's CelebV-Text source, copied so it can change), then the
source gains an identity and loses a video, and the same command runs again: unchanged shards
keep their bytes, the new and the changed identity go into new shards, the old shard of the
changed one is rewritten without it, `mfhq verify` is clean. A second copy of the first build
is grown by a build that is SIGKILLed right after its rewrite and resumed: same bytes as the
undisturbed rerun. Changed settings still refuse; `--dry-run` writes nothing; a resume takes a
shard as finished from its size (a same-size tar with other bytes is caught by verify only);
`--retry-failed` moves only identities with a transient clip failure.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _reliability_helpers import (
    kill_build,
    manifest_rows,
    shard_hashes,
    start_build,
    temporaries,
    wait_for,
)

# whole builds (and, for clusters, Ray nodes started here): the full suite only
pytestmark = pytest.mark.slow

NEW_YTB = "NEWidentity1"


def _args(corpus: Path, output: Path, *extra: str) -> list[str]:
    from mfhq.demo import DEMO_BUILD_FLAGS

    return ["--source", f"celebvtext={corpus / 'celebvtext'}", "--output", str(output),
            *DEMO_BUILD_FLAGS, "--no-progress", "--num-cpus", "2", *extra]


def _build(corpus: Path, output: Path, *extra: str):
    from curation.executor.runner import run_build
    from curation.pipeline.config import parse_args

    return run_build(parse_args(_args(corpus, output, *extra)))


def _plan(output: Path) -> dict:
    return json.loads((output / "manifests" / "plan.json").read_text())


def _snapshot(output: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(output)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(output.rglob("*")) if p.is_file()}


def _change_sources(corpus: Path) -> tuple[str, str]:
    """A new identity (a copied clip under a new YouTube id) and one video deleted from an
    identity with two clips; returns (new identity, changed identity)."""
    root = corpus / "celebvtext"
    info_path = root / "celebvtext_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    pairs = sorted(k for k in info if k.endswith("_1.mp4") and (root / "videos" / k).exists()
                   and (root / "videos" / k.replace("_1.mp4", "_0.mp4")).exists())
    donor = pairs[0].replace("_1.mp4", "_0.mp4")
    info[f"{NEW_YTB}_0_0.mp4"] = dict(info[donor], ytb_id=NEW_YTB,
                                      meta_video_names=f"{NEW_YTB}_0")
    shutil.copy(root / "videos" / donor, root / "videos" / f"{NEW_YTB}_0_0.mp4")
    info_path.write_text(json.dumps(info, ensure_ascii=False, indent=1), encoding="utf-8")
    (root / "videos" / pairs[-1]).unlink()
    return f"yt:{NEW_YTB}", f"yt:{info[pairs[-1]]['ytb_id']}"


@pytest.fixture(scope="module")
def grown(demo_corpus, ray_local, tmp_path_factory):
    paths, _ = demo_corpus
    work = tmp_path_factory.mktemp("incremental")
    corpus = work / "corpus"
    shutil.copytree(paths.corpus / "celebvtext", corpus / "celebvtext", symlinks=True)
    first = work / "first"
    _build(corpus, first)
    spare = work / "spare"        # the same first build, grown later by a killed rerun
    shutil.copytree(first, spare)
    before = {"hashes": shard_hashes(first), "plan": _plan(first)}
    new_id, changed_id = _change_sources(corpus)

    from curation.executor.runner import main

    snapshot = _snapshot(first)
    dry = work / "dry.txt"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(_args(corpus, first, "--dry-run")) == 0
    dry.write_text(out.getvalue())
    dry_changed_nothing = _snapshot(first) == snapshot

    summary = _build(corpus, first)
    return {"corpus": corpus, "first": first, "spare": spare, "before": before,
            "new": new_id, "changed": changed_id, "summary": summary,
            "dry_output": out.getvalue(), "dry_changed_nothing": dry_changed_nothing}


def test_a_rerun_after_sources_grew_builds_only_new_shards_and_keeps_the_others_bytes(grown):
    from curation.audit.verify import VerifyConfig, verify_build

    first, before = grown["first"], grown["before"]
    plan = _plan(first)["plan"]
    assert plan["generation"] == 1
    (record,) = plan["generations"]
    assert record["new"] == [grown["new"]] and record["changed"] == [grown["changed"]]
    rewritten = set(record["shards_rewritten"])
    after = shard_hashes(first)
    for name, sha in before["hashes"].items():
        assert (after[name] == sha) == (name not in rewritten), name
    added = set(after) - set(before["hashes"])
    assert added == set(record["shards_added"]) and added
    assert grown["summary"].shards_built == len(added)
    assert verify_build(VerifyConfig(output=str(first), progress=False)) == []
    run = json.loads((first / "manifests" / "run.json").read_text())
    assert run["plan_generation"] == 1 and run["increment"]["new"] == [grown["new"]]


def test_the_changed_identity_is_rebuilt_without_its_deleted_video_and_each_clip_is_recorded_once(
        grown):
    from curation import build_folder as bf

    first = grown["first"]
    clips = bf.read_manifest(first / "manifests", "clips")
    keys = list(zip(clips["source"], clips["clip_id"], strict=True))
    assert len(keys) == len(set(keys)), "a clip has two outcomes in the manifests"
    idents = bf.read_manifest(first / "manifests", "identities")
    (row,) = idents[idents["identity_id"] == grown["changed"]].to_dict("records")
    record = _plan(first)["plan"]["generations"][0]
    assert row["shard"] in record["shards_added"]
    mine = clips[clips["identity_id"] == grown["changed"]]
    assert sorted(mine["reason"].fillna("ok")) == ["ok", "video_missing"]
    old_shard = next(s for s, ids in record["shards_rewritten"].items()
                     if grown["changed"] in ids)
    old_part = bf.read_part(bf.BuildFolder(str(first)).part_paths(old_shard)["identities"],
                            "identities")
    assert grown["changed"] not in old_part.column("identity_id").to_pylist()
    assert (idents["identity_id"] == grown["new"]).sum() == 1


def test_a_dry_run_prints_what_a_rerun_would_do_and_changes_nothing(grown):
    assert grown["dry_changed_nothing"]
    text = grown["dry_output"]
    assert "identities new 1, changed 1" in text and "nothing is written" in text
    assert f"new      {grown['new']}" in text and "rewrite" in text


def test_changed_settings_still_refuse_to_grow_the_build(grown):
    from curation.errors import BuildRefused

    with pytest.raises(BuildRefused, match="different settings"):
        _build(grown["corpus"], grown["first"], "--min-face-size", "150")


@pytest.mark.timeout(900)
def test_an_incremental_rerun_killed_after_its_rewrite_resumes_to_the_same_bytes(grown, tmp_path):
    spare, first = grown["spare"], grown["first"]
    record = _plan(first)["plan"]["generations"][0]
    rewritten = sorted(record["shards_rewritten"])[0]
    tar = spare / "shards" / rewritten
    old_size = tar.stat().st_size
    proc = start_build(_args(grown["corpus"], spare), tmp_path / "build.log")
    wait_for(proc, lambda: tar.exists() and tar.stat().st_size != old_size,
             "the rewrite of the old shard")
    kill_build(proc)
    new_tars = [spare / "shards" / s for s in record["shards_added"]]
    assert not all(p.exists() for p in new_tars), "not a mid-rerun moment"
    _build(grown["corpus"], spare)
    assert shard_hashes(spare) == shard_hashes(first)
    assert manifest_rows(spare) == manifest_rows(first)
    assert _plan(spare)["plan"] == _plan(first)["plan"]
    assert not temporaries(spare)


def test_resume_takes_a_same_size_tar_with_other_bytes_as_finished_and_verify_catches_it(
        grown, tmp_path):
    from curation.audit.verify import VerifyConfig, verify_build

    copy = tmp_path / "copy"
    shutil.copytree(grown["first"], copy)
    name = sorted(shard_hashes(copy))[0]
    tar = copy / "shards" / name
    data = bytearray(tar.read_bytes())
    data[600:664] = bytes(b ^ 0xFF for b in data[600:664])
    tar.write_bytes(bytes(data))
    summary = _build(grown["corpus"], copy)
    assert summary.shards_built == 0 and tar.read_bytes() == bytes(data)
    problems = verify_build(VerifyConfig(output=str(copy), progress=False, images=False))
    assert any(name in p for p in problems), problems
    summary = _build(grown["corpus"], copy, "--verify-finished")
    assert summary.shards_built == 1
    assert shard_hashes(copy)[name] == shard_hashes(grown["first"])[name]


def test_retry_failed_analyses_again_only_identities_with_a_transient_clip_failure(
        grown, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation import build_folder as bf
    from curation.records import Reason, Status

    copy = tmp_path / "copy"
    shutil.copytree(grown["first"], copy)
    plan = _plan(copy)["plan"]
    shard = next(s for s in plan["shards"] if s["identities"] and s["generation"] == 0)
    victim = shard["identities"][0]
    # the ledger of one clip says: timed out (written as a builder writes it, metadata kept)
    part = bf.BuildFolder(str(copy)).part_paths(shard["name"])["clips"]
    table = pq.read_table(part)
    rows = table.to_pylist()
    hit = next(r for r in rows if r["identity_id"] == victim)
    hit.update(status=Status.FAILED.value, reason=Reason.VIDEO_TIMEOUT.value)
    bf.write_parquet_atomic(pa.Table.from_pylist(rows, schema=table.schema), part)
    before = shard_hashes(copy)
    summary = _build(grown["corpus"], copy, "--retry-failed")
    grown_plan = _plan(copy)["plan"]
    record = grown_plan["generations"][-1]
    assert record["retried"] == [victim] and not record["new"] and not record["changed"]
    assert summary.shards_built == 1 and list(record["shards_rewritten"]) == [shard["name"]]
    after = shard_hashes(copy)
    assert {n for n in before if before[n] != after[n]} == {shard["name"]}
    clips = bf.read_manifest(copy / "manifests", "clips")
    again = clips[(clips["identity_id"] == victim) & (clips["clip_id"] == hit["clip_id"])]
    assert list(again["reason"].fillna("ok")) == ["ok"]
    # nothing transient left: a second --retry-failed is a plain resume
    assert _build(grown["corpus"], copy, "--retry-failed").shards_built == 0
