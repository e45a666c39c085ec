"""The streaming build's own parts (issue 22): its timeline (busy time per stage, idle CPU-s),
its work files (raw pixels, read once, redone when of another format) and the per-identity
stage writing the same shard as one pass over the shard."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from curation.pipeline.finalize import build_timeline, timeline_lines


def test_idle_cpu_is_the_free_cpu_time_from_the_first_analysis_to_the_last_span():
    spans = [("analysis", 10.0, 20.0, True), ("analysis", 10.0, 15.0, True),
             ("identity", 20.0, 22.0, True), ("shard", 22.0, 22.5, True)]
    timeline = build_timeline(spans, cpus=2, started_at=4.0)
    assert timeline["startup_s"] == 6.0
    assert timeline["working_phase_s"] == 12.5
    # 15-20 one CPU free, 20-22.5 one CPU free: 7.5 CPU-s of 25.
    assert timeline["idle_cpu_s"] == pytest.approx(7.5)
    assert timeline["idle_fraction"] == pytest.approx(7.5 / 25)
    assert sum(timeline["idle_cpu_s_by_tenth"]) == pytest.approx(7.5, abs=0.05)
    assert timeline["idle_cpu_s_by_tenth"][0] == 0.0          # both CPUs busy at first
    assert timeline["stages"]["analysis"] == {"spans": 2, "busy_s": 15.0, "max_s": 10.0,
                                              "first_s": 0.0, "last_s": 10.0}
    assert "idle 7.5 CPU-s (30%)" in "\n".join(timeline_lines(timeline))


def test_quality_on_a_gpu_keeps_no_cpu_busy_and_more_spans_than_cpus_leave_none_idle():
    on_gpu = build_timeline([("analysis", 0.0, 4.0, True), ("quality", 0.0, 4.0, False)],
                            cpus=2, started_at=0.0)
    assert on_gpu["idle_cpu_s"] == pytest.approx(4.0)
    crowded = build_timeline([("analysis", 0.0, 4.0, True)] * 3, cpus=2, started_at=0.0)
    assert crowded["idle_cpu_s"] == 0.0 and crowded["busy_cpu_s"] == pytest.approx(8.0)
    assert build_timeline([], cpus=2, started_at=0.0) == {}


def _analysis_with_faces(size: int = 32):
    from curation.faces.analysis import ClipAnalysis, FaceCandidate

    rng = np.random.default_rng(0)
    faces = []
    for i in range(3):
        face = FaceCandidate("c", i, i / 2, (0.0, 0.0, 10.0, 10.0), 0.9, 200.0, "candidate",
                             None, yaw=float(i), pitch=0.0, roll=0.0,
                             landmarks5=[[1.0, 2.0]] * 5, sharpness=float(i))
        face.crop = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        face.mask = np.where(rng.random((size, size)) > 0.5, 255, 0).astype(np.uint8)
        faces.append(face)
    rejected = FaceCandidate("c", 3, 1.5, (0.0, 0.0, 5.0, 5.0), 0.5, 20.0, "rejected",
                             "face_too_small")
    return ClipAnalysis("c", "ok", None, "", 4, 64, 64, 2.0, 8, [*faces, rejected])


def test_a_work_file_gives_back_the_exact_pixels_of_the_faces_asked_for(tmp_path):
    from curation.pipeline.analyze import ClipOutcome, read_outcome, read_work, write_work

    analysis = _analysis_with_faces()
    path = tmp_path / "w.tar"
    write_work(path, analysis, ClipOutcome("ok", None, "", 1.0))
    assert read_outcome(path).work == str(path)
    work = read_work(path, lambda cand: cand.work_index in (0, 2))
    assert [c.usable_in_work for c in work.candidates] == [True, True, True, False]
    assert sorted(work.images) == [0, 2]
    for index in (0, 2):
        crop, mask = work.images[index]
        assert np.array_equal(crop, analysis.candidates[index].crop)
        assert np.array_equal(mask, analysis.candidates[index].mask)
    with tarfile.open(path) as tar:      # the pixels nobody asked for stay unread and raw
        assert {m.name for m in tar.getmembers()} >= {"c1.rgb", "m1.bits"}


def test_a_work_file_of_an_older_format_is_not_taken_as_done(tmp_path):
    from curation.pipeline.analyze import read_outcome

    meta = json.dumps({"outcome": {"status": "ok", "reason": None, "message": "",
                                   "seconds": 1.0}, "clip_id": "c", "candidates": []}).encode()
    path = tmp_path / "old.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("meta.json")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    with pytest.raises(ValueError, match="work format"):
        read_outcome(path)


@pytest.mark.slow
def test_the_demo_build_records_busy_time_per_stage_and_its_idle_cpu(demo_build):
    run = json.loads((demo_build.manifests_dir / "run.json").read_text())
    timeline = run["timeline"]
    assert set(timeline["stages"]) == {"warm-up", "analysis", "identity", "quality", "shard"}
    assert timeline["stages"]["shard"]["spans"] == run["shards"]["built_this_run"]
    assert 0.0 <= timeline["idle_fraction"] <= 1.0
    assert timeline["startup_s"] > 0 and timeline["working_phase_s"] > 0
    assert run["timings_s"]["startup"] == timeline["startup_s"]
