"""The full build on the demo corpus with bad inputs (issue 4 acceptance), on a 2-CPU local Ray.

The build itself runs once in the `demo_build` session fixture (tests/conftest.py).
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from curation import build_folder
from curation.build_folder import file_sha256
from curation.errors import BuildRefused
from curation.executor.runner import format_summary, run_build
from curation.records import safe_id
from mfhq.demo import run_demo_build
from mfhq_contract import FORMAT_VERSION, image_ext, mask_ext

pytestmark = pytest.mark.slow


def _norm(clip_id: str) -> str:
    return clip_id[:-4] if clip_id.endswith(".mp4") else clip_id


def test_demo_build_succeeds_and_keeps_identities(demo_build):
    summary = demo_build.summary
    assert summary.ok, format_summary(summary)
    assert summary.shards_failed == []
    counts = summary.counts
    assert counts["identities_kept"] >= 5
    assert set(counts["identities_kept_by_split"]) == {"train", "test"}
    run = json.loads((demo_build.manifests_dir / "run.json").read_text())
    assert run["config_hash"] == summary.config_hash
    assert run["models"]["quality"]["model"] == "piqe"
    assert run["packages"]["ray"] and run["counts"]["identities_kept"] == counts["identities_kept"]


def test_shards_hold_8_decodable_crops_and_masks_matching_the_manifests(demo_build):
    faces = build_folder.read_manifest(demo_build.manifests_dir, "faces")
    idents = build_folder.read_manifest(demo_build.manifests_dir, "identities").set_index("key")
    shards = build_folder.read_manifest(demo_build.manifests_dir, "shards")
    assert sorted(shards["path"]) == sorted(demo_build.shard_sha256)
    n_samples = 0
    for row in shards.itertuples():
        path = demo_build.shards_dir / row.path
        assert file_sha256(path) == row.sha256 and path.stat().st_size == row.bytes
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert len(names) == 17 * row.samples
            for member in tar.getmembers():
                assert member.mtime == 0 and member.uid == 0 and member.uname == ""
        for sample in wds.WebDataset(str(path), shardshuffle=False):
            n_samples += 1
            record = json.loads(sample["json"])
            key = sample["__key__"]
            ident = idents.loc[key]
            assert record["identity_id"] == ident["identity_id"]
            assert record["split"] == ident["split"] == row.split
            assert record["format_version"] == FORMAT_VERSION
            assert ident["status"] == "kept" and ident["shard"] == row.path
            chosen = faces[(faces.identity_id == record["identity_id"]) & faces.selected]
            chosen = chosen.sort_values("image_index")
            assert chosen["image_index"].tolist() == list(range(8))
            for i, image in enumerate(record["images"]):
                crop = np.asarray(Image.open(io.BytesIO(sample[image_ext(i)])))
                mask = np.asarray(Image.open(io.BytesIO(sample[mask_ext(i)])))
                assert crop.shape == (256, 256, 3) and mask.shape == (256, 256)
                assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255
                face = chosen.iloc[i]
                assert image["clip_id"] == face["clip_id"]
                assert image["frame_index"] == face["frame_index"]
                assert image["pose_cluster"] == face["pose_cluster"]
                assert image["quality"] == pytest.approx(face["quality"], abs=1e-4)
                assert image["yaw"] == pytest.approx(face["yaw"], abs=1e-4)
    assert n_samples == int(shards["samples"].sum()) == demo_build.summary.counts[
        "identities_kept"]


def test_selected_faces_span_8_clusters_with_median_quality_at_least_candidates(demo_build):
    faces = build_folder.read_manifest(demo_build.manifests_dir, "faces")
    idents = build_folder.read_manifest(demo_build.manifests_dir, "identities")
    kept = idents[idents.status == "kept"]
    assert len(kept)
    for ident in kept.itertuples():
        own = faces[faces.identity_id == ident.identity_id]
        chosen = own[own.selected]
        assert len(chosen) == 8
        assert chosen["pose_cluster"].nunique() == 8
        scored = own["quality"].dropna()
        assert chosen["quality"].median() >= scored.median()
        # The quality model ran only on pre-ranked faces, not on every candidate.
        candidates = own[own.pose_cluster.notna()]
        assert len(scored) <= 2 * candidates["pose_cluster"].nunique()
        assert (own.loc[own.quality.isna() & own.pose_cluster.notna(), "reason"]
                == "not_scored").all()
    dropped = idents[idents.status == "dropped"]
    assert dropped["reason"].isin(["too_few_faces", "too_few_pose_clusters"]).all()


def test_every_face_and_clip_has_a_status_or_reason(demo_build):
    faces = build_folder.read_manifest(demo_build.manifests_dir, "faces")
    clips = build_folder.read_manifest(demo_build.manifests_dir, "clips")
    assert (faces.selected | faces.reason.notna()).all()
    assert not (faces.selected & faces.reason.notna()).any()
    assert clips["status"].isin(["ok", "skipped", "failed"]).all()
    assert clips.loc[clips.status != "ok", "reason"].notna().all()
    idents = build_folder.read_manifest(demo_build.manifests_dir, "identities")
    # Clips of dropped identities are in the manifest too.
    for ident in idents[idents.status == "dropped"].itertuples():
        assert (clips.identity_id == ident.identity_id).sum() == ident.n_clips


def _clip_rows_for(bad: dict, clips):
    path = bad.get("path")
    if path:
        rows = clips[clips.video_path.fillna("").str.endswith(path)]
        if len(rows):
            return rows
    wanted = _norm(bad["clip_id"])
    return clips[(clips.source == bad["source"])
                 & (clips.original_clip_id.map(_norm).eq(wanted) | clips.clip_id.eq(wanted))]


def test_every_bad_input_is_a_manifest_row_with_its_reason(demo_build):
    clips = build_folder.read_manifest(demo_build.manifests_dir, "clips")
    faces = build_folder.read_manifest(demo_build.manifests_dir, "faces")
    bad_inputs = demo_build.corpus["bad_inputs"]
    assert bad_inputs
    problems = []
    for bad in bad_inputs:
        rows = _clip_rows_for(bad, clips)
        if bad["expected_status"] == "ok":
            # Face-level problems: the clip was analysed; whether it still has usable faces
            # decides its status (a clip whose only face is tiny is skipped face_too_small).
            if bad["level"] != "face" and not (rows.status == "ok").any():
                problems.append(f"{bad['kind']}: no usable clip row")
            if bad.get("reason") and bad["level"] == "face":
                clip_faces = faces[faces.clip_id.isin(rows.clip_id)]
                if not (clip_faces.reason == bad["reason"]).any():
                    problems.append(f"{bad['kind']}: no face with {bad['reason']}")
            continue
        if not len(rows):
            # Entries that have no clip id of their own (a broken line, a bad metadata file).
            rows = clips[(clips.source == bad["source"]) & (clips.reason == bad["reason"])]
        if not len(rows) or (rows.status == "ok").all():
            problems.append(f"{bad['kind']} ({bad['source']} {bad['clip_id']}): no failed row")
        elif bad["reason"] not in set(rows.reason):
            problems.append(f"{bad['kind']} ({bad['source']} {bad['clip_id']}): reason "
                            f"{sorted(set(rows.reason.dropna()))}, corpus expects {bad['reason']}")
    assert not problems, "\n".join(problems)


def test_rerun_changes_nothing_and_a_lost_shard_is_rebuilt_identically(demo_build):
    before = dict(demo_build.shard_sha256)
    again = run_demo_build(demo_build.paths, ["--no-progress"])
    assert again.ok and again.shards_built == 0
    assert again.shards_skipped == again.shards_total == len(before)
    after = {k: file_sha256(demo_build.shards_dir / k) for k in before}
    assert after == before
    # Kill-and-resume: a shard whose tar never got renamed into place is rebuilt, byte for byte.
    victim = next(k for k in sorted(before) if "train" in k)
    (demo_build.shards_dir / victim).unlink()
    resumed = run_demo_build(demo_build.paths, ["--no-progress"])
    assert resumed.ok and resumed.shards_built == 1
    assert file_sha256(demo_build.shards_dir / victim) == before[victim]


def test_a_different_config_into_the_same_output_is_refused(demo_build):
    from mfhq.demo import demo_config

    config = demo_config(demo_build.paths, ["--no-progress", "--seed", "7"])
    with pytest.raises(BuildRefused, match="--overwrite"):
        run_build(config)
    assert {k: file_sha256(demo_build.shards_dir / k) for k in demo_build.shard_sha256} == \
        demo_build.shard_sha256


def test_every_selected_face_is_the_clips_own_person(demo_build):
    """Against the corpus's per-frame ground truth: each selected face lies on the target
    person's face, never on a bystander's (two people under one identity would poison it)."""
    faces = build_folder.read_manifest(demo_build.manifests_dir, "faces")
    clips = build_folder.read_manifest(demo_build.manifests_dir, "clips")
    original = {(r.source, r.clip_id): r.original_clip_id for r in clips.itertuples()
                if not r.is_raw}
    truth_file = {(c["source"], c["clip_id"]): c["groundtruth"] for c in demo_build.corpus["clips"]
                  if c.get("groundtruth") and c.get("served_by", "processed") == "processed"}
    for bad in demo_build.corpus["bad_inputs"]:
        if bad.get("kind") == "two_people_clip":
            truth_file.setdefault((bad["source"], bad["clip_id"]),
                                  f"_groundtruth/{bad['source']}/{safe_id(bad['clip_id'])}.json")
    selected = faces[faces["selected"]]
    checked = 0
    truths: dict[str, dict] = {}
    for face in selected.itertuples():
        key = (face.source, original.get((face.source, face.clip_id)))
        if key not in truth_file:
            continue
        path = demo_build.paths.corpus / truth_file[key]
        if not path.exists():
            continue
        truth = truths.setdefault(str(path), json.loads(path.read_text(encoding="utf-8")))
        frame = truth["frames"][int(face.frame_index)]
        x0, y0, x1, y1 = frame["face_box"]
        margin = 0.15 * (x1 - x0)
        cx, cy = (face.bbox[0] + face.bbox[2]) / 2, (face.bbox[1] + face.bbox[3]) / 2
        assert x0 - margin <= cx <= x1 + margin and y0 - margin <= cy <= y1 + margin, (
            f"{face.identity_id}: selected face of {face.clip_id} frame {face.frame_index} at "
            f"({cx:.0f}, {cy:.0f}) is not the clip's person (truth box {frame['face_box']})")
        checked += 1
    assert checked >= 0.6 * len(selected), f"only {checked} of {len(selected)} faces checked"
