"""Hostile input: metadata parsers fed random and malformed values return a value or raise the
project's own EntryProblem (with a reason code), nothing else; hostile clip and identity names
never yield a path outside the output folder or a shard key WebDataset cannot read back; a
video that would block the decoder or run past its time limit is recorded, not waited on."""

from __future__ import annotations

import json
import os
import re
import tarfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.records import ClipRecord, Reason, safe_id
from curation.sources.common import EntryProblem, number, seconds_range, tblr_box
from curation.sources.talkinghead1kh import parse_tube
from curation.sources.vfhq import parse_clip_name, parse_header
from mfhq_contract import image_ext, sample_key

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
_KEY = re.compile(r"^[A-Za-z0-9_-]+-[0-9a-f]{10}$")
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["top", "bottom", "left", "right", "x"]) | st.text(max_size=4),
                      inner, max_size=5),
    max_leaves=12)
_numberish = st.text(alphabet="0123456789+-.eE ,:xXnaNinf\t", max_size=12)
_tube_lines = st.lists(st.one_of(_numberish, st.text(max_size=10)), min_size=0, max_size=11) \
    .map(",".join) | st.text(max_size=80)


def _only_entry_problems(call, *args):
    """Run a parser; any exception other than EntryProblem fails the property."""
    try:
        return call(*args)
    except EntryProblem as problem:
        assert problem.reason in set(Reason)
        assert problem.message
        return None


@PROPERTY
@given(line=_tube_lines)
def test_tube_lines_parse_or_raise_entry_problems(line):
    tube = _only_entry_problems(parse_tube, line)
    if tube is not None:
        assert tube.height > 0 and tube.width > 0 and 0 <= tube.start <= tube.end
        assert "/" not in tube.clip_name or "/" in tube.video_name


@PROPERTY
@given(stem=st.text(max_size=60) | st.builds(
    lambda v, p, c, f: f"Clip+{v}+P{p}+C{c}+F{f}", st.text(max_size=12), _numberish,
    _numberish, _numberish))
def test_vfhq_clip_names_parse_or_raise_entry_problems(stem):
    name = _only_entry_problems(parse_clip_name, stem)
    if name is not None:
        assert name.video_id and 0 <= name.start < name.end


@PROPERTY
@given(text=st.lists(st.sampled_from(["H", "W", "FPS", "CROP", "h:", "fps", "x"]).flatmap(
    lambda key: _numberish.map(lambda v: f"{key} {v}")) | st.text(max_size=30), max_size=6)
    .map("\n".join))
def test_vfhq_headers_parse_or_raise_entry_problems(text):
    header = _only_entry_problems(parse_header, text)
    if header is not None:
        for value in (header.height, header.width, header.fps):
            assert value is None or value > 0


@PROPERTY
@given(box=_json_values, start=_json_values, end=_json_values)
def test_json_values_parse_or_raise_entry_problems(box, start, end):
    _only_entry_problems(tblr_box, box)
    _only_entry_problems(number, start, "value")
    result = _only_entry_problems(seconds_range, start, end)
    if result is not None:
        assert 0 <= result[0] < result[1]


# --- names: never outside the output folder, always a readable key ---------------------------

HOSTILE_NAMES = ["../../etc/passwd", "/etc/shadow", "a\x00b", "x" * 5000, "Élodie-采访 ☃",
                 "..", ".", "", "-rf --no-preserve-root", "a/b\\c", "new\nline", "\ud800lone",
                 "key.with.dots", "CON", "日本語" * 40, " ", "%2e%2e%2f"]
_any_name = st.text(max_size=300) | st.sampled_from(HOSTILE_NAMES)


@PROPERTY
@given(name=_any_name)
def test_safe_ids_and_sample_keys_are_plain_file_names(name):
    clip_id = safe_id(name)
    assert _SAFE.match(clip_id) and not clip_id.startswith(".") and len(clip_id) <= 100
    key = sample_key(name)
    assert _KEY.match(key) and len(key) <= 64 + 11
    assert os.path.basename(f"{key}.{image_ext(0)}") == f"{key}.{image_ext(0)}"


def test_hostile_identity_names_round_trip_through_a_shard_and_webdataset(tmp_path):
    import webdataset as wds

    from curation.pipeline.tar_writer import Sample, encode_json, write_shard

    out = tmp_path / "out"
    ids = [n for n in HOSTILE_NAMES if "\ud800" not in n] + ["\ud800lone"]
    samples = [Sample(sample_key(i), [("json", encode_json({"identity_id": safe_id(i)}))])
               for i in ids]
    assert len({s.key for s in samples}) == len(samples)
    write_shard(out / "train" / "mfhq-train-000000.tar", samples)
    assert [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] == \
        ["train/mfhq-train-000000.tar"]
    with tarfile.open(out / "train" / "mfhq-train-000000.tar") as archive:
        for member in archive:
            assert "/" not in member.name and not member.name.startswith(".")
            target = (tmp_path / "x" / member.name).resolve()
            assert target.parent == (tmp_path / "x").resolve()
    read = [s["__key__"] for s in wds.WebDataset(str(out / "train" / "mfhq-train-000000.tar"),
                                                 shardshuffle=False)]
    assert read == [s.key for s in samples]


def test_hostile_names_in_metadata_become_records_with_safe_ids(tmp_path):
    from curation.sources import enumerate_source

    root = tmp_path / "celebvhq"
    entries = {name: {"ytb_id": name, "duration": {"start_sec": 0, "end_sec": 2},
                      "bbox": {"top": 0, "bottom": 10, "left": 0, "right": 10}}
               for name in HOSTILE_NAMES if "\ud800" not in name}
    root.mkdir()
    (root / "celebvhq_info.json").write_text(json.dumps({"clips": entries}), encoding="utf-8")
    people = tmp_path / "folder" / "Ünï cødé\nname -rf"
    people.mkdir(parents=True)
    (people / ("v" * 200 + ".mp4")).write_bytes(b"not a video")
    (people / "..dots.mp4").write_bytes(b"not a video")
    records = list(enumerate_source("celebvhq", root)) + \
        list(enumerate_source("folder", tmp_path / "folder"))
    assert records
    for record in records:
        assert _SAFE.match(record.clip_id) and not record.clip_id.startswith(".")
        assert _KEY.match(sample_key(record.identity_id or "x"))
        if record.video_path:
            assert Path(record.video_path).resolve().is_relative_to(tmp_path.resolve())
        else:
            assert record.reason in set(Reason)


# --- videos that block or run long --------------------------------------------------------------

@pytest.fixture(scope="module")
def analyzer():
    from curation.faces.analysis import AnalysisConfig, FaceAnalyzer

    with FaceAnalyzer(AnalysisConfig(face_detector="mediapipe", min_face_size=64,
                                     crop_size=64, clip_time_limit_s=0.0)) as a:
        yield a


def _clip(path: Path) -> ClipRecord:
    return ClipRecord(source="folder", clip_id="c", original_clip_id="c",
                      identity_id="folder:x", source_video_id="x", video_path=str(path))


@pytest.mark.timeout(120)
def test_a_fifo_named_mp4_is_recorded_without_blocking(analyzer, tmp_path):
    fifo = tmp_path / "blocking.mp4"
    os.mkfifo(fifo)
    done = threading.Event()
    result = {}

    def analyse():
        result["a"] = analyzer.analyze_clip(_clip(fifo))
        done.set()

    threading.Thread(target=analyse, daemon=True).start()
    if not done.wait(60):
        # Unblock the reader (so the test process can exit) before failing.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("analysing a FIFO blocked")
    assert result["a"].status == "failed" and result["a"].reason in set(Reason)


def test_a_real_video_past_its_time_limit_is_recorded_as_timeout(analyzer, demo_corpus):
    paths, _ = demo_corpus
    video = sorted((paths.corpus / "folder").rglob("clip_0.mp4"))[0]
    outcome = analyzer.analyze_clip(_clip(video))
    assert (outcome.status, outcome.reason) == ("failed", Reason.VIDEO_TIMEOUT)
    assert "exceeded" in outcome.message


def test_a_truncated_and_a_random_bytes_video_are_records(analyzer, demo_corpus, tmp_path):
    from curation.faces.analysis import AnalysisConfig, FaceAnalyzer

    paths, _ = demo_corpus
    video = sorted((paths.corpus / "folder").rglob("clip_0.mp4"))[0]
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(os.urandom(50_000))
    header_only = tmp_path / "header.mp4"
    header_only.write_bytes(video.read_bytes()[:64])
    with FaceAnalyzer(AnalysisConfig(face_detector="mediapipe", min_face_size=64,
                                     crop_size=64)) as patient:
        for path in (truncated, noise, header_only):
            outcome = patient.analyze_clip(_clip(path))
            assert outcome.status in ("failed", "skipped"), path
            assert outcome.reason in set(Reason) and outcome.reason != Reason.INTERNAL_ERROR
