"""Build planning: takedown, identity grouping, leak-free splits, stable shards."""

from __future__ import annotations

import random

import pytest

from curation.pipeline.plan import (
    assign_splits,
    plan_from_records,
    read_takedown,
    stable_fraction,
)
from curation.records import ClipRecord, Reason
from curation.sources import group_identities
from mfhq_contract import sample_key


def _clip(source: str, clip_id: str, identity: str, video: str, **kw) -> ClipRecord:
    return ClipRecord(source=source, clip_id=clip_id, original_clip_id=clip_id,
                      identity_id=identity, source_video_id=video,
                      video_path=f"/data/{source}/{clip_id}.mp4", **kw)


def _corpus(n: int = 60) -> list[ClipRecord]:
    clips = []
    for i in range(n):
        vid = f"vid{i:03d}"
        clips.append(_clip("celebvhq", f"{vid}_0", f"yt:{vid}", vid))
        clips.append(_clip("celebvtext", f"{vid}_1_0", f"yt:{vid}", vid))
    return clips


def _plan(records, **kw):
    args = dict(takedown=set(), test_fraction=0.3, identities_per_shard=4, limit=None,
                group_fn=group_identities)
    args.update(kw)
    return plan_from_records(records, **args)


def test_stable_fraction_is_sha1_based_and_uniformish():
    assert stable_fraction("abc") == stable_fraction("abc")
    values = [stable_fraction(f"v{i}") for i in range(2000)]
    assert all(0 <= v < 1 for v in values)
    assert 0.4 < sum(v < 0.5 for v in values) / len(values) < 0.6


def test_identities_sharing_a_video_share_a_split():
    # A VFHQ video with two people, one of whom also appears in a chain of other videos.
    videos = {
        "vfhq:v1:P0": {"v1"}, "vfhq:v1:P1": {"v1", "v2"}, "folder:x": {"v2", "v3"},
        "yt:v3": {"v3"}, "yt:lonely": {"lonely"},
    }
    for fraction in [i / 20 for i in range(21)]:
        splits = assign_splits(videos, fraction)
        linked = {splits[i] for i in ("vfhq:v1:P0", "vfhq:v1:P1", "folder:x", "yt:v3")}
        assert len(linked) == 1
        smallest = min(stable_fraction(v) for v in ("v1", "v2", "v3"))
        assert linked == {"test" if smallest < fraction else "train"}


def test_no_source_video_in_both_splits_across_datasets():
    records = _corpus(80)
    # Cross-links: a folder identity reusing two YouTube videos ties three identities together.
    records.append(_clip("folder", "x/a.mp4", "folder:x", "vid001"))
    records.append(_clip("folder", "x/b.mp4", "folder:x", "vid002"))
    plan = _plan(records)
    split_of_video: dict[str, set[str]] = {}
    for ident in plan.identities:
        for clip in ident.clips:
            split_of_video.setdefault(clip.source_video_id, set()).add(ident.split)
    assert all(len(s) == 1 for s in split_of_video.values())
    splits = {i.identity_id: i.split for i in plan.identities}
    assert splits["folder:x"] == splits["yt:vid001"] == splits["yt:vid002"]
    assert {"train", "test"} == set(splits.values())


def test_shards_are_stable_sorted_and_independent_of_input_order():
    records = _corpus(30)
    a = _plan(records)
    shuffled = list(records)
    random.Random(5).shuffle(shuffled)
    b = _plan(shuffled)
    assert [(s.name, [i.identity_id for i in s.identities]) for s in a.shards] == \
           [(s.name, [i.identity_id for i in s.identities]) for s in b.shards]
    assert a.fingerprint() == b.fingerprint()
    for shard in a.shards:
        ids = [i.identity_id for i in shard.identities]
        assert ids == sorted(ids) and 1 <= len(ids) <= 4
        assert shard.name == f"{shard.split}/mfhq-{shard.split}-{shard.index:06d}.tar"
        assert all(i.key == sample_key(i.identity_id) for i in shard.identities)
    for split in ("train", "test"):
        indices = [s.index for s in a.shards if s.split == split]
        assert indices == list(range(len(indices)))


def test_limit_takes_the_first_identities_by_id():
    plan = _plan(_corpus(30), limit=5)
    ids = sorted(i.identity_id for i in plan.identities)
    assert ids == [f"yt:vid{i:03d}" for i in range(5)]
    assert plan.n_identities_total == 30


def test_takedown_removes_clips_by_any_id_with_a_reason(tmp_path):
    listing = tmp_path / "takedown.txt"
    listing.write_text("# owner requests\nvid003  # whole video\nyt:vid004\n"
                       "celebvtext:vid005_1_0\n\n")
    takedown = read_takedown(listing)
    assert takedown == {"vid003", "yt:vid004", "celebvtext:vid005_1_0"}
    plan = _plan(_corpus(10), takedown=takedown)
    ids = {i.identity_id for i in plan.identities}
    assert "yt:vid003" not in ids and "yt:vid004" not in ids
    vid5 = next(i for i in plan.identities if i.identity_id == "yt:vid005")
    assert [c.source for c in vid5.clips] == ["celebvhq"]
    removed = [c for c in plan.rejected_clips if c.reason == Reason.TAKEDOWN]
    assert len(removed) == 5 and all(c.status == "skipped" for c in removed)


def test_failed_records_are_kept_as_rejected_not_planned():
    records = _corpus(3) + [
        _clip("vfhq", "bad", "", "", status="failed", reason=Reason.METADATA_UNREADABLE.value),
        _clip("celebvhq", "noid", "", "vidX"),   # ok but without identity: rejected with a reason
    ]
    plan = _plan(records)
    reasons = sorted(c.reason for c in plan.rejected_clips)
    assert reasons == [Reason.METADATA_ENTRY_INVALID, Reason.METADATA_UNREADABLE]
    assert len(plan.identities) == 3
    assert plan.n_clips == len(records)


@pytest.mark.parametrize("per_shard", [1, 3, 100])
def test_every_identity_is_in_exactly_one_shard(per_shard):
    plan = _plan(_corpus(25), identities_per_shard=per_shard)
    ids = [i.identity_id for s in plan.shards for i in s.identities]
    assert len(ids) == len(set(ids)) == 25


# --- incremental reruns (curation.pipeline.incremental.grow) --------------------------------------

def _recorded(plan) -> dict:
    import json

    return json.loads(json.dumps(plan.to_json()))


def test_a_rerun_on_unchanged_sources_gives_back_the_recorded_plan_unchanged():
    from curation.pipeline.incremental import grow

    first = _plan(_corpus(20))
    again, inc = grow(_plan(_corpus(20)), _recorded(first), 4)
    assert inc.empty and again.generation == 0
    assert again.to_json() == first.to_json()


def test_new_changed_and_gone_identities_leave_unchanged_ones_in_their_shards():
    from curation.pipeline.incremental import grow

    records = _corpus(20)
    first = _plan(records)
    recorded = _recorded(first)
    changed_id, gone_id = first.shards[0].identities[0].identity_id, "yt:vid007"
    grown = [r for r in records if r.identity_id != gone_id]
    grown = [r for r in grown if not (r.identity_id == changed_id and r.source == "celebvtext")]
    grown += [_clip("celebvhq", f"new{i}_0", f"yt:new{i}", f"new{i}") for i in range(5)]
    plan, inc = grow(_plan(grown), recorded, 4)
    assert inc.generation == 1 and plan.generation == 1
    assert inc.new == [f"yt:new{i}" for i in range(5)]
    assert inc.changed == [changed_id] and inc.gone == [gone_id]
    old_names = {s["name"] for s in recorded["shards"]}
    by_name = {s.name: s for s in plan.shards}
    # every old shard keeps its name and its remaining identities in their order
    for shard in recorded["shards"]:
        stays = [i for i in shard["identities"] if i not in (changed_id, gone_id)]
        assert [i.identity_id for i in by_name[shard["name"]].identities] == stays
        assert (shard["name"] in inc.shards_rewritten) == (len(stays) < len(shard["identities"]))
    added = [s for s in plan.shards if s.name not in old_names]
    assert [s.name for s in added] == inc.shards_added and all(s.generation == 1 for s in added)
    assert sorted(i.identity_id for s in added for i in s.identities) == sorted(
        inc.new + inc.changed)
    # new shards are numbered after the highest index of their split
    for spec in added:
        top = max(int(n.rsplit("-", 1)[1][:6]) for n in old_names if n.startswith(spec.split))
        assert spec.index > top
    # splits of built identities never change
    old_split = {i: s["split"] for s in recorded["shards"] for i in s["identities"]}
    assert all(i.split == old_split[i.identity_id] for s in plan.shards for i in s.identities
               if i.identity_id in old_split)
    assert plan.to_json()["generations"] == [inc.to_json()]


def test_a_new_identity_sharing_a_video_with_a_built_one_takes_its_split():
    from curation.pipeline.incremental import grow

    records = _corpus(30)
    first = _plan(records, test_fraction=0.5)
    recorded = _recorded(first)
    splits = {i.identity_id: i.split for i in first.identities}
    # a VFHQ person filmed in a video that is already built, in each split
    for split in ("train", "test"):
        vid = next(i for i, s in splits.items() if s == split).removeprefix("yt:")
        more = records + [_clip("vfhq", f"Clip+{vid}+P0+C0+F0-9", f"vfhq:{vid}:P0", vid)]
        plan, inc = grow(_plan(more, test_fraction=0.5), recorded, 4)
        assert inc.new == [f"vfhq:{vid}:P0"]
        (placed,) = [i for i in plan.identities if i.identity_id == f"vfhq:{vid}:P0"]
        assert placed.split == split


def test_retry_moves_only_the_listed_identities_into_a_new_shard():
    from curation.pipeline.incremental import grow

    first = _plan(_corpus(12))
    target = first.shards[1].identities[1].identity_id
    plan, inc = grow(_plan(_corpus(12)), _recorded(first), 4, retry={target})
    assert inc.retried == [target] and not inc.new and not inc.changed and not inc.gone
    assert inc.shards_rewritten == {first.shards[1].name: [target]}
    assert [[i.identity_id for i in s.identities] for s in plan.shards
            if s.name in inc.shards_added] == [[target]]
