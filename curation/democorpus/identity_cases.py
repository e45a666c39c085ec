"""Identity cases: real people put under the wrong ids, the way real datasets do it.

An identity is a source id, not a person: a YouTube id can hold an interviewer and a guest, a
TalkingHead-1KH video has tubes of several people, and one celebrity appears under several ids
(in VFHQ and on YouTube), so the split - drawn per source video - can put one person in both
train and test. The build's identity checks (`curation.pipeline.identity_check`) must undo each;
a build without them gets every case wrong. Each case is listed in corpus.json["identity_cases"]
with the ids, the people and what the build must do:

- `mixed_youtube_id`: a CelebV-HQ YouTube id with two clips of its person and one clip of
  another (majority / minority): the minority clip must end `identity_mismatch`.
- `mixed_talkinghead_video`: a TalkingHead-1KH video whose tubes show two people (two tubes of
  one, one of the other): the minority tube must end `identity_mismatch`.
- `same_person_two_ids`: a VFHQ identity of a person who is also a TalkingHead-1KH YouTube id,
  its video id chosen so that the two land in different splits at the demo's --test-fraction
  (0.25): the person must end in one split only.
"""

from __future__ import annotations

from dataclasses import replace

from curation.democorpus.layouts import (
    add_vfhq,
    celebvhq_processed_clip,
    talkinghead_tube,
)
from curation.democorpus.plan import SOURCE_CYCLE, CorpusPlan, Identity
from curation.records import Reason

# The demo build's --test-fraction (mfhq/demo.py; a test checks they agree): the VFHQ twin's video
# id is chosen on the other side of it from its YouTube twin.
DEMO_TEST_FRACTION = 0.25

def add_identity_cases(plan: CorpusPlan, identities: list[Identity]) -> None:
    """`identities`: the real people (no variants), in corpus order."""
    by_name = {identity.name: identity for identity in identities}
    celebvhq_id = _first(identities, "celebvhq", skip_first=True)
    th_id = _first(identities, "talkinghead1kh", skip_first=True)
    th_twin = _first(identities, "talkinghead1kh", skip_first=False)
    people = [i for i in identities if i.variant_of is None]
    _mixed_youtube_id(plan, by_name[celebvhq_id], _other(people, by_name[celebvhq_id], 2))
    _mixed_talkinghead(plan, by_name[th_id], _other(people, by_name[th_id], 3))
    _same_person_two_ids(plan, by_name[th_twin], len(identities))


def _first(identities: list[Identity], source: str, skip_first: bool) -> str:
    """The name of the first (or second) identity placed in `source` (plan.SOURCE_CYCLE)."""

    names = [i.name for i in identities
             if SOURCE_CYCLE[i.index % len(SOURCE_CYCLE)] == source]
    return names[1] if skip_first else names[0]


def _other(people: list[Identity], owner: Identity, step: int) -> Identity:
    """A different real person than `owner`, a fixed step away in corpus order."""
    others = [p for p in people if p.person != owner.person]
    return others[(owner.index + step) % len(others)]


def _mixed_youtube_id(plan: CorpusPlan, owner: Identity, guest: Identity) -> None:
    ytb_id = plan.youtube_id("celebvhq:" + owner.name)   # the owner's own id (layouts)
    # a third clip of the same video, showing the guest
    celebvhq_processed_clip(plan, replace(guest, name=owner.name), ytb_id, 2, "mixed",
                            identity_case="mixed_youtube_id", shows=guest.person)
    plan.identity_cases.append({
        "kind": "mixed_youtube_id", "source": "celebvhq", "identity_key": f"yt:{ytb_id}",
        "majority_person": owner.person, "minority_person": guest.person,
        "minority_clips": [f"{ytb_id}_2"], "expected_reason": Reason.IDENTITY_MISMATCH.value,
        "note": "two clips of the majority person, one of another person under one YouTube id"})


def _mixed_talkinghead(plan: CorpusPlan, owner: Identity, guest: Identity) -> None:
    ytid = plan.youtube_id("th:" + owner.name)
    split = "val"
    before = len(plan.clips)
    talkinghead_tube(plan, replace(guest, name=owner.name), ytid, 2, "mixed", split,
                     identity_case="mixed_talkinghead_video", shows=guest.person)
    plan.identity_cases.append({
        "kind": "mixed_talkinghead_video", "source": "talkinghead1kh",
        "identity_key": f"yt:{ytid}", "majority_person": owner.person,
        "minority_person": guest.person,
        "minority_clips": [plan.clips[before]["clip_id"]],
        "expected_reason": Reason.IDENTITY_MISMATCH.value,
        "note": "a TalkingHead-1KH video with two tubes of one person and one of another"})


def _same_person_two_ids(plan: CorpusPlan, twin: Identity, index: int) -> None:
    from curation.pipeline.plan import stable_fraction

    ytid = plan.youtube_id("th:" + twin.name)
    twin_side = stable_fraction(ytid)
    for k in range(1000):
        name = f"{twin.person}_vfhq{k}"
        video_id = plan.youtube_id("vfhq:" + name)
        side = stable_fraction(video_id)
        if (side < DEMO_TEST_FRACTION) != (twin_side < DEMO_TEST_FRACTION):
            break
    else:
        raise RuntimeError("no VFHQ video id lands in the other split")
    identity = Identity(name, twin.person, twin.plate, index, twin.origin)
    plan.identities.append({"name": name, "person": twin.person, "photo": twin.origin,
                            "variant_of": None, "variant": None, "sources": ["vfhq"],
                            "identity_case": "same_person_two_ids"})
    for out in add_vfhq(plan, identity, as_frames=False):
        plan.add_clip(identity, out, source_video_id=video_id, served_by="processed",
                      identity_key=f"vfhq:{video_id}:P0", identity_case="same_person_two_ids")
    plan.identity_cases.append({
        "kind": "same_person_two_ids", "person": twin.person,
        "identity_keys": [f"yt:{ytid}", f"vfhq:{video_id}:P0"],
        "split_hashes": [round(twin_side, 4), round(side, 4)],
        "expected": "the person ends in one split (the other id is removed as "
                    f"{Reason.DUPLICATE_ACROSS_SPLITS.value})",
        "note": "one real person under a TalkingHead-1KH YouTube id and a VFHQ id whose split "
                "hashes fall on different sides of the test fraction"})


def same_split_person(plan: CorpusPlan, candidates: list[Identity], video_id: str) -> Identity:
    """The first candidate whose identity's source videos lie on the same side of the demo's
    test fraction as `video_id` (a new id of that person then shares its split)."""
    from curation.pipeline.plan import stable_fraction

    side = stable_fraction(video_id) < DEMO_TEST_FRACTION
    for identity in candidates:
        videos = {c["source_video_id"] for c in plan.clips if c["identity"] == identity.name}
        if videos and (min(stable_fraction(v) for v in videos) < DEMO_TEST_FRACTION) == side:
            return identity
    return candidates[0]
