"""A build over the codecs yt-dlp writes keeps every identity: the demo corpus's real-face videos
transcoded with PyAV's encoders (AV1 in .mp4, VP9 in .webm and .mkv, HEVC, variable-frame-rate
H.264), served as a CelebV-HQ raw download with time ranges and as folders; broken files next to
them are one clip row each with their own reason and the decoder's message, and the build goes
on."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import pytest
from test_codecs import (
    audio_only,
    damaged_index,
    has_encoder,
    mux_all,
    truncated_av1,
    unknown_codec,
)

from curation.build_folder import read_manifest
from curation.records import Reason

ENCODER_OPTIONS = {"libsvtav1": {"preset": "12"}, "libx265": {"log-level": "error"},
                   "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "30",
                                  "b": "0"}}


def transcode(source: Path, target: Path, encoder: str, fmt: str | None = None,
              variable_rate: bool = False) -> Path:
    """Re-encode every frame of `source`; `variable_rate` gives frames alternating durations
    of 0.6 and 1.4 frame periods (the same average rate), as phone videos have."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as reader:
        stream_in = reader.streams.video[0]
        rate = stream_in.average_rate
        writer = av.open(str(target), "w", format=fmt)
        stream = writer.add_stream(encoder, rate=rate)
        stream.width, stream.height = stream_in.codec_context.width, stream_in.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.options = ENCODER_OPTIONS.get(encoder, {})
        tick = Fraction(1, 1000)
        if variable_rate:
            stream.codec_context.time_base = tick

        def frames():
            time_ms = 0.0
            for i, frame in enumerate(reader.decode(stream_in)):
                out = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"),
                                                 format="rgb24")
                if variable_rate:
                    out.pts, out.time_base = round(time_ms), tick
                    time_ms += 1000 / float(rate) * (0.6 if i % 2 else 1.4)
                yield out

        mux_all(writer, stream, frames())
    return target


def _corpus_clip(corpus: dict, clip_id: str) -> dict:
    return next(clip for clip in corpus["clips"] if clip["clip_id"] == clip_id)


@pytest.fixture(scope="module")
def codec_build(demo_corpus, ray_local, tmp_path_factory):
    paths, corpus = demo_corpus
    root = tmp_path_factory.mktemp("codecs")
    hevc = ("libx265", None) if has_encoder("libx265") else ("libvpx-vp9", "matroska")

    # CelebV-HQ: the astronaut's raw download only (no processed clips), as AV1 in .mp4: every
    # clip is cut from it by its time range
    raw_clip = next(clip for clip in corpus["clips"]
                    if clip["source"] == "celebvhq" and clip.get("served_by") == "raw")
    ytb_id = raw_clip["source_video_id"]
    info = json.loads((paths.corpus / "celebvhq" / "celebvhq_info.json").read_text())
    entries = {key: entry for key, entry in info["clips"].items() if entry["ytb_id"] == ytb_id}
    (root / "celebvhq").mkdir()
    (root / "celebvhq" / "celebvhq_info.json").write_text(json.dumps({**info, "clips": entries}))
    transcode(paths.corpus / raw_clip["raw_video"], root / "celebvhq" / "raw" / f"{ytb_id}.mp4",
              "libsvtav1")

    # folders: t1_face1's two clips as VP9 .webm and variable-rate H.264; a second person's two
    # CelebV-HQ processed clips as VP9 .mkv and HEVC (VP9 again where libx265 is missing)
    folder = root / "folder"
    person = folder / "t1_face1"
    transcode(paths.corpus / "folder/t1_face1/clip_0.mp4", person / "clip_0.webm",
              "libvpx-vp9", "webm")
    transcode(paths.corpus / "folder/t1_face1/clip_1.mp4", person / "clip_1.mp4", "libx264",
              variable_rate=True)
    majority = next(case for case in corpus["identity_cases"]
                    if case["kind"] == "mixed_youtube_id")
    mixed = [clip for clip in corpus["clips"] if clip["identity_key"] == majority["identity_key"]
             and clip["clip_id"] not in majority["minority_clips"]][:2]
    other = folder / "second_person"
    transcode(paths.corpus / mixed[0]["video"], other / "a.mkv", "libvpx-vp9", "matroska")
    transcode(paths.corpus / mixed[1]["video"], other / "b.mp4", *hevc)
    # broken files inside t1_face1's folder: its good clips must still make the identity
    broken = tmp_path_factory.mktemp("broken")
    for name, make in [("truncated_av1", truncated_av1), ("unknown_codec", unknown_codec),
                       ("audio_only", audio_only), ("damaged_index", damaged_index)]:
        scratch = broken / name
        scratch.mkdir()
        shutil.copy(make(scratch), person / f"{name}.mp4")

    from curation.executor.runner import run_build
    from curation.pipeline.config import parse_args
    from mfhq.demo import DEMO_BUILD_FLAGS

    output = root / "build"
    run_build(parse_args(["--source", f"celebvhq={root / 'celebvhq'}",
                          "--source", f"folder={folder}", "--output", str(output),
                          *DEMO_BUILD_FLAGS, "--no-progress", "--num-cpus", "2"]))
    return {"output": output, "ytb_id": ytb_id, "entries": sorted(entries),
            "hevc": hevc[0] == "libx265"}


@pytest.mark.slow
def test_no_identity_is_lost_to_codec_or_container(codec_build):
    identities = read_manifest(codec_build["output"] / "manifests", "identities")
    status = dict(zip(identities["identity_id"], identities["status"], strict=True))
    assert status == {f"yt:{codec_build['ytb_id']}": "kept", "folder:t1_face1": "kept",
                      "folder:second_person": "kept"}


@pytest.mark.slow
def test_every_good_clip_is_read_and_records_its_codec_and_decoder(codec_build):
    clips = read_manifest(codec_build["output"] / "manifests", "clips")
    good = clips[~clips["clip_id"].str.contains("truncated|unknown|audio|damaged")]
    by_file = {row.original_clip_id: row for row in good.itertuples()}
    assert all(row.status == "ok" for row in by_file.values()), good[["clip_id", "message"]]
    raw = [by_file[key] for key in codec_build["entries"]]
    assert all((r.codec, r.decoder, r.is_raw) == ("av1", "pyav", True) for r in raw)
    assert all(r.start_sec is not None for r in raw)
    assert (by_file["t1_face1/clip_0"].codec, by_file["t1_face1/clip_0"].decoder) == \
        ("vp9", "decord")
    assert by_file["t1_face1/clip_1"].codec == "h264"
    assert by_file["second_person/a"].codec == "vp9"
    if codec_build["hevc"]:
        assert by_file["second_person/b"].codec == "hevc"


@pytest.mark.slow
def test_each_broken_file_is_one_row_with_its_own_reason_and_the_decoders_message(codec_build):
    clips = read_manifest(codec_build["output"] / "manifests", "clips")
    rows = {row.original_clip_id.split("/")[-1]: row for row in clips.itertuples()
            if row.original_clip_id.startswith("t1_face1/") and "clip_" not in
            row.original_clip_id}
    assert {name: (row.status, row.reason) for name, row in rows.items()} == {
        "truncated_av1": ("failed", Reason.VIDEO_TRUNCATED),
        "unknown_codec": ("failed", Reason.VIDEO_CODEC_UNSUPPORTED),
        "audio_only": ("failed", Reason.VIDEO_NO_STREAM),
        "damaged_index": ("failed", Reason.VIDEO_UNREADABLE),
    }
    assert "partial file" in rows["truncated_av1"].message
    assert "has no video stream" in rows["audio_only"].message
    assert "broken header" in rows["damaged_index"].message
