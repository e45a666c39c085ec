"""Planning at MFHQ's full size: enumeration, grouping, splits and the shard plan.

    python bench/planning_scale.py                 # --scale 0.1: a tenth of every dataset
    python bench/planning_scale.py --scale 1       # the real sizes (~640k files; ~2 GB disk)
    python bench/planning_scale.py --workdir /data/planbench   # keep the generated tree

Generates metadata of the same shape as the released files, at `--scale` times their size:

    CelebV-HQ        celebvhq_info.json, 35,666 clips of 15,653 videos, processed <clip>.mp4
    CelebV-Text      celebvtext_info.json (v0.11 flat shape), 70,000 clips, videos/<clip>.mp4
    VFHQ             16,000 Clip+<vid>+P<n>+C<k>+F<s>-<e>.txt (header + one line per frame),
                     each with its <clip>.mp4
    TalkingHead-1KH  data_list/{train,val}_video_tubes.txt, 500,000 tubes, each tube's
                     processed clip <chunk>_S.._E.._L.._T.._R.._B...mp4

Videos are empty files: planning never opens a video, only the file index sees them. Then, in
a fresh process (so the generator's memory is not counted), times each stage of the build's
planning on one core and samples its resident memory every 5 ms:

    index      one walk of each source root (curation.sources.common.build_index)
    enumerate  the adapters turn metadata + index into clip records
    plan       takedown split, identity grouping, the split tie-up, shards (plan_from_records)
    plan.json  the plan as the bytes the build writes

and prints entries/s and peak RSS per stage, and the projection to the full size (time scales
linearly in entries; memory at the measured bytes per entry). Targets at full size: under 2
minutes and under 2 GB of driver memory for all four datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # appended: a --baseline child's PYTHONPATH (another checkout) must win
    sys.path.append(str(REPO))

FULL = {"celebvhq": 35_666, "celebvtext": 70_000, "vfhq": 16_000, "talkinghead1kh": 500_000}
CELEBVHQ_VIDEOS = 15_653
VFHQ_FRAME_LINES = 120


# --- the generated tree ---------------------------------------------------------------------

def _ytid(rng: random.Random) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(rng.choice(alphabet) for _ in range(11))


def _touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o644))


def _box(rng: random.Random) -> dict:
    left, top = round(rng.uniform(0.1, 0.4), 4), round(rng.uniform(0.0, 0.2), 4)
    return {"top": top, "bottom": round(top + 0.6, 4), "left": left,
            "right": round(left + 0.4, 4)}


def generate(root: Path, scale: float, seed: int = 0) -> dict[str, int]:
    """The four datasets under root/<kind>; returns files written per kind."""
    rng = random.Random(seed)
    counts = {}
    # CelebV-HQ: 35,666 clips of 15,653 YouTube videos, processed clips only.
    n = int(FULL["celebvhq"] * scale)
    videos = [_ytid(rng) for _ in range(max(1, int(CELEBVHQ_VIDEOS * scale)))]
    clips = {}
    for i in range(n):
        ytb = videos[i % len(videos)]
        start = round(rng.uniform(0, 300), 2)
        clips[f"{ytb}_{i // len(videos)}_{i % 3}"] = {
            "ytb_id": ytb, "duration": {"start_sec": start, "end_sec": round(start + 8.2, 2)},
            "bbox": _box(rng),
            "attributes": {"appearance": [rng.randint(0, 1) for _ in range(40)],
                           "action": [rng.randint(0, 1) for _ in range(35)],
                           "emotion": {"sep_flag": False, "labels": "neutral"}},
            "version": "v0.1"}
    base = root / "celebvhq"
    base.mkdir(parents=True, exist_ok=True)
    (base / "celebvhq_info.json").write_text(json.dumps(
        {"meta_info": {"appearance_mapping": [], "action_mapping": []}, "clips": clips}))
    _touch(base / "35666", [f"{k}.mp4" for k in clips])
    counts["celebvhq"] = len(clips) + 1
    # CelebV-Text v0.11: flat map keyed by clip file name, ~2.3 clips per video.
    n = int(FULL["celebvtext"] * scale)
    videos = [_ytid(rng) for _ in range(max(1, int(n / 2.3)))]
    entries = {}
    for i in range(n):
        ytb = videos[i % len(videos)]
        meta = f"{ytb}_{i // len(videos)}"
        start = round(rng.uniform(0, 600), 2)
        entries[f"{meta}_0.mp4"] = {
            "meta_video_names": meta, "ytb_id": ytb,
            "duration": {"start_sec": start, "end_sec": round(start + 7.6, 2)},
            "bbox": _box(rng), "version": "v0.11"}
    base = root / "celebvtext"
    base.mkdir(parents=True, exist_ok=True)
    (base / "celebvtext_info.json").write_text(json.dumps(entries))
    _touch(base / "videos", list(entries))
    counts["celebvtext"] = len(entries) + 1
    # VFHQ: one metadata file per clip (header + a line per frame) and its clip video.
    n = int(FULL["vfhq"] * scale)
    base = root / "vfhq"
    (base / "meta_info").mkdir(parents=True, exist_ok=True)
    names = []
    videos = [_ytid(rng) for _ in range(max(1, n // 5))]
    for i in range(n):
        vid = videos[i % len(videos)]
        first = rng.randint(0, 5000)
        stem = f"Clip+{vid}+P{i % 3}+C{i // len(videos)}+F{first}-{first + VFHQ_FRAME_LINES + 1}"
        lines = ["H 1080", "W 1920", "FPS 25", "CROP 600 100 1300 800"]
        lines += [f"{first + 1 + f} 700 200 1200 700 800 400 1000 400 900 500 820 600 980 600"
                  for f in range(VFHQ_FRAME_LINES)]
        (base / "meta_info" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        names.append(f"{stem}.mp4")
    _touch(base / "clips", names)
    counts["vfhq"] = 2 * n
    # TalkingHead-1KH: 500,000 tubes in two listing files, one processed clip per tube.
    n = int(FULL["talkinghead1kh"] * scale)
    base = root / "talkinghead1kh"
    (base / "data_list").mkdir(parents=True, exist_ok=True)
    # ~3 tubes per 1-minute chunk, 17 chunks per video (TalkingHead-1KH's 500k tubes)
    chunks = [f"{vid}_{k:04d}" for vid in (_ytid(rng) for _ in range(max(1, n // 51)))
              for k in range(17)]
    lines, clip_files = {"train": [], "val": []}, []
    for i in range(n):
        chunk = chunks[i % len(chunks)]
        start = (i // len(chunks)) * 300
        end, left, top = start + 299, rng.randint(100, 600), rng.randint(50, 300)
        right, bottom = left + 400, top + 400
        lines["val" if i % 50 == 0 else "train"].append(
            f"{chunk},1080,1920,{start},{end},{left},{top},{right},{bottom}")
        clip_files.append(f"{chunk}_S{start}_E{end}_L{left}_T{top}_R{right}_B{bottom}.mp4")
    for split, text in lines.items():
        (base / "data_list" / f"{split}_video_tubes.txt").write_text("\n".join(text) + "\n")
    # Real trees spread files over sub-folders; so does this one (1,000 per folder).
    for start in range(0, len(clip_files), 1000):
        _touch(base / "cropped_clips" / f"{start // 1000:04d}", clip_files[start:start + 1000])
    counts["talkinghead1kh"] = n + 2
    return counts


# --- the measurement ------------------------------------------------------------------------

class PeakRSS:
    """Samples this process's resident memory every `interval` s; `peak()` since `reset()`."""

    def __init__(self, interval: float = 0.005):
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._peak = max(self._peak, self.rss())

    def reset(self) -> None:
        self._peak = self.rss()

    def peak(self) -> int:
        return max(self._peak, self.rss())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


def measure(root: Path) -> list[dict]:
    """Time and peak RSS of each planning stage on the tree under root (this process)."""
    from curation.pipeline.config import BuildConfig
    from curation.pipeline.plan import plan_from_records, plan_json_bytes
    from curation.sources import _ADAPTERS, group_identities
    from curation.sources.common import build_index

    sampler = PeakRSS()
    stages = []

    def stage(name: str, entries: int, unit: str, fn):
        sampler.reset()
        t, cpu = time.perf_counter(), time.process_time()
        result = fn()
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        stages.append({"stage": name, "seconds": seconds, "cpu": cpu, "entries": entries(result)
                       if callable(entries) else entries, "unit": unit,
                       "peak_rss": sampler.peak()})
        return result

    kinds = ["celebvhq", "celebvtext", "vfhq", "talkinghead1kh"]
    records = []
    for kind in kinds:
        # (a baseline checkout's FileIndex may hold lists per name)
        index = stage(f"index {kind}", lambda ix: ix.n_files() if hasattr(ix, "n_files")
                      else sum(len(p) for p in ix.files.values()),
                      "files", lambda kind=kind: build_index(root / kind))
        records += stage(f"enumerate {kind}", len, "records",
                         lambda kind=kind, index=index: list(_ADAPTERS[kind](index)))
        del index
    plan = stage("plan", lambda p: len(p.identities), "identities",
                 lambda: plan_from_records(records, takedown=set(), test_fraction=0.02,
                                           identities_per_shard=256, limit=None,
                                           group_fn=group_identities))
    config = BuildConfig(sources=[(k, str(root / k)) for k in kinds])
    blob = stage("plan.json", lambda b: len(plan.identities), "identities",
                 lambda: plan_json_bytes(plan, config.config_hash(), config.to_json()))
    stages.append({"stage": "plan.json size", "seconds": 0.0, "cpu": 0.0, "entries": len(blob),
                   "unit": "bytes", "peak_rss": sampler.peak()})
    sampler.stop()
    return stages


def report(stages: list[dict], scale: float) -> None:
    """The table; projections use CPU seconds (the figure a loaded machine cannot inflate: the
    stages are single-threaded, so CPU seconds are the wall time on one idle core)."""
    mb = 1 << 20
    print(f"{'stage':<26} {'entries':>9} {'unit':<10} {'wall s':>7} {'CPU s':>7} "
          f"{'entries/CPU s':>13} {'peak RSS MB':>11}")
    wall = cpu = 0.0
    for s in stages:
        if s["unit"] == "bytes":
            print(f"{s['stage']:<26} {s['entries'] / mb:>9.1f} MB")
            continue
        wall, cpu = wall + s["seconds"], cpu + s["cpu"]
        rate = s["entries"] / s["cpu"] if s["cpu"] else float("inf")
        print(f"{s['stage']:<26} {s['entries']:>9} {s['unit']:<10} {s['seconds']:>7.2f} "
              f"{s['cpu']:>7.2f} {rate:>13.0f} {s['peak_rss'] / mb:>11.0f}")
    peak = max(s["peak_rss"] for s in stages)
    print(f"{'total':<26} {'':>9} {'':<10} {wall:>7.2f} {cpu:>7.2f} {'':>13} {peak / mb:>11.0f}")
    # Projection: time is linear in entries; memory above the interpreter's start too.
    baseline = stages[0]["peak_rss"] if stages else 0
    full_s = cpu / scale
    full_mb = (baseline + (peak - baseline) / scale) / mb
    verdict_t = "met" if full_s < 120 else "missed"
    verdict_m = "met" if full_mb < 2048 else "missed"
    print(f"projected to the full size (scale 1): {full_s:.0f} CPU s (target < 120 s: "
          f"{verdict_t}), peak RSS {full_mb:.0f} MB (target < 2048 MB: {verdict_m}; "
          f"{baseline / mb:.0f} MB of it is the interpreter with the build's imports)")
    print(f"FIGURES scale={scale} wall_s={wall:.2f} cpu_s={cpu:.2f} peak_rss_mb={peak / mb:.0f} "
          f"projected_cpu_s={full_s:.0f} projected_rss_mb={full_mb:.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.1,
                        help="size relative to the real datasets (1 = full size)")
    parser.add_argument("--workdir", default=None,
                        help="generate (or reuse) the tree here; default: a temporary folder")
    parser.add_argument("--baseline", default=None, metavar="CHECKOUT",
                        help="also measure the planning code of another checkout on the same "
                             "tree (e.g. `git worktree add /tmp/base <commit>`) and print ratios")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:      # the child: measure only, print JSON
        print(json.dumps(measure(Path(args.measure))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp) / f"scale-{args.scale:g}"
        marker = root / "generated.json"
        if marker.exists():
            counts = json.loads(marker.read_text())
        else:
            t = time.perf_counter()
            counts = generate(root, args.scale)
            marker.write_text(json.dumps(counts))
            print(f"generated {sum(counts.values())} files in {time.perf_counter() - t:.0f} s: "
                  f"{counts}")
        stages = _measure_in_child(root, REPO)
        base = _measure_in_child(root, Path(args.baseline)) if args.baseline else None
    print(f"scale {args.scale:g}: {sum(counts.values())} files")
    report(stages, args.scale)
    if base is not None:
        print(f"\nbaseline: {args.baseline}")
        report(base, args.scale)
        ours = {s["stage"]: s for s in stages}
        print(f"\n{'stage':<26} {'CPU s ratio base/ours':>22} {'peak RSS base/ours MB':>24}")
        for b in base:
            o = ours.get(b["stage"])
            if o is None or b["unit"] == "bytes":
                continue
            print(f"{b['stage']:<26} {b['cpu'] / max(o['cpu'], 1e-9):>22.2f} "
                  f"{b['peak_rss'] / (1 << 20):>12.0f} / {o['peak_rss'] / (1 << 20):<9.0f}")
        total_b, total_o = sum(s["cpu"] for s in base), sum(s["cpu"] for s in stages)
        print(f"RATIO cpu base/ours={total_b / total_o:.2f} "
              f"peak_rss base/ours={max(s['peak_rss'] for s in base) / max(s['peak_rss'] for s in stages):.2f}")
    return 0


def _measure_in_child(root: Path, checkout: Path) -> list[dict]:
    """The stages measured in a fresh process running `checkout`'s code, pinned to one core
    where `taskset` exists (the target is for one core)."""
    pin = ["taskset", "-c", "0"] if _has_taskset() else []
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = subprocess.run([*pin, sys.executable, str(REPO / "bench" / "planning_scale.py"),
                          "--measure", str(root)], check=True, capture_output=True, text=True,
                         timeout=3600, env=env, cwd=checkout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _has_taskset() -> bool:
    from shutil import which

    return which("taskset") is not None


if __name__ == "__main__":
    sys.exit(main())
