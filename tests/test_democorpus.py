"""The demo corpus generator: layouts, metadata shapes, decodable clips with the intended faces,
bad inputs that are what they claim, determinism and size."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _democorpus_helpers import (
    FaceFinder,
    frame_count,
    load_json,
    metadata_files,
    read_frames,
)

from curation.democorpus import build_demo_corpus, main
from curation.democorpus.plan import CorpusPlan
from curation.records import Reason, safe_id
from mfhq_faces.geometry import iou

FIXTURE_CELEBVTEXT = Path(__file__).resolve().parent / "fixtures" / "celebvtext_info-sample.json"
YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
VFHQ_NAME = re.compile(r"^Clip\+([A-Za-z0-9_-]{11})\+P(\d+)\+C(\d+)\+F(\d+)-(\d+)$")
MIN_FACE_SIZE = 160


@pytest.fixture(scope="session")
def corpus(demo_corpus) -> tuple[Path, dict]:
    """The session's demo corpus (seed 0, bad inputs: what `mfhq demo` builds), built once for
    these checks and the demo build alike."""
    paths, summary = demo_corpus
    return paths.corpus, summary


@pytest.fixture(scope="module")
def faces():
    finder = FaceFinder()
    yield finder
    finder.close()


def _bad(summary: dict, kind: str) -> list[dict]:
    found = [b for b in summary["bad_inputs"] if b["kind"] == kind]
    assert found, f"no bad input of kind {kind}"
    return found


def test_summary_is_written_and_returned(corpus):
    out, summary = corpus
    assert load_json(out / "corpus.json") == summary


def test_identities_are_many_and_each_has_several_clips(corpus):
    _, summary = corpus
    real = [i for i in summary["identities"] if not i.get("hostile_names")]
    assert len({i["person"] for i in real}) >= 6
    for identity in real:
        assert identity["clips"] >= 2, identity
    sources = {s for i in real for s in i["sources"]}
    assert sources == {"celebvhq", "celebvtext", "vfhq", "talkinghead1kh", "folder"}


def test_one_youtube_id_is_in_celebvhq_and_celebvtext(corpus):
    out, _ = corpus
    hq = {e["ytb_id"] for e in load_json(out / "celebvhq/celebvhq_info.json")["clips"].values()}
    text = {e["ytb_id"] for e in load_json(out / "celebvtext/celebvtext_info.json").values()}
    shared = hq & text
    assert shared and all(YOUTUBE_ID.match(y) for y in shared)


def test_every_clip_decodes_to_its_recorded_frame_count(corpus):
    out, summary = corpus
    for clip in summary["clips"]:
        truth = load_json(out / clip["groundtruth"])
        assert truth["frame_count"] == clip["frames"] == len(truth["frames"])
        if clip["video"] is not None:
            assert frame_count(out / clip["video"]) == clip["frames"], clip["clip_id"]
        if clip.get("raw_video"):
            raw_truth = _raw_truth(out, clip)
            assert frame_count(out / clip["raw_video"]) == raw_truth["frame_count"]


def _raw_truth(out: Path, clip: dict) -> dict:
    name = Path(clip["raw_video"]).stem
    return load_json(out / "_groundtruth" / clip["source"] / (safe_id("raw/" + name) + ".json"))


def test_clips_are_h264_yuv420p_at_25_fps(corpus):
    import av

    out, summary = corpus
    for clip in summary["clips"]:
        if clip["video"] and clip["video"].endswith(".mp4"):
            with av.open(str(out / clip["video"])) as container:
                stream = container.streams.video[0]
                assert stream.codec_context.name == "h264"
                assert stream.codec_context.pix_fmt == "yuv420p"
                assert stream.average_rate == 25
                assert stream.width == stream.height == summary["frame_size"]


def test_celebvhq_metadata_has_the_official_shape(corpus):
    out, summary = corpus
    info = load_json(out / "celebvhq/celebvhq_info.json")
    assert set(info) == {"meta_info", "clips"}
    mappings = info["meta_info"]
    broken = {b["clip_id"] for b in summary["bad_inputs"] if b["source"] == "celebvhq"}
    for key, entry in info["clips"].items():
        assert key.startswith(entry["ytb_id"] + "_")
        if key in broken:
            continue
        assert set(entry) == {"ytb_id", "duration", "bbox", "attributes", "version"}
        assert entry["duration"]["end_sec"] > entry["duration"]["start_sec"] >= 0
        assert all(0 <= v <= 1 for v in entry["bbox"].values())
        assert entry["bbox"]["top"] < entry["bbox"]["bottom"]
        assert entry["bbox"]["left"] < entry["bbox"]["right"]
        attributes = entry["attributes"]
        assert len(attributes["appearance"]) == len(mappings["appearance_mapping"])
        assert len(attributes["action"]) == len(mappings["action_mapping"])
        assert isinstance(attributes["emotion"]["labels"], str)
        assert attributes["emotion"]["sep_flag"] is False


def test_celebvtext_metadata_has_the_shape_of_the_released_file(corpus):
    out, _ = corpus
    fixture = load_json(FIXTURE_CELEBVTEXT)
    released = next(iter(fixture.values()))
    info = load_json(out / "celebvtext/celebvtext_info.json")
    for key, entry in info.items():
        assert set(entry) == set(released), key
        assert set(entry["duration"]) == set(released["duration"])
        assert set(entry["bbox"]) == set(released["bbox"])
        assert entry["version"] == released["version"]
        assert key == entry["meta_video_names"] + key[len(entry["meta_video_names"]):]
        assert re.fullmatch(r"_\d+\.mp4", key[len(entry["meta_video_names"]):]), key


def test_vfhq_metadata_files_have_header_and_frame_lines(corpus):
    out, summary = corpus
    malformed = {b["clip_id"] for b in _bad(summary, "malformed_metadata_file")}
    files = sorted((out / "vfhq/meta_info").glob("*.txt"))
    assert len(files) >= 4
    for path in files:
        match = VFHQ_NAME.match(path.stem)
        assert match, path.name
        if path.stem in malformed:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        header = dict(line.split(" ", 1) for line in lines[:4])
        assert set(header) == {"H", "W", "FPS", "CROP"}
        height, width = int(header["H"]), int(header["W"])
        x0, y0, x1, y1 = (int(v) for v in header["CROP"].split())
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        start, end = int(match.group(4)), int(match.group(5))
        indices = [int(line.split()[0]) for line in lines[4:]]
        if indices:      # clips with a video: frames start+1 .. end-1, box + 5 landmarks each
            assert indices == list(range(start + 1, end))
            assert all(len(line.split()) == 15 for line in lines[4:])


def test_vfhq_has_an_mp4_clip_and_a_folder_of_frames(corpus):
    out, summary = corpus
    vfhq = [c for c in summary["clips"] if c["source"] == "vfhq"]
    assert any(c["video"].endswith(".mp4") for c in vfhq)
    folders = [c for c in vfhq if c.get("frames_folder")]
    assert folders
    names = sorted(p.name for p in (out / folders[0]["video"]).iterdir())
    assert names[0] == "00000000.png" and len(names) == folders[0]["frames"]


def test_talkinghead_lists_are_tube_lines_and_the_zip_matches(corpus):
    out, summary = corpus
    folder = out / "talkinghead1kh/data_list"
    malformed = {b["clip_id"] for b in _bad(summary, "malformed_tube_line")}
    for split in ("small", "train", "val"):
        for line in (folder / f"{split}_video_tubes.txt").read_text().splitlines():
            if line in malformed:
                continue
            fields = line.split(",")
            assert len(fields) == 9, line
            video_name, numbers = fields[0], [int(v) for v in fields[1:]]
            assert re.fullmatch(r"[A-Za-z0-9_-]{11}_\d{4}", video_name)
            height, width, s, e, left, top, right, bottom = numbers
            assert s <= e and left < right and top < bottom
        ids = (folder / f"{split}_video_ids.txt").read_text().splitlines()
        assert ids and all(YOUTUBE_ID.match(i) for i in ids)
    with zipfile.ZipFile(out / "talkinghead1kh/data_list.zip") as archive:
        for name in archive.namelist():
            assert archive.read(name) == (out / "talkinghead1kh" / name).read_bytes()
        assert len(archive.namelist()) == 6


def test_talkinghead_has_a_tube_served_only_by_its_raw_chunk(corpus):
    out, summary = corpus
    raw_only = [c for c in summary["clips"]
                if c["source"] == "talkinghead1kh" and c["served_by"] == "raw"]
    assert raw_only
    clip = raw_only[0]
    assert clip["video"] is None
    assert re.fullmatch(r"[A-Za-z0-9_-]{11}_\d{4}\.mp4", Path(clip["raw_video"]).name)
    assert not list((out / "talkinghead1kh").rglob(clip["clip_id"] + ".mp4"))


def test_celebvhq_raw_video_holds_the_processed_clip(corpus):
    """Cropping the raw video the way the official script does (bbox grown by 0.02 a side,
    made square, trimmed to start_sec..end_sec) gives the processed clip's frames."""
    out, summary = corpus
    clip = next(c for c in summary["clips"]
                if c["source"] == "celebvhq" and c["served_by"] == "processed"
                and c.get("raw_video"))
    entry = load_json(out / "celebvhq/celebvhq_info.json")["clips"][clip["clip_id"]]
    raw = read_frames(out / clip["raw_video"], [0])[0]
    height, width = raw.shape[:2]
    box = entry["bbox"]
    top, bottom = round((box["top"] - 0.02) * height), round((box["bottom"] + 0.02) * height)
    left, right = round((box["left"] - 0.02) * width), round((box["right"] + 0.02) * width)
    first = round(entry["duration"]["start_sec"] * 25)
    picks = [0, 40, 80]
    raw_frames = read_frames(out / clip["raw_video"], [first + i for i in picks])
    processed = read_frames(out / clip["video"], picks)
    for raw_frame, clip_frame in zip(raw_frames, processed, strict=True):
        crop = raw_frame[top:bottom, left:right].astype(np.float32)
        assert crop.shape == clip_frame.shape
        assert np.abs(crop - clip_frame).mean() < 6.0


def test_talkinghead_cropped_clip_is_its_tube_of_the_raw_chunk(corpus):
    out, summary = corpus
    clip = next(c for c in summary["clips"]
                if c["source"] == "talkinghead1kh" and c.get("raw_video")
                and c["served_by"] == "processed")
    left, top, right, bottom = (int(v) for v in re.findall(r"_[LTRB](\d+)", clip["clip_id"]))
    start = int(re.search(r"_S(\d+)_", clip["clip_id"]).group(1))
    raw_frames = read_frames(out / clip["raw_video"], [start, start + 50])
    processed = read_frames(out / clip["video"], [0, 50])
    for raw_frame, clip_frame in zip(raw_frames, processed, strict=True):
        crop = raw_frame[top:bottom, left:right].astype(np.float32)
        assert np.abs(crop - clip_frame).mean() < 6.0


def test_detector_finds_the_intended_face_in_every_good_clip(corpus, faces):
    out, summary = corpus
    for clip in summary["clips"]:
        if clip["video"] is None:
            continue
        truth = load_json(out / clip["groundtruth"])["frames"]
        visible = [i for i, f in enumerate(truth) if not f["occluded"]]
        picks = [visible[k] for k in np.linspace(0, len(visible) - 1, 4).astype(int)]
        for index, frame in zip(picks, read_frames(out / clip["video"], picks), strict=True):
            expected = truth[index]["face_box"]
            found = faces.boxes(frame)
            best = max((iou(box, expected) for box in found), default=0.0)
            assert best > 0.3, (clip["clip_id"], index, best)
            strays = [box for box in found if iou(box, expected) < 0.1]
            assert not strays, (clip["clip_id"], index, strays)   # e.g. a mirrored duplicate


def test_faces_are_large_and_poses_sweep_a_wide_range(corpus):
    out, summary = corpus
    by_identity: dict[str, list[dict]] = {}
    for clip in summary["clips"]:
        by_identity.setdefault(clip["identity"], []).extend(
            load_json(out / clip["groundtruth"])["frames"])
    for name, frames in by_identity.items():
        widths = np.array([f["face_box"][2] - f["face_box"][0] for f in frames])
        assert np.median(widths) >= 200, name
        assert (widths >= MIN_FACE_SIZE).mean() > 0.9, name
        rolls = np.array([f["roll_deg"] for f in frames])
        yaws = np.array([f["yaw_warp_deg"] for f in frames])
        pitches = np.array([f["pitch_warp_deg"] for f in frames])
        assert rolls.min() < -15 and rolls.max() > 15, name
        assert yaws.min() < -20 and yaws.max() > 20, name
        assert pitches.min() < -10 and pitches.max() > 10, name


def test_bad_inputs_have_reason_codes_of_the_records_module(corpus):
    _, summary = corpus
    kinds = {b["kind"] for b in summary["bad_inputs"]}
    assert {"zero_byte_mp4", "truncated_mp4", "text_file_named_mp4", "no_face_clip",
            "two_people_clip", "tiny_face_clip", "metadata_without_video",
            "malformed_metadata_file", "bbox_outside_frame", "path_traversal_key",
            "non_ascii_name"} <= kinds
    values = {reason.value for reason in Reason}
    for bad in summary["bad_inputs"]:
        assert bad["reason"] is None or bad["reason"] in values, bad


def test_zero_byte_truncated_and_text_files_are_not_videos(corpus):
    import decord

    out, summary = corpus
    (empty,) = _bad(summary, "zero_byte_mp4")
    assert (out / empty["path"]).stat().st_size == 0
    (truncated,) = _bad(summary, "truncated_mp4")
    (text,) = _bad(summary, "text_file_named_mp4")
    assert (out / text["path"]).read_bytes().decode("ascii").startswith("These are notes")
    for bad in (empty, truncated, text):
        with pytest.raises(Exception):  # noqa: B017 - decord raises its own DECORDError
            decord.VideoReader(str(out / bad["path"]))
    assert (out / truncated["path"]).stat().st_size > 1000


def test_no_face_two_people_and_tiny_face_clips(corpus, faces):
    out, summary = corpus
    (no_face,) = _bad(summary, "no_face_clip")
    for frame in read_frames(out / no_face["path"])[::3]:
        assert faces.boxes(frame) == []
    (two,) = _bad(summary, "two_people_clip")
    truth = load_json(out / "_groundtruth/folder" / (safe_id(two["clip_id"]) + ".json"))
    picks = list(range(0, len(truth["frames"]), 5))
    for index, frame in zip(picks, read_frames(out / two["path"], picks), strict=True):
        found = faces.all_boxes(frame)
        expected = [truth["frames"][index]["face_box"],
                    truth["frames"][index]["other_faces"][0]["face_box"]]
        for box in expected:
            assert max(iou(b, box) for b in found) > 0.3, (index, found, expected)
    (tiny,) = _bad(summary, "tiny_face_clip")
    for frame in read_frames(out / tiny["path"])[::10]:
        for box in faces.boxes(frame, model=1):
            assert box[2] - box[0] < MIN_FACE_SIZE / 2


def test_metadata_problems_are_real(corpus):
    out, summary = corpus
    for bad in _bad(summary, "metadata_without_video"):
        root = out / bad["source"]
        videos = [p for p in root.rglob("*") if p.stem == bad["clip_id"]
                  and (p.suffix == ".mp4" or p.is_dir())]
        assert not videos, bad
    (malformed,) = _bad(summary, "malformed_metadata_file")
    assert not (out / malformed["path"]).read_text(encoding="utf-8").startswith("H ")
    (outside,) = _bad(summary, "bbox_outside_frame")
    fields = outside["clip_id"].rsplit("_", 6)
    chunk = next((out / "talkinghead1kh").rglob(fields[0] + ".mp4"))
    frame = read_frames(chunk, [0])[0]
    left, top = int(fields[3][1:]), int(fields[4][1:])
    assert left >= frame.shape[1] and top >= frame.shape[0]


def test_hostile_names(corpus):
    out, summary = corpus
    info = load_json(out / "celebvtext/celebvtext_info.json")
    (traversal,) = _bad(summary, "path_traversal_key")
    assert traversal["clip_id"] in info and ".." in traversal["clip_id"]
    assert not list((out / "celebvtext").rglob("evil_0.mp4"))
    assert (out / "etc/evil_0.mp4").is_file()       # the canary outside the source root
    for bad in _bad(summary, "non_ascii_name"):
        assert bad["clip_id"] in info and not bad["clip_id"].isascii()
        assert frame_count(out / bad["path"]) > 0


def test_same_seed_gives_the_same_bytes_and_frames(tmp_path):
    """Two small builds (the same code paths as the full one, at 128 px to stay cheap)."""
    first = build_demo_corpus(tmp_path / "a", seed=3, with_bad_inputs=True, frame_size=128)
    second = build_demo_corpus(tmp_path / "b", seed=3, with_bad_inputs=True, frame_size=128)
    assert first == second
    files_a = sorted(p for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert [p.relative_to(tmp_path / "a") for p in files_a] == [
        p.relative_to(tmp_path / "b") for p in files_b]
    metadata = set(metadata_files(tmp_path / "a"))
    assert len(metadata) > 20
    for a, b in zip(files_a, files_b, strict=True):
        assert a.read_bytes() == b.read_bytes(), a     # metadata, ground truth and videos
        assert a in metadata or a.suffix in {".mp4", ".png"}
    clip = first["clips"][0]["video"]
    assert all(np.array_equal(x, y) for x, y in zip(
        read_frames(tmp_path / "a" / clip), read_frames(tmp_path / "b" / clip), strict=True))


def test_ids_depend_on_the_seed():
    a, b = CorpusPlan(Path("/x"), 0, 512), CorpusPlan(Path("/x"), 1, 512)
    assert a.youtube_id("label") == CorpusPlan(Path("/y"), 0, 256).youtube_id("label")
    assert a.youtube_id("label") != b.youtube_id("label")
    assert YOUTUBE_ID.match(a.youtube_id("label"))


def test_corpus_is_small(corpus):
    out, _ = corpus
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total < 40 * 1024 * 1024


def test_cli_refuses_a_folder_that_is_not_a_corpus(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main([str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_cli_help():
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_identity_cases_put_real_people_under_the_wrong_ids(corpus):
    from curation.democorpus.identity_cases import DEMO_TEST_FRACTION
    from curation.pipeline.plan import stable_fraction
    from mfhq.demo import DEMO_BUILD_FLAGS

    _, summary = corpus
    cases = {c["kind"]: c for c in summary["identity_cases"]}
    assert set(cases) == {"mixed_youtube_id", "mixed_talkinghead_video", "same_person_two_ids"}
    for kind in ("mixed_youtube_id", "mixed_talkinghead_video"):
        case = cases[kind]
        clips = [c for c in summary["clips"] if c["identity_key"] == case["identity_key"]]
        people = [c["person"] for c in clips]
        assert case["majority_person"] != case["minority_person"]
        assert people.count(case["majority_person"]) == 2 and people.count(
            case["minority_person"]) == 1, (kind, people)
        (minority,) = [c for c in clips if c["person"] == case["minority_person"]]
        assert minority["clip_id"].removesuffix(".mp4") in case["minority_clips"]
    twins = cases["same_person_two_ids"]
    owners = {c["identity_key"]: c for c in summary["clips"]
              if c["identity_key"] in twins["identity_keys"]}
    assert {c["person"] for c in owners.values()} == {twins["person"]}
    sides = {stable_fraction(c["source_video_id"]) < DEMO_TEST_FRACTION for c in owners.values()}
    assert sides == {True, False}                       # one in test, one in train
    flags = dict(zip(DEMO_BUILD_FLAGS[::2], DEMO_BUILD_FLAGS[1::2], strict=True))
    assert float(flags["--test-fraction"]) == DEMO_TEST_FRACTION
