"""Build the demo corpus: plan identities across the layouts, render, write metadata + summary."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from curation.democorpus import faces_source, layouts
from curation.democorpus.bad_inputs import HOSTILE_YTB_ID, add_bad_inputs
from curation.democorpus.identity_cases import add_identity_cases, same_split_person
from curation.democorpus.plan import CLIP_FRAMES, FPS, SOURCE_CYCLE, CorpusPlan, Identity
from curation.democorpus.render import CONVENTIONS, Scene, render_scene

CORPUS_VERSION = 1
MIN_IDENTITIES = 6
MIN_CLIP_SECONDS = 1.0
LAYOUT = {
    "celebvhq": "celebvhq/celebvhq_info.json; downloaded_celebvhq/processed/<clip_key>.mp4; "
                "downloaded_celebvhq/raw/<ytb_id>.mp4",
    "celebvtext": "celebvtext/celebvtext_info.json (v0.11 flat, keyed by '<clip>.mp4'); "
                  "videos/<clip>.mp4",
    "vfhq": "vfhq/meta_info/Clip+<vid>+P<pid>+C<idx>+F<start>-<end>.txt; clips/<name>.mp4 or "
            "frames/<name>/%08d.png",
    "talkinghead1kh": "talkinghead1kh/data_list/{small,train,val}_video_{tubes,ids}.txt "
                      "(+ data_list.zip); cropped_clips/<video_name>_S_E_L_T_R_B.mp4; "
                      "raw_videos/<ytid>_%04d.mp4",
    "folder": "folder/<identity>/*.mp4",
    "_groundtruth": "_groundtruth/<source>/<safe clip id>.json: per-frame applied transforms "
                    "(not part of any dataset; adapters never read it)",
}


def build_demo_corpus(out: Path, seed: int = 0, with_bad_inputs: bool = False,
                      frame_size: int = 512, extra_identities: int = 0,
                      workers: int | None = None, total_identities: int = 0,
                      clip_seconds: float | None = None) -> dict:
    """Write the demo corpus under `out` (replacing a previous corpus there) and return the
    summary that is also written to out/corpus.json.

    extra_identities adds that many variant identities (see make_identities);
    total_identities, when larger than the real faces plus extra_identities, adds more variants
    until there are that many identities in all (the CLI's --identities).
    clip_seconds sets the length of the good clips (default CLIP_FRAMES = 3.52 s; real datasets
    have longer ones): their head motion repeats its sweeps over the whole clip, short clips
    (the PNG-frames VFHQ clip, bad inputs) keep their lengths."""
    out = Path(out).resolve()
    if frame_size < 128 or frame_size % 16:
        raise ValueError(f"frame_size must be a multiple of 16 and >= 128, got {frame_size}")
    clip_frames = CLIP_FRAMES
    if clip_seconds is not None:
        if not MIN_CLIP_SECONDS <= clip_seconds <= 600:
            raise ValueError(f"clip_seconds must be in [{MIN_CLIP_SECONDS:g}, 600], "
                             f"got {clip_seconds}")
        clip_frames = int(round(clip_seconds * FPS))
    _clear(out)
    plan = CorpusPlan(out, seed, frame_size, clip_frames)
    identities = make_identities(plan, extra_identities, total_identities)
    place_identities(plan, identities, with_bad_inputs)
    render_all(plan.scenes, workers)
    finish_files(plan)
    summary = make_summary(plan, identities, with_bad_inputs)
    (out / "corpus.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    return summary


def _clear(out: Path) -> None:
    """Start from an empty folder; refuse to wipe a folder that is not a previous corpus."""
    if out.exists() and any(out.iterdir()):
        if not (out / "corpus.json").exists() and not (out / "_groundtruth").exists():
            raise FileExistsError(f"{out} is not empty and holds no demo corpus; "
                                  "choose a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def make_identities(plan: CorpusPlan, extra: int, total: int = 0) -> list[Identity]:
    """The real faces in a fixed order, then `extra` variants of them (same people, changed:
    mirrored, colour-shifted, re-cropped; rendered over other backgrounds)."""
    photos = faces_source.load_photos()
    faces = faces_source.find_source_faces(photos)
    if len(faces) < MIN_IDENTITIES:
        raise faces_source.SourceFaceError(
            f"only {len(faces)} faces found in the sample photos, need {MIN_IDENTITIES}")
    by_origin = {photo.origin: photo for photo in photos}
    face_px = 0.5 * plan.size
    identities = [Identity(face.person, face.person,
                           faces_source.make_plate(by_origin[face.origin].rgb, face, face_px),
                           i, face.origin) for i, face in enumerate(faces)]
    extra = max(extra, total - len(faces))
    for j in range(extra):
        base = identities[j % len(faces)]
        plate = faces_source.make_variant(base.plate, j + 1, plan.rng(f"variant:{j}"))
        identities.append(Identity(f"{base.person}_variant{j}", base.person, plate,
                                   len(identities), base.origin, variant_of=base.name))
    return identities


def place_identities(plan: CorpusPlan, identities: list[Identity], with_bad: bool) -> None:
    """Spread identities over the layouts; the first CelebV-HQ identity also has a clip in
    CelebV-Text under the same YouTube id, and raw videos."""
    firsts: dict[str, str] = {}
    for identity in identities:
        source = SOURCE_CYCLE[identity.index % len(SOURCE_CYCLE)]
        first = source not in firsts
        identity_sources = [source]
        if source == "celebvhq":
            ytb_id = layouts.add_celebvhq(plan, identity, with_raw=first)
            if first:
                layouts.add_celebvtext(plan, identity, ytb_id=ytb_id, first_video=2, clips=1)
                identity_sources.append("celebvtext")
        elif source == "celebvtext":
            layouts.add_celebvtext(plan, identity)
        elif source == "vfhq":
            layouts.add_vfhq_identity(plan, identity, as_frames=first)
        elif source == "talkinghead1kh":
            ytid = layouts.add_talkinghead(plan, identity, with_raw=first,
                                           split="train" if first else "val")
            if first:
                firsts["th_raw_chunk"] = f"{ytid}_0000"
                plan.th_tubes["small"].append(plan.th_tubes["train"][0])
                plan.th_video_ids["small"].append(ytid)
        else:
            layouts.add_folder(plan, identity)
        firsts.setdefault(source, identity.name)
        plan.identities.append({
            "name": identity.name, "person": identity.person, "photo": identity.origin,
            "variant_of": identity.variant_of, "variant": identity.plate.variant or None,
            "sources": identity_sources,
        })
    if with_bad:
        by_name = {identity.name: identity for identity in identities}
        folder_owner = by_name[firsts["folder"]] if "folder" in firsts else identities[0]
        others = [identity for identity in identities if identity.person != folder_owner.person]
        hostile = same_split_person(plan, others, HOSTILE_YTB_ID)
        add_bad_inputs(plan, folder_owner, others[0], firsts.get("th_raw_chunk"), hostile)
        add_identity_cases(plan, identities)


def render_all(scenes: list[Scene], workers: int | None) -> None:
    """Render scenes, the costliest first, in a small process pool (spawned: mediapipe's
    threads in this process must not be forked)."""
    order = sorted(scenes, key=lambda s: -(s.width * s.height * s.n_frames))
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if workers <= 1:
        for scene in order:
            render_scene(scene)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for _ in pool.map(render_scene, order):
            pass


def finish_files(plan: CorpusPlan) -> None:
    """Metadata files, raw byte files and truncations (after the videos exist)."""
    out = plan.out
    _write_json(out / "celebvhq" / "celebvhq_info.json", {
        "meta_info": {"appearance_mapping": layouts.APPEARANCE_MAPPING,
                      "action_mapping": layouts.ACTION_MAPPING},
        "clips": dict(sorted(plan.celebvhq.items()))})
    _write_json(out / "celebvtext" / "celebvtext_info.json", dict(sorted(plan.celebvtext.items())))
    meta_dir = out / "vfhq" / "meta_info"
    meta_dir.mkdir(parents=True, exist_ok=True)
    for name, spec in sorted(plan.vfhq_meta.items()):
        if isinstance(spec, str):
            text = spec
        else:
            height, width, crop, first_index, gt_path = spec
            frames = json.loads(Path(gt_path).read_text(encoding="utf-8"))["frames"]
            text = layouts.vfhq_metadata(height, width, crop, first_index, frames)
        (meta_dir / name).write_text(text, encoding="utf-8")
    _write_talkinghead_lists(plan)
    for rel, data in sorted(plan.raw_files.items()):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel, keep in sorted(plan.truncate.items()):
        path = out / rel
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_talkinghead_lists(plan: CorpusPlan) -> None:
    """The lists as loose files under data_list/ and zipped the way they are distributed."""
    folder = plan.out / "talkinghead1kh" / "data_list"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in ("small", "train", "val"):
        files[f"{split}_video_tubes.txt"] = "".join(f"{line}\n" for line in plan.th_tubes[split])
        ids = list(dict.fromkeys(plan.th_video_ids[split]))
        files[f"{split}_video_ids.txt"] = "".join(f"{i}\n" for i in ids)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in sorted(files.items()):
            (folder / name).write_text(text, encoding="utf-8")
            info = zipfile.ZipInfo(f"data_list/{name}", date_time=(2021, 12, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, text.encode("utf-8"))
    (plan.out / "talkinghead1kh" / "data_list.zip").write_bytes(buffer.getvalue())


def make_summary(plan: CorpusPlan, identities: list[Identity], with_bad: bool) -> dict:
    clips_by_identity: dict[str, int] = {}
    for clip in plan.clips:
        clips_by_identity[clip["identity"]] = clips_by_identity.get(clip["identity"], 0) + 1
    for entry in plan.identities:
        entry["clips"] = clips_by_identity.get(entry["name"], 0)
    # clip_frames is recorded only when it is not the default (the default corpus.json bytes
    # stay what they were)
    clip_length = {} if plan.clip_frames == CLIP_FRAMES else {"clip_frames": plan.clip_frames}
    return {
        "corpus_version": CORPUS_VERSION,
        "seed": plan.seed,
        "frame_size": plan.size,
        "fps": FPS,
        **clip_length,
        "with_bad_inputs": with_bad,
        "layout": LAYOUT,
        "groundtruth_conventions": CONVENTIONS,
        "notes": [
            "Identities are real people from photos shipped in scikit-image, matplotlib and "
            "insightface; head motion is simulated by warping each photo.",
            "Identities named '<person>_variant<k>' are the same real person as <person> with "
            "a mirrored/colour-shifted/re-cropped face and another background: benchmark "
            "filler, not new people.",
            "identity_key is the identity rule of each source (README, Sources) applied to the metadata: "
            "yt:<ytb_id> (CelebV-HQ, CelebV-Text, TalkingHead-1KH), vfhq:<vid>:P<pid>, "
            "folder:<sub-folder>.",
            "small_video_tubes.txt repeats a line of train_video_tubes.txt, as subsets do.",
        ],
        "identities": plan.identities,
        "clips": plan.clips,
        "bad_inputs": plan.bad_inputs,
        **({"identity_cases": plan.identity_cases} if with_bad else {}),
    }
