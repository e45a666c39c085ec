"""Inputs that a robust pipeline must turn into records with reason codes, never crashes.

Each one is listed in corpus.json["bad_inputs"] with its source, the clip id as the metadata or
file name gives it, and the `curation.records.Reason` it should yield (None: it must come out
ok despite its hostile name). `level` says where the reason shows: "clip" (the clips manifest),
"face" (the faces manifest: the clip itself is fine), or "metadata_file" (a whole file).
"""

from __future__ import annotations

from curation.democorpus.layouts import (
    add_celebvtext,
    add_vfhq,
    celebvhq_entry,
    raw_canvas,
    tube_clip_name,
    tube_line,
)
from curation.democorpus.plan import FPS, CorpusPlan, Identity, clip_header, even
from curation.democorpus.render import Actor, Output, Scene, Segment
from curation.records import Reason

SHORT = 25                 # frames of a bad clip that must exist but need no pose variety
TINY_FACE_FRACTION = 0.12  # ~60 px in a 512 frame: far below any useful --min-face-size
TRUNCATED_KEEP = 0.4


HOSTILE_YTB_ID = "Élodie-采访"


def add_bad_inputs(plan: CorpusPlan, folder_owner: Identity, other: Identity,
                   th_raw_chunk: str | None, hostile_person: Identity | None = None) -> None:
    """folder_owner: the folder identity whose sub-folder gets the text file and the
    two-people clip (it is the target there); other: a different person, whose face the other
    bad clips reuse; hostile_person: the person of the usable identity with hostile names
    (default `other`): one whose own identity is in the same split, so that the build's
    cross-split duplicate check keeps both (`identity_cases` has the deliberate case)."""
    folder_identity = folder_owner.name
    _empty_and_text(plan, folder_identity)
    _truncated(plan, other)
    _no_face(plan)
    _two_people(plan, folder_owner, other, folder_identity)
    _tiny_face(plan, other)
    _missing_videos(plan)
    _malformed_metadata(plan, th_raw_chunk)
    _hostile_names(plan, hostile_person or other)


def _bad(plan: CorpusPlan, source: str, clip_id: str, path: str | None, kind: str,
         reason: Reason | None, level: str = "clip", note: str = "") -> None:
    plan.bad_inputs.append({"source": source, "clip_id": clip_id, "path": plan.rel(path),
                            "kind": kind, "reason": None if reason is None else str(reason),
                            "level": level, "expected_status": "ok" if reason is None
                            or level == "face" else "not_ok", "note": note})


def _empty_and_text(plan: CorpusPlan, folder_identity: str) -> None:
    ytb_id = plan.youtube_id("bad:empty")
    key = f"{ytb_id}_0_0.mp4"
    path = plan.path("celebvtext", "videos", key)
    plan.raw_files[plan.rel(path)] = b""
    plan.celebvtext[key] = _celebvtext_entry(plan, ytb_id, key)
    _bad(plan, "celebvtext", key, path, "zero_byte_mp4", Reason.VIDEO_EMPTY)

    path = plan.path("folder", folder_identity, "notes.mp4")
    plan.raw_files[plan.rel(path)] = (
        b"These are notes about the interview, not a video.\n"
        b"A file with an .mp4 name must still become a record with a reason code.\n")
    _bad(plan, "folder", f"{folder_identity}/notes", path, "text_file_named_mp4",
         Reason.VIDEO_UNREADABLE, note="the identity's other clips stay usable")


def _celebvtext_entry(plan: CorpusPlan, ytb_id: str, key: str) -> dict:
    from curation.democorpus.layouts import celebvtext_entry

    return celebvtext_entry(plan, key[: -len("_0.mp4")], ytb_id, key)


def _truncated(plan: CorpusPlan, person: Identity) -> None:
    """A real clip cut to 40 % of its bytes; the mp4 index (moov) is at the end, so it is lost."""
    identity = Identity("bad_truncated", person.person, person.plate, person.index, person.origin)
    out = add_vfhq(plan, identity, as_frames=False, clips=1)[0]
    plan.truncate[plan.rel(out.path)] = TRUNCATED_KEEP
    _bad(plan, "vfhq", out.header["clip_id"], out.path, "truncated_mp4", Reason.VIDEO_UNREADABLE,
         note="cut to 40 % of its bytes; the moov atom at the end is gone")


def _no_face(plan: CorpusPlan) -> None:
    """A TalkingHead tube whose cropped clip shows only a room."""
    ytid = plan.youtube_id("bad:noface")
    width, height = raw_canvas(plan)
    video_name = f"{ytid}_0000"
    box = (0, 0, plan.size, plan.size)
    name = tube_clip_name(video_name, 0, SHORT - 1, box)
    path = plan.path("talkinghead1kh", "cropped_clips", name + ".mp4")
    seed = plan.number("scene:noface", 0, 2**31)
    header = {"source": "talkinghead1kh", "clip_id": name, "identity": None, "person": None}
    plan.scenes.append(Scene(plan.size, plan.size, SHORT, FPS, seed, (), (
        Output(path, "mp4", 0, SHORT, box, plan.groundtruth_path("talkinghead1kh", name),
               header),)))
    plan.th_tubes["train"].append(tube_line(video_name, height, width, 0, SHORT - 1, box))
    plan.th_video_ids["train"].append(ytid)
    _bad(plan, "talkinghead1kh", name, path, "no_face_clip", Reason.NO_FACE)


def _two_people(plan: CorpusPlan, target: Identity, other: Identity, folder_identity: str) -> None:
    """The folder identity's person (left, larger) with another person beside them."""
    s = plan.size
    seed = plan.number("scene:two", 0, 2**31)
    clip_id = f"{folder_identity}/two_people"
    path = plan.path("folder", folder_identity, "two_people.mp4")
    # The target must be the larger face as the detector sees it, not just the larger photo:
    # a turned head gets a smaller box than a frontal bystander of the same photo size, and
    # the analyzer refuses hint-less clips whose two people are of similar size
    # (Reason.AMBIGUOUS_TARGET) rather than guess.
    actors = (Actor(target.plate, (0.3 * s, 0.45 * s), 0.46 * s,
                    (Segment(0, SHORT * 2, "idle", seed),), target=True),
              Actor(other.plate, (0.8 * s, 0.55 * s), 0.24 * s,
                    (Segment(0, SHORT * 2, "idle", seed + 1),), target=False))
    header = clip_header("folder", clip_id, target, other_person=other.person)
    # not degraded: this clip tests who is who, not quality
    plan.scenes.append(Scene(s, s, SHORT * 2, FPS, seed, actors, (
        Output(path, "mp4", 0, SHORT * 2, (0, 0, s, s), plan.groundtruth_path("folder", clip_id),
               header),), degrade=False))
    _bad(plan, "folder", clip_id, path, "two_people_clip", Reason.NOT_TARGET_PERSON,
         level="face", note=f"target {target.person} is the larger face on the left; the other "
                            f"face ({other.person}) must be rejected, the clip itself is usable")


def _tiny_face(plan: CorpusPlan, person: Identity) -> None:
    identity = Identity("bad_tiny_face", person.person, person.plate, person.index,
                        person.origin)
    out = add_vfhq(plan, identity, as_frames=False, face_fraction=TINY_FACE_FRACTION, clips=1)[0]
    _bad(plan, "vfhq", out.header["clip_id"], out.path, "tiny_face_clip", Reason.FACE_TOO_SMALL,
         level="face", note=f"face about {int(TINY_FACE_FRACTION * plan.size)} px wide; its "
                            "identity has no other clip, so it is dropped (too_few_faces)")


def _missing_videos(plan: CorpusPlan) -> None:
    ytb_id = plan.youtube_id("bad:missing-hq")
    key = f"{ytb_id}_0"
    plan.celebvhq[key] = celebvhq_entry(plan, ytb_id, 12.0, 15.52,
                                        {"top": 0.1, "bottom": 0.8, "left": 0.3, "right": 0.7},
                                        key)
    _bad(plan, "celebvhq", key, None, "metadata_without_video", Reason.VIDEO_MISSING,
         note="neither processed clip nor raw video exists")

    video_id = plan.youtube_id("bad:missing-vfhq")
    name = f"Clip+{video_id}+P0+C0+F100-190"
    plan.vfhq_meta[name + ".txt"] = (f"H {even(1.5 * plan.size)}\nW {even(2.5 * plan.size)}\n"
                                     f"FPS {FPS}\nCROP 0 0 {plan.size} {plan.size}\n")
    _bad(plan, "vfhq", name, None, "metadata_without_video", Reason.VIDEO_MISSING)

    ytid = plan.youtube_id("bad:missing-th")
    width, height = raw_canvas(plan)
    box = (0, 0, plan.size, plan.size)
    plan.th_tubes["val"].append(tube_line(f"{ytid}_0003", height, width, 10, 97, box))
    plan.th_video_ids["val"].append(ytid)
    _bad(plan, "talkinghead1kh", tube_clip_name(f"{ytid}_0003", 10, 97, box), None,
         "tube_without_video", Reason.VIDEO_MISSING, note="neither cropped clip nor raw chunk")


def _malformed_metadata(plan: CorpusPlan, th_raw_chunk: str | None) -> None:
    video_id = plan.youtube_id("bad:malformed-vfhq")
    name = f"Clip+{video_id}+P0+C0+F10-50"
    plan.vfhq_meta[name + ".txt"] = "this is not VFHQ metadata\n\x00\x01\x02 {]\n"
    _bad(plan, "vfhq", name, plan.path("vfhq", "meta_info", name + ".txt"),
         "malformed_metadata_file", Reason.METADATA_UNREADABLE, level="metadata_file",
         note="no H/W/FPS/CROP header")

    line = "broken-tube-line-without-fields"
    plan.th_tubes["train"].append(line)
    _bad(plan, "talkinghead1kh", line, None, "malformed_tube_line",
         Reason.METADATA_ENTRY_INVALID, note="one line of train_video_tubes.txt")

    ytb_id = plan.youtube_id("bad:entry-hq")
    key = f"{ytb_id}_0"
    plan.celebvhq[key] = {"ytb_id": ytb_id, "version": "v0.1"}
    _bad(plan, "celebvhq", key, None, "entry_without_duration_and_bbox",
         Reason.METADATA_ENTRY_INVALID)

    if th_raw_chunk:
        width, height = raw_canvas(plan)
        box = (width + 40, height + 40, width + 40 + plan.size, height + 40 + plan.size)
        plan.th_tubes["train"].append(tube_line(th_raw_chunk, height, width, 0, 50, box))
        _bad(plan, "talkinghead1kh", tube_clip_name(th_raw_chunk, 0, 50, box), None,
             "bbox_outside_frame", Reason.BBOX_OUTSIDE_FRAME,
             note="the raw chunk exists; the tube's box lies entirely outside its frame")


def _hostile_names(plan: CorpusPlan, person: Identity) -> None:
    """A path-traversal key whose target must never be read, and non-ASCII names that work."""
    key = "../../etc/evil_0.mp4"
    plan.celebvtext[key] = {"meta_video_names": "../../etc/evil", "ytb_id": "../../etc/evil",
                            "duration": {"start_sec": 1.0, "end_sec": 4.52},
                            "bbox": {"top": 0.0, "bottom": 0.9, "left": 0.2, "right": 0.7},
                            "version": "v0.11"}
    # A real video where "videos/../../etc/evil_0.mp4" would lead, outside the source root:
    # an adapter that joins paths instead of looking names up under its root would use it.
    canary = plan.path("etc", "evil_0.mp4")
    seed = plan.number("scene:canary", 0, 2**31)
    plan.scenes.append(Scene(plan.size, plan.size, SHORT, FPS, seed, (
        Actor(person.plate, (plan.size / 2, plan.size * 0.47), 0.5 * plan.size,
              (Segment(0, SHORT, "idle", seed),)),), (
        Output(canary, "mp4", 0, SHORT, (0, 0, plan.size, plan.size)),)))
    _bad(plan, "celebvtext", key, None, "path_traversal_key", Reason.VIDEO_MISSING,
         note="OUT/etc/evil_0.mp4 is a canary outside the source root: it must never be used")

    identity = Identity("bad_non_ascii", person.person, person.plate, person.index,
                        person.origin)
    ytb_id = HOSTILE_YTB_ID
    add_celebvtext(plan, identity, ytb_id=ytb_id, first_video=0, clips=2)
    plan.identities.append({"name": identity.name, "person": identity.person,
                            "photo": identity.origin, "variant_of": None, "variant": None,
                            "sources": ["celebvtext"], "hostile_names": True})
    for clip in plan.clips[-2:]:
        clip["hostile_name"] = True
        _bad(plan, "celebvtext", clip["clip_id"], plan.path(clip["video"]), "non_ascii_name",
             None, note="usable clip; its id must become safe_id(original)")
