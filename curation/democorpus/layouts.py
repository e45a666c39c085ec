"""Good clips of one identity, laid out the way each dataset's users hold them on disk.

See the README ("Sources and how identities are formed") for the official layouts. Every function adds the
scenes to render, the metadata entries and the corpus.json records of one identity.
"""

from __future__ import annotations

from curation.democorpus.plan import (
    FACE_FRACTION,
    FPS,
    CorpusPlan,
    Identity,
    clip_header,
    even,
)
from curation.democorpus.render import Actor, Output, Scene, Segment

CELEBVHQ_EXPAND = 0.02           # the official processing grows the bbox by this on each side
APPEARANCE_MAPPING = ["blurry", "male", "young", "eyeglasses", "smiling", "wavy_hair"]
ACTION_MAPPING = ["talk", "smile", "head_wagging", "look_around", "blink"]
EMOTIONS = ["neutral", "happy", "surprise"]
FRAMES_FOLDER_FRAMES = 20        # PNG frames are ~10x an H.264 frame: keep that clip short


def raw_canvas(plan: CorpusPlan) -> tuple[int, int]:
    """Width, height of a raw video: larger than a processed clip, which sits inside it."""
    return even(1.5 * plan.size), even(1.25 * plan.size)


def two_shot_raw_scene(plan: CorpusPlan, identity: Identity, label: str, lead: int, gap: int,
                       tail: int) -> tuple[int, int, tuple[int, int, int, int], list[int]]:
    """Seed, frame count, crop region and shot starts of a raw video holding two clips."""
    width, height = raw_canvas(plan)
    x = even(plan.number("rx:" + label, 0, width - plan.size + 1))
    y = even(plan.number("ry:" + label, 0, height - plan.size + 1))
    starts = [lead, lead + plan.clip_frames + gap]
    return (plan.number("scene:" + label, 0, 2**31), starts[1] + plan.clip_frames + tail,
            (x, y, plan.size, plan.size), starts)


def raw_actor(plan: CorpusPlan, identity: Identity, seed: int, region, starts) -> Actor:
    x, y, s, _ = region
    profiles = plan.clip_profiles(identity)
    segments = tuple(Segment(start, plan.clip_frames, profile, seed + k,
                             plan.motion_cycles(plan.clip_frames))
                     for k, (start, profile) in enumerate(zip(starts, profiles, strict=True)))
    return Actor(identity.plate, (x + s / 2, y + s * 0.47), FACE_FRACTION * s, segments)


# CelebV-HQ ---------------------------------------------------------------------------------

def celebvhq_entry(plan: CorpusPlan, ytb_id: str, start_sec: float, end_sec: float,
                   bbox: dict, label: str) -> dict:
    rng = plan.rng("attr:" + label)
    return {
        "ytb_id": ytb_id,
        "duration": {"start_sec": round(start_sec, 2), "end_sec": round(end_sec, 2)},
        "bbox": bbox,
        "attributes": {
            "appearance": [int(v) for v in rng.integers(0, 2, len(APPEARANCE_MAPPING))],
            "action": [int(v) for v in rng.integers(0, 2, len(ACTION_MAPPING))],
            "emotion": {"sep_flag": False, "labels": EMOTIONS[int(rng.integers(0, 3))]},
        },
        "version": "v0.1",
    }


def celebvhq_bbox(region, width: int, height: int) -> dict:
    """Normalised bbox that the official processing (grow by 0.02 a side, square) maps back
    onto the processed clip's region."""
    x, y, w, h = region
    return {"top": round(y / height + CELEBVHQ_EXPAND, 4),
            "bottom": round((y + h) / height - CELEBVHQ_EXPAND, 4),
            "left": round(x / width + CELEBVHQ_EXPAND, 4),
            "right": round((x + w) / width - CELEBVHQ_EXPAND, 4)}


def add_celebvhq(plan: CorpusPlan, identity: Identity, with_raw: bool) -> str:
    """Two clips of one YouTube video. With a raw video: clip 0 is processed and also in the raw
    video, clip 1 exists only in the raw video (metadata time range + bbox)."""
    ytb_id = plan.youtube_id("celebvhq:" + identity.name)
    processed = ("celebvhq", "downloaded_celebvhq", "processed")
    if with_raw:
        _celebvhq_raw_pair(plan, identity, ytb_id, processed)
    else:
        for k, profile in enumerate(plan.clip_profiles(identity)):
            celebvhq_processed_clip(plan, identity, ytb_id, k, profile)
    return ytb_id


def celebvhq_processed_clip(plan: CorpusPlan, identity: Identity, ytb_id: str, k: int,
                            profile: str, **fields) -> None:
    """Processed clip `<ytb_id>_<k>.mp4` of `identity`'s person, with its metadata entry."""
    processed = ("celebvhq", "downloaded_celebvhq", "processed")
    width, height = raw_canvas(plan)
    key = f"{ytb_id}_{k}"
    out = plan.single_clip(identity, "celebvhq:" + key, profile,
                           plan.path(*processed, key + ".mp4"),
                           clip_header("celebvhq", key, identity, ytb_id=ytb_id))
    start = plan.number("t0:" + key, 500, 9000) / 100
    region = (even(0.2 * width), even(0.1 * height), plan.size, plan.size)
    end = start + plan.clip_frames / FPS
    plan.celebvhq[key] = celebvhq_entry(plan, ytb_id, start, end,
                                        celebvhq_bbox(region, width, height), key)
    plan.add_clip(identity, out, source_video_id=ytb_id, served_by="processed",
                  identity_key=f"yt:{ytb_id}", **fields)


def _celebvhq_raw_pair(plan, identity, ytb_id, processed) -> None:
    label = "celebvhq-raw:" + ytb_id
    seed, n_frames, region, starts = two_shot_raw_scene(plan, identity, label, 20, 15, 12)
    width, height = raw_canvas(plan)
    raw_path = plan.path("celebvhq", "downloaded_celebvhq", "raw", ytb_id + ".mp4")
    outputs = [Output(raw_path, "mp4", 0, n_frames, (0, 0, width, height),
                      plan.groundtruth_path("celebvhq", "raw/" + ytb_id),
                      clip_header("celebvhq", "raw/" + ytb_id, identity, ytb_id=ytb_id))]
    for k, start in enumerate(starts):
        key = f"{ytb_id}_{k}"
        video = plan.path(*processed, key + ".mp4") if k == 0 else None
        outputs.append(Output(video or "", "mp4" if video else "none", start,
                              plan.clip_frames, region, plan.groundtruth_path("celebvhq", key),
                              clip_header("celebvhq", key, identity, ytb_id=ytb_id,
                                          raw_first_frame=start)))
        plan.celebvhq[key] = celebvhq_entry(plan, ytb_id, start / FPS,
                                            (start + plan.clip_frames) / FPS,
                                            celebvhq_bbox(region, width, height), key)
        plan.add_clip(identity, outputs[-1], source_video_id=ytb_id,
                      served_by="processed" if video else "raw",
                      raw_video=plan.rel(raw_path), identity_key=f"yt:{ytb_id}",
                      raw_start_sec=round(start / FPS, 2),
                      raw_end_sec=round((start + plan.clip_frames) / FPS, 2),
                      raw_region_xywh=list(region))
    actor = raw_actor(plan, identity, seed, region, starts)
    occlusions = tuple(plan.occlusion(f"{label}:{k}", s, plan.clip_frames)
                       for k, s in enumerate(starts))
    plan.scenes.append(Scene(width, height, n_frames, FPS, seed, (actor,), tuple(outputs),
                             occlusions=occlusions))


# CelebV-Text -------------------------------------------------------------------------------

def celebvtext_entry(plan: CorpusPlan, meta_video_name: str, ytb_id: str, label: str) -> dict:
    # The released v0.11 shape: `duration` in seconds (start_sec/end_sec, 2 decimals). The
    # README's nested shape writes the same seconds under start_frame/end_frame; the adapter
    # reads both as seconds, so no demo entry ever holds frame indices.
    start = plan.number("t0:" + label, 1000, 60000) / 100
    rng = plan.rng("bbox:" + label)
    left = round(float(rng.uniform(0.1, 0.35)), 4)
    top = round(float(rng.uniform(0.0, 0.1)), 4)
    return {"meta_video_names": meta_video_name, "ytb_id": ytb_id,
            "duration": {"start_sec": round(start, 2),
                         "end_sec": round(start + plan.clip_frames / FPS, 2)},
            "bbox": {"top": top, "bottom": round(top + 0.8, 4), "left": left,
                     "right": round(left + 0.45, 4)},
            "version": "v0.11"}


def add_celebvtext(plan: CorpusPlan, identity: Identity, ytb_id: str | None = None,
                   first_video: int = 0, clips: int = 2) -> None:
    """Clips "<ytb_id>_<k>_<j>.mp4" in the v0.11 flat metadata shape."""
    ytb_id = ytb_id or plan.youtube_id("celebvtext:" + identity.name)
    profiles = plan.clip_profiles(identity)
    for j in range(clips):
        meta_name = f"{ytb_id}_{first_video}"
        key = f"{meta_name}_{j}.mp4"
        out = plan.single_clip(identity, "celebvtext:" + key, profiles[j % 2],
                               plan.path("celebvtext", "videos", key),
                               clip_header("celebvtext", key, identity, ytb_id=ytb_id))
        plan.celebvtext[key] = celebvtext_entry(plan, meta_name, ytb_id, key)
        plan.add_clip(identity, out, source_video_id=ytb_id, served_by="processed",
                      identity_key=f"yt:{ytb_id}")


# VFHQ --------------------------------------------------------------------------------------

def vfhq_source_size(plan: CorpusPlan) -> tuple[int, int]:
    """Height, width of the (not shipped) source video the VFHQ clips were cut from."""
    return even(1.5 * plan.size), even(2.5 * plan.size)


def vfhq_metadata(height: int, width: int, crop, first_index: int, frames: list[dict]) -> str:
    """Header lines, then `<frame index> x0 y0 x1 y1 lx1 ly1 ... lx5 ly5` in source pixels."""
    x0, y0 = crop[0], crop[1]
    lines = [f"H {height}", f"W {width}", f"FPS {FPS}", "CROP " + " ".join(str(v) for v in crop)]
    for i, frame in enumerate(frames):
        box = frame["face_box"]
        values = [box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0]
        for lx, ly in frame["landmarks5"]:
            values += [lx + x0, ly + y0]
        lines.append(f"{first_index + i} " + " ".join(f"{v:.1f}" for v in values))
    return "\n".join(lines) + "\n"


def add_vfhq(plan: CorpusPlan, identity: Identity, as_frames: bool,
             face_fraction: float = FACE_FRACTION, clips: int = 2) -> list[Output]:
    """Clips "Clip+<vid>+P<pid>+C<idx>+F<start>-<end>"; the clip holds frames start+1..end-1.
    With as_frames, the second clip is a folder of PNG frames (short, PNGs are large)."""
    video_id = plan.youtube_id("vfhq:" + identity.name)
    height, width = vfhq_source_size(plan)
    crop_x = even(plan.number("cx:" + video_id, 0, width - plan.size))
    crop_y = even(plan.number("cy:" + video_id, 0, height - plan.size))
    crop = (crop_x, crop_y, crop_x + plan.size, crop_y + plan.size)
    outputs = []
    for k in range(clips):
        frames_folder = as_frames and k == 1
        count = FRAMES_FOLDER_FRAMES if frames_folder else plan.clip_frames
        start = plan.number(f"f0:{video_id}:{k}", 100, 20000)
        name = f"Clip+{video_id}+P0+C{k}+F{start}-{start + count + 1}"
        video = (plan.path("vfhq", "frames", name) if frames_folder
                 else plan.path("vfhq", "clips", name + ".mp4"))
        out = plan.single_clip(identity, "vfhq:" + name, plan.clip_profiles(identity)[k % 2],
                               video, clip_header("vfhq", name, identity, video_id=video_id,
                                                  pid=0),
                               kind="png_dir" if frames_folder else "mp4", frames=count,
                               face_fraction=face_fraction)
        # the per-frame lines need the rendered truth: written after rendering (build.py)
        plan.vfhq_meta[name + ".txt"] = (height, width, crop, start + 1, out.groundtruth_path)
        outputs.append(out)
    return outputs


def add_vfhq_identity(plan: CorpusPlan, identity: Identity, as_frames: bool) -> None:
    for out in add_vfhq(plan, identity, as_frames):
        video_id = out.header["video_id"]
        plan.add_clip(identity, out, source_video_id=video_id, served_by="processed",
                      identity_key=f"vfhq:{video_id}:P0",
                      frames_folder=out.kind == "png_dir")


# TalkingHead-1KH ---------------------------------------------------------------------------

def tube_clip_name(video_name: str, s: int, e: int, box) -> str:
    left, top, right, bottom = box
    return f"{video_name}_S{s}_E{e}_L{left}_T{top}_R{right}_B{bottom}"


def tube_line(video_name: str, height: int, width: int, s: int, e: int, box) -> str:
    return ",".join(str(v) for v in (video_name, height, width, s, e, *box))


def add_talkinghead(plan: CorpusPlan, identity: Identity, with_raw: bool, split: str) -> str:
    """Tubes `video_name,H,W,S,E,L,T,R,B` on 1-minute chunks `<ytid>_%04d`. With a raw chunk:
    tube 0 also has its cropped clip, tube 1 is served only by the chunk and its tube line,
    which (as in the real lists) was annotated at another resolution (2x) than the chunk."""
    ytid = plan.youtube_id("th:" + identity.name)
    if with_raw:
        _talkinghead_raw_pair(plan, identity, ytid, split)
    else:
        for k, profile in enumerate(plan.clip_profiles(identity)):
            talkinghead_tube(plan, identity, ytid, k, profile, split)
    plan.th_video_ids[split].append(ytid)
    return ytid


def talkinghead_tube(plan: CorpusPlan, identity: Identity, ytid: str, k: int, profile: str,
                     split: str, **fields) -> None:
    """Tube k of video `ytid` (a cropped clip of one chunk) showing `identity`'s person."""
    width, height = raw_canvas(plan)
    video_name = f"{ytid}_{plan.number('chunk:' + ytid, 1, 9):04d}"
    s = plan.number(f"s:{ytid}:{k}", 0, 1200) + k * 200
    e = s + plan.clip_frames - 1
    left = even(plan.number(f"l:{ytid}:{k}", 0, width - plan.size))
    top = even(plan.number(f"t:{ytid}:{k}", 0, height - plan.size))
    box = (left, top, left + plan.size, top + plan.size)
    name = tube_clip_name(video_name, s, e, box)
    out = plan.single_clip(identity, "th:" + name, profile,
                           plan.path("talkinghead1kh", "cropped_clips", name + ".mp4"),
                           clip_header("talkinghead1kh", name, identity, ytid=ytid))
    plan.th_tubes[split].append(tube_line(video_name, height, width, s, e, box))
    plan.add_clip(identity, out, source_video_id=ytid, served_by="processed",
                  identity_key=f"yt:{ytid}", **fields)


def _talkinghead_raw_pair(plan, identity, ytid, split) -> None:
    video_name = f"{ytid}_0000"
    label = "th-raw:" + ytid
    seed, n_frames, region, starts = two_shot_raw_scene(plan, identity, label, 10, 12, 10)
    width, height = raw_canvas(plan)
    chunk = plan.path("talkinghead1kh", "raw_videos", video_name + ".mp4")
    x, y, s, _ = region
    box = (x, y, x + s, y + s)
    outputs = [Output(chunk, "mp4", 0, n_frames, (0, 0, width, height),
                      plan.groundtruth_path("talkinghead1kh", "raw/" + video_name),
                      clip_header("talkinghead1kh", "raw/" + video_name, identity, ytid=ytid))]
    for k, start in enumerate(starts):
        end = start + plan.clip_frames - 1
        scale = 1 if k == 0 else 2           # tube 1: annotated at twice the chunk's size
        name = tube_clip_name(video_name, start, end, tuple(v * scale for v in box))
        cropped = plan.path("talkinghead1kh", "cropped_clips", name + ".mp4") if k == 0 else None
        outputs.append(Output(cropped or "", "mp4" if cropped else "none", start,
                              plan.clip_frames, region,
                              plan.groundtruth_path("talkinghead1kh", name),
                              clip_header("talkinghead1kh", name, identity, ytid=ytid,
                                          raw_first_frame=start)))
        plan.th_tubes[split].append(tube_line(video_name, height * scale, width * scale,
                                              start, end, tuple(v * scale for v in box)))
        plan.add_clip(identity, outputs[-1], source_video_id=ytid,
                      served_by="processed" if cropped else "raw", raw_video=plan.rel(chunk),
                      identity_key=f"yt:{ytid}", raw_start_frame=start, raw_end_frame=end,
                      raw_region_xywh=list(region), tube_annotation_scale=scale)
    actor = raw_actor(plan, identity, seed, region, starts)
    occlusions = tuple(plan.occlusion(f"{label}:{k}", s, plan.clip_frames)
                       for k, s in enumerate(starts))
    plan.scenes.append(Scene(width, height, n_frames, FPS, seed, (actor,), tuple(outputs),
                             occlusions=occlusions))


# plain folder ------------------------------------------------------------------------------

def add_folder(plan: CorpusPlan, identity: Identity) -> None:
    """OUT/folder/<identity name>/clip_<k>.mp4: one identity per sub-folder."""
    for k, profile in enumerate(plan.clip_profiles(identity)):
        clip_id = f"{identity.name}/clip_{k}"
        out = plan.single_clip(identity, "folder:" + clip_id, profile,
                               plan.path("folder", identity.name, f"clip_{k}.mp4"),
                               clip_header("folder", clip_id, identity))
        plan.add_clip(identity, out, source_video_id=clip_id, served_by="processed",
                      identity_key=f"folder:{identity.name}")
