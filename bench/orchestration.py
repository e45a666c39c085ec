"""The build's orchestration cost per clip: the real pipeline over many clips whose analysis
is next to nothing, so what is left is scheduling, task start, work files and the driver.

    python bench/orchestration.py                    # 4,000 clips, 2 per identity
    python bench/orchestration.py --clips 20000 --num-cpus 2

Each clip is a 64-byte file named `.mp4` that is not a video: the real analysis task runs
(its start told to the clip clock, PyAV's probe, a failed outcome and its work file), fails in
milliseconds,
and the identity, shard and finalize stages run as for any build whose clips all fail (their
identities are dropped as `too_few_faces`, every shard is written with its manifest parts).
The build is the real one (`curation.executor.runner.run_build`, embedded Ray with
`--num-cpus`), and its own timeline (`run.json`) says where the time went.

Printed: clips per second the driver sustained over the working phase, the driver's peak
memory (VmHWM) over the whole build and over the pipeline alone (`run_shards`: what grows
with the clips in flight and done, apart from the plan and the finalize) and their growth per
clip, the orchestration seconds per clip (the working phase's CPU-seconds, all of them spent on
near-empty work), and those projected to TalkingHead-1KH's 600,000 clips against the analysis a
real clip costs (12 s at 2 frames/s on this machine's floor of about 46 frames/s per process:
about 0.5 s of CPU per clip).

Measured 2026-12-04 on 2 CPUs shared with other work (load 1-10), the same script on the code
before and after the driver's per-clip state was cut (outcomes kept only until an identity's
prepare task has them, identity states made as reached, spans in flat arrays, no marker file
per clip); slope of the driver's peak per extra clip, whole build / pipeline alone:

    --clips 8000  (8,000 and 16,000)   before 3.66 / 2.51 kB   after 2.29 / 1.28 kB
    --clips 4000  (4,000 and 8,000)    before 9.04 / 3.71 kB   after 5.30 / 0.92 kB
    --clips 2000  (2,000 and 4,000)    before 11.2 / 5.07 kB   after 10.7 / 4.25 kB

Peaks move in steps of a few MB (the allocator), so small builds' slopes are mostly noise; the
larger the builds, the truer. Inside one 3,000-clip build, from its 600th to its 2,600th clip,
the driver's RSS grew 1.73 kB a clip before and 0.73 after, and Python's own objects
(tracemalloc) 3.2 kB before and 0.06 kB after; the rest is below Python (Ray's core worker, the
allocator; Ray's task events off, `RAY_task_events_report_interval_ms=0`, changed nothing).
What the pipeline's peak still grows by is mostly the plan's clips, held through the build;
the whole build's peak comes after it, in the finalize's count of outcomes (it reads every
manifest). Timings at this load are noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))     # appended: a PYTHONPATH checkout wins

FULL_CLIPS = 600_000               # TalkingHead-1KH's tubes
REAL_CLIP_CPU_S = 24 / 46.0        # 12 s at 2 frames/s, the floor's ~46 frames/s per process


def vm_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_corpus(root: Path, clips: int, per_identity: int) -> None:
    """`clips` non-videos in the folder layout, `per_identity` per identity folder."""
    for i in range(clips):
        folder = root / f"p{i // per_identity:07d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"c{i % per_identity}.mp4").write_bytes(b"not a video, " * 5)


def reset_peak() -> None:
    """VmHWM starts again from VmRSS (Linux: /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def one_build(clips: int, per_identity: int, num_cpus: int, per_shard: int) -> dict:
    """One build in this (fresh) process; its figures."""
    from curation.executor import runner
    from curation.executor.runner import run_build
    from curation.pipeline.config import parse_args

    # The driver's peak while the pipeline runs (run_shards), apart from the peak of the whole
    # build: what grows with the clips in flight and done, not the plan or the finalize.
    pipeline_peak = {}
    run_shards = runner.run_shards

    def measured(*args, **kwargs):
        before = vm_mb("VmHWM")
        reset_peak()
        try:
            return run_shards(*args, **kwargs)
        finally:
            pipeline_peak["mb"] = round(vm_mb("VmHWM"), 1)
            pipeline_peak["end_mb"] = round(vm_mb("VmRSS"), 1)
            pipeline_peak["before_mb"] = round(before, 1)

    runner.run_shards = measured

    with tempfile.TemporaryDirectory() as tmp:
        root, output = Path(tmp) / "corpus", Path(tmp) / "build"
        write_corpus(root, clips, per_identity)
        config = parse_args([
            "--source", f"folder={root}", "--output", str(output), "--no-progress",
            "--num-cpus", str(num_cpus), "--face-detector", "mediapipe",
            "--quality-model", "piqe", "--identity-model", "none",
            "--identities-per-shard", str(per_shard)], prog="bench")
        started = time.perf_counter()
        try:
            summary = run_build(config)
        finally:
            runner.run_shards = run_shards
        wall = time.perf_counter() - started
        run = json.loads((output / "manifests" / "run.json").read_text())
    timeline = run.get("timeline", {})
    stages = {k: v.get("busy_s") for k, v in timeline.get("stages", {}).items()}
    return {"clips": summary.counts["clips_read"], "shards": summary.shards_total,
            "wall_s": round(wall, 2), "working_s": timeline.get("working_phase_s"),
            "busy_cpu_s": timeline.get("busy_cpu_s"), "stages_busy_s": stages,
            "peak_mb": max(round(vm_mb("VmHWM"), 1), pipeline_peak.get("before_mb", 0.0)),
            "pipeline_peak_mb": pipeline_peak.get("mb"),
            "pipeline_end_mb": pipeline_peak.get("end_mb")}


def run_child(clips: int, ns: argparse.Namespace) -> dict:
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--child", "--clips", str(clips),
                           "--per-identity", str(ns.per_identity), "--num-cpus",
                           str(ns.num_cpus), "--identities-per-shard",
                           str(ns.identities_per_shard)],
                          capture_output=True, text=True, timeout=7200, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=2000,
                        help="the smaller build; a second one has twice as many")
    parser.add_argument("--per-identity", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--identities-per-shard", type=int, default=256)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.child:
        print(json.dumps(one_build(ns.clips, ns.per_identity, ns.num_cpus,
                                   ns.identities_per_shard)))
        return 0
    small, large = run_child(ns.clips, ns), run_child(2 * ns.clips, ns)
    for run in (small, large):
        print(f"{run['clips']:,} clips ({run['shards']} shards), {ns.num_cpus} CPUs: "
              f"{run['wall_s']} s in all, working phase {run['working_s']} s, busy "
              f"{run['busy_cpu_s']} CPU-s {json.dumps(run['stages_busy_s'])}, driver peak "
              f"{run['peak_mb']} MB (pipeline: peak {run['pipeline_peak_mb']} MB, "
              f"{run['pipeline_end_mb']} MB at its end)")
    extra = large["clips"] - small["clips"]
    per_clip_s = (large["working_s"] - small["working_s"]) / extra        # wall, per clip
    per_clip_cpu = per_clip_s * ns.num_cpus
    per_clip_mb = (large["peak_mb"] - small["peak_mb"]) / extra
    pipeline_mb = (large["pipeline_peak_mb"] - small["pipeline_peak_mb"]) / extra
    print(f"per extra clip (the slope between the two builds): {per_clip_s * 1000:.1f} ms of "
          f"working phase, i.e. {1 / per_clip_s:,.0f} clips/s sustained and "
          f"{per_clip_cpu * 1000:.1f} CPU-ms of orchestration; driver peak "
          f"{per_clip_mb * 1024:.2f} kB (during the pipeline: {pipeline_mb * 1024:.2f} kB)")
    print(f"projected to {FULL_CLIPS:,} clips on {ns.num_cpus} CPUs: "
          f"{per_clip_s * FULL_CLIPS / 3600:,.1f} h of driver-paced orchestration, "
          f"{per_clip_cpu / REAL_CLIP_CPU_S * 100:.1f} % of the analysis a real 12 s clip "
          f"costs ({REAL_CLIP_CPU_S:.2f} CPU-s); driver peak "
          f"~{small['peak_mb'] + per_clip_mb * (FULL_CLIPS - small['clips']):,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
