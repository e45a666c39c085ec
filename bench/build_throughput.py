"""Curation throughput: our build against its floor and a naive baseline, in one run.

    python bench/build_throughput.py                          # 24 identities, naive on 6 of them
    python bench/build_throughput.py --identities 48 --naive-identities 8
    python bench/build_throughput.py --quick                  # tiny smoke run (3 identities)
    python bench/build_throughput.py --clip-seconds 12 --sample-fps 2   # real clip lengths, the
                                                      # build's default sampling

On a generated corpus (the demo corpus generator at `--identities N`, reused when already there)
it measures, on the same plan and with the demo's build settings (mediapipe detector, 256 px
crops, 6 sampled frames/s; PIQE, or TOPIQ-face where its weights are present):

  floor   decode only the frames the pipeline samples, detect faces on them and run FaceMesh on
          the largest big-enough face: the per-frame work no design can avoid. One process, one
          thread, models loaded before the clock starts.
  ours    the real build (`curation.executor.runner.run_build`), end to end, with 1 and with 2 workers
          (fresh output folders). Start-up (from the build's start to its first analysis task,
          the model check, Ray's start and the actors' loading overlapping: the build's own
          timeline in run.json) is reported separately; the "excl. start-up" rows subtract it.
          From the same timeline: the analysis stage's busy CPU-s per sampled frame (against the
          floor's seconds per frame) and the CPU-s left idle during the working phase. Those
          spans are wall-clock time, which grows when processes wait for a core; "process CPU"
          is the CPU time (every thread) of the build's processes, read from /proc while it
          runs (`ProcessCpu`), by kind (analysis, quality, Ray's daemons, worker start-up, ...),
          against the floor's own CPU time: work, whatever the contention.
  naive   written here: decode every frame, analyse every frame (detection, landmarks, pose,
          alignment), score quality on every candidate, then select with the same pose clusters
          and choice rule. Slow, so it runs on an evenly spread subset of the identities and its
          rates are per identity.

--clip-seconds S generates the corpus with S-second clips instead of the demo's 3.52 s (real
datasets: CelebV-HQ 3-20 s, VFHQ often 10 s and more, TalkingHead-1KH tubes up to a minute) and
--sample-fps F builds with F sampled frames/s instead of the demo's 6 (the build's default is 2):
a second configuration, closer to real data, reported beside the demo-settings one.

Goals (issue 22): the whole build with the most workers, start-up included, <= 1.5x the floor
(one plain process); analysis <= 1.3x the floor's cost per frame; idle CPU < 10 % of the
working phase.

`--corpus DIR` runs on an existing corpus folder (e.g. the demo's) instead of generating one;
`--quick` is the smoke run the test suite makes (3 identities, naive on 1).

Prints a table, the per-identity comparison of selected-set quality (same quality model) and pose
spread for ours vs naive, then one final line of figures. Timings on a shared machine are noisy:
check `uptime` first.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")   # the floor and naive run like one Ray worker
# The checkout first: `python bench/build_throughput.py` puts bench/ on the path, not the repo.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from curation import build_folder  # noqa: E402
from curation.democorpus.plan import CLIP_FRAMES, FPS  # noqa: E402
from curation.faces.analysis import AnalysisConfig  # noqa: E402
from curation.pipeline.config import BuildConfig, parse_args  # noqa: E402
from curation.pipeline.plan import IdentityPlan, build_plan  # noqa: E402
from curation.sources import SOURCE_KINDS  # noqa: E402
from mfhq.demo import DEMO_BUILD_FLAGS  # noqa: E402

TARGET_NAIVE_OVER_OURS = 10.0
TARGET_OURS_OVER_FLOOR = 2.0
TARGET_SCALING = 1.7
TARGET_WHOLE_OVER_FLOOR = 1.5      # whole build, start-up included, most workers / floor
TARGET_ANALYSIS_PER_FRAME = 1.3    # analysis busy CPU-s per frame / floor s per frame
TARGET_IDLE = 0.10                 # idle CPU-s / (CPUs x working phase)
# ProcessCpu entries that are not CPU the build spent (the bench's own sampler, a count)
PROCESS_CPU_NOT_WORK = ("sampler", "analysis worker threads (most)")
QUALITY_TOLERANCE = 0.05   # "same" selected quality: within 5 % of naive's mean
DEMO_SAMPLE_FPS = float(DEMO_BUILD_FLAGS[DEMO_BUILD_FLAGS.index("--sample-fps") + 1])


@dataclass
class CurationBenchConfig:
    identities: int = 24
    workdir: str = str(Path(tempfile.gettempdir()) / "mfhq-bench-curation")
    naive_identities: int = 6
    skip_naive: bool = False
    quick: bool = False
    workers: list[int] = field(default_factory=lambda: [1, 2])
    quality_model: str = "auto"      # auto: TOPIQ-face when its weights are present, else piqe
    quality_weights: str | None = None
    topiq_stand_in: bool = False     # TOPIQ-face with random-init weights: its real compute
    floor_twice: bool = True         # floor before and after the builds, the faster one counts
    seed: int = 0
    limit: int | None = None         # only the first N identities of the plan (smoke runs)
    clip_seconds: float | None = None  # corpus clip length; None = the demo's 3.52 s
    sample_fps: float = DEMO_SAMPLE_FPS  # the build's sampled frames/s; the demo's 6 by default
    corpus: str | None = None        # an existing corpus folder instead of a generated one
    identity_model: str | None = None  # None: the demo's (dlib); "none": no identity checks


@dataclass
class StageResult:
    name: str
    identities: int
    clips: int
    frames: int
    seconds: float
    quality_calls: int = 0
    note: str = ""
    # CPU-s (every thread) by kind of process: the floor's own process, or the build's
    # processes as ProcessCpu saw them (analysis, quality, ...)
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_note: str = ""       # Ray's daemons by name, worker processes started

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    @property
    def identities_per_min(self) -> float:
        return 60.0 * self.identities / self.seconds if self.seconds > 0 else float("nan")

    @property
    def seconds_per_identity(self) -> float:
        return self.seconds / self.identities if self.identities else float("nan")

    @property
    def quality_calls_per_identity(self) -> float:
        return self.quality_calls / self.identities if self.identities else float("nan")


@dataclass
class SelectedSet:
    """Selected-set quality and pose spread of one identity."""

    identity_id: str
    kept: bool
    mean_quality: float | None
    yaw_std: float | None
    pitch_std: float | None
    yaw_range: float | None
    pitch_range: float | None


# --- corpus and build settings ---------------------------------------------------------------

def corpus_dir(workdir: Path, identities: int, clip_seconds: float | None) -> Path:
    """Where the corpus of these settings lives (one folder per identity count and clip
    length; the demo's clip length keeps its old name)."""
    name = f"corpus-{identities}" if identities else "corpus-real"
    return workdir / (name + (f"-clip{clip_seconds:g}s" if clip_seconds is not None else ""))


def ensure_corpus(corpus: Path, identities: int, seed: int,
                  clip_seconds: float | None = None) -> dict:
    """The demo corpus with `identities` identities and `clip_seconds` clips (reused when one
    with these settings is there; 0 = the real faces only; None = the demo's 3.52 s)."""
    import json

    from curation.democorpus import build_demo_corpus

    clip_frames = CLIP_FRAMES if clip_seconds is None else int(round(clip_seconds * FPS))
    summary_file = corpus / "corpus.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if (summary.get("seed") == seed and not summary.get("with_bad_inputs")
                and summary.get("clip_frames", CLIP_FRAMES) == clip_frames
                and (not identities or len(summary.get("identities", [])) == identities)):
            return summary
    print(f"[bench] generating a {identities or 'real-faces-only'}-identity corpus of "
          f"{clip_frames / FPS:.2f} s clips in {corpus} (minutes) ...", flush=True)
    return build_demo_corpus(corpus, seed=seed, total_identities=identities,
                             clip_seconds=clip_seconds)


def resolve_quality_model(config: CurationBenchConfig) -> tuple[str, str | None]:
    if config.topiq_stand_in:
        from curation.stand_in_models import write_topiq_stand_in

        return "topiq_nr-face", str(write_topiq_stand_in(Path(config.workdir) / "topiq"))
    if config.quality_model != "auto":
        return config.quality_model, config.quality_weights
    from curation.faces.quality import default_topiq_weights

    weights = Path(config.quality_weights) if config.quality_weights else default_topiq_weights()
    return ("topiq_nr-face", str(weights)) if weights.is_file() else ("piqe", None)


def build_args(corpus: Path, output: Path, workers: int, quality: tuple[str, str | None],
               limit: int | None, sample_fps: float = DEMO_SAMPLE_FPS,
               identity_model: str | None = None) -> list[str]:
    """The build command line: the demo build's settings on the benchmark corpus (sampled
    frames/s replaced by `sample_fps` when it is not the demo's, the identity model by
    `identity_model` when given)."""
    flags = list(DEMO_BUILD_FLAGS)
    if sample_fps != DEMO_SAMPLE_FPS:
        flags[flags.index("--sample-fps") + 1] = f"{sample_fps:g}"
    if identity_model is not None:
        if "--identity-model" in flags:
            flags[flags.index("--identity-model") + 1] = identity_model
        else:
            flags += ["--identity-model", identity_model]
    args = []
    for kind in SOURCE_KINDS:
        if (corpus / kind).is_dir():
            args += ["--source", f"{kind}={corpus / kind}"]
    args += ["--output", str(output), *flags, "--quality-model", quality[0],
             "--num-cpus", str(workers), "--no-progress"]
    if quality[1]:
        args += ["--quality-weights", quality[1]]
    if limit:
        args += ["--limit", str(limit)]
    return args


def analysis_config(build: BuildConfig) -> AnalysisConfig:
    """The analysis settings a build worker uses: the build config's own section."""
    return build.analysis


def spread_subset(identities: list[IdentityPlan], n: int) -> list[IdentityPlan]:
    """n identities evenly spread over the sorted plan (not just the first few)."""
    if n >= len(identities):
        return list(identities)
    picks = np.unique(np.round(np.linspace(0, len(identities) - 1, n)).astype(int))
    return [identities[i] for i in picks]


def _set_threads(n: int) -> None:
    import cv2
    import torch

    cv2.setNumThreads(n)
    torch.set_num_threads(n)


# --- the floor -------------------------------------------------------------------------------

def run_floor(identities: list[IdentityPlan], analysis: AnalysisConfig,
              barrier=None) -> StageResult:
    """Decode the sampled frames, detect faces, FaceMesh on the largest big-enough face.

    `barrier` (a multiprocessing.Barrier): wait on it after loading the models, so that
    parallel floor processes start their clocks together."""
    from curation.faces.decoding import (
        DecodeError,
        frame_range,
        iter_frame_chunks,
        open_frames,
        resize_max_side,
        sample_indices,
    )
    from mfhq_faces.detection import make_detector
    from mfhq_faces.geometry import face_size
    from mfhq_faces.landmarks import FaceMeshLandmarker

    detector = make_detector(analysis.face_detector, analysis.insightface_root)
    landmarker = FaceMeshLandmarker()
    frames = clips = faces = failed = 0
    if barrier is not None:
        barrier.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    for ident in identities:
        for clip in ident.clips:
            clips += 1
            fps_hint = clip.extra.get("fps") if isinstance(clip.extra, dict) else None
            try:
                with open_frames(clip.video_path, fps_hint=fps_hint, num_threads=1) as source:
                    info = source.info
                    first, last = frame_range(info, clip.start_sec, clip.end_sec,
                                              clip.start_frame, clip.end_frame)
                    indices = sample_indices(first, last, info.fps, analysis.sample_fps,
                                             analysis.max_frames_per_clip)
                    for _, chunk in iter_frame_chunks(source, indices,
                                                      analysis.frames_per_chunk):
                        for frame in chunk:
                            frames += 1
                            small, scale = resize_max_side(frame, analysis.detect_max_side)
                            found = [d for d in detector.detect(small)
                                     if face_size(d.bbox) / scale >= analysis.min_face_size]
                            if found:
                                box = max(found, key=lambda d: face_size(d.bbox)).bbox
                                points = landmarker.landmarks(
                                    frame, tuple(v / scale for v in box))
                                faces += points is not None
            except DecodeError:
                failed += 1
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    detector.close()
    landmarker.close()
    note = f"{faces} faces with landmarks" + (f", {failed} clips undecodable" if failed else "")
    return StageResult("floor (sampled decode + detect + landmarks)", len(identities), clips,
                       frames, seconds, 0, note, cpu_s={"floor": cpu})


_BARRIER = None


def _init_floor_process(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier
    _set_threads(1)


def _floor_process(identities: list[IdentityPlan], analysis: AnalysisConfig) -> StageResult:
    return run_floor(identities, analysis, _BARRIER)


def run_floor_parallel(identities: list[IdentityPlan], analysis: AnalysisConfig,
                       processes: int) -> StageResult:
    """The floor's work split over `processes` plain processes (no Ray), clocks started
    together: how far this machine itself scales this kind of work."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    parts = [identities[i::processes] for i in range(processes)]
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context,
                                                initializer=_init_floor_process,
                                                initargs=(barrier,)) as pool:
        results = list(pool.map(_floor_process, parts, [analysis] * processes))
    return StageResult(f"floor, {processes} plain processes (machine ceiling)",
                       sum(r.identities for r in results), sum(r.clips for r in results),
                       sum(r.frames for r in results), max(r.seconds for r in results), 0,
                       "per-process " + ", ".join(f"{r.seconds:.1f} s" for r in results))


# --- ours ------------------------------------------------------------------------------------

def startup_seconds(timings: dict[str, float]) -> float:
    """The build's start-up: from its start to its first analysis task (the build's own
    timeline; the model check, Ray's start and the actors' loading overlap inside it)."""
    return timings.get("startup", 0.0)


class ProcessCpu:
    """CPU-s (user + system, every thread) of this process and all its descendants (Ray's
    daemons, its workers, the quality actors) while a build runs, by kind of process: a
    background thread reads /proc every SAMPLE_S and gives each process's CPU since its last
    sample to what its title says it was doing (a task that started or ended in between gets
    the whole interval, IDLE only when it was idle at both ends). CPU time, unlike the
    timeline's wall-clock spans, does not grow when processes wait for a core: what it says
    is the work done, and per analysis worker the most threads it had (Linux only; empty
    elsewhere)."""

    SAMPLE_S = 0.25
    TASKS = {"ray::_analysis_task": "analysis", "ray::QualityActor": "quality",
             "ray::IDLE": "idle workers", "ray::_prepare_task": "identity tasks",
             "ray::_finish_task": "identity tasks", "ray::_shard_task": "shard writes",
             "ray::_warm_task": "warm-up"}

    def __init__(self):
        import threading

        self.cpu_s: dict[str, float] = {}
        self.daemons: dict[str, float] = {}   # "ray daemons" by process name
        self.workers: set[int] = set()        # worker and actor processes seen
        self.max_threads: dict[str, int] = {}
        self._last: dict[int, tuple[float, str]] = {}
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-process-cpu", daemon=True)
        self.own_cpu_s = 0.0          # the sampler's own cost (it runs in the driver)

    def __enter__(self) -> ProcessCpu:
        if Path("/proc/self/stat").exists():
            self.sample(count=False)      # what this process spent before the build is not its
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def kind(self, pid: int, title: str) -> str:
        if pid == os.getpid():
            return "driver"
        for prefix, kind in self.TASKS.items():
            if title.startswith(prefix):
                return kind
        return "ray daemons"          # raylet, gcs_server, dashboard, agents, log monitor

    def _run(self) -> None:
        while not self._stop.wait(self.SAMPLE_S):
            started = time.thread_time()
            self.sample()
            self.own_cpu_s += time.thread_time() - started
        self.sample()

    def sample(self, count: bool = True) -> None:
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self._hz)
        mine, frontier = set(), [os.getpid()]
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            pid = frontier.pop()
            mine.add(pid)
            frontier.extend(children.get(pid, []))
        for pid in mine:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().decode(errors="replace").split("\0")
                threads = len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                continue
            title = argv[0]
            cpu = stats[pid][1]
            last_cpu, last_title = self._last.get(pid, (0.0, title))   # new: all it spent
            self._last[pid] = (cpu, title)
            if not count:
                continue
            kinds = (self.kind(pid, last_title), self.kind(pid, title))
            kind = kinds[1] if kinds[0] == "idle workers" else kinds[0]
            self.cpu_s[kind] = self.cpu_s.get(kind, 0.0) + cpu - last_cpu
            if kind == "ray daemons":     # which of them: raylet, gcs_server, dashboard, ...
                name = Path(title.split()[0]).name if title.strip() else "?"
                if name.startswith("python"):
                    name = Path(next((a for a in argv[1:] if a.endswith(".py")), name)).name
                self.daemons[name] = self.daemons.get(name, 0.0) + cpu - last_cpu
            if title.startswith("ray::") and kinds[1] != "ray daemons":
                self.workers.add(pid)
            if kinds[1] == "analysis":
                self.max_threads["analysis"] = max(self.max_threads.get("analysis", 0),
                                                   threads)


def run_ours(build: BuildConfig) -> tuple[StageResult, dict[str, float], float, dict]:
    """The whole build in a fresh output folder; (result, build timings, start-up s, the
    build's timeline from run.json)."""
    from curation.executor.runner import format_summary, run_build

    output = Path(build.output)
    if output.exists():
        shutil.rmtree(output)
    started = time.perf_counter()
    with ProcessCpu() as cpu:
        summary = run_build(build)
    seconds = time.perf_counter() - started
    if not summary.ok:
        raise RuntimeError("the build failed:\n" + format_summary(summary))
    startup = startup_seconds(summary.timings)
    clips = build_folder.read_manifest(build.manifests_dir, "clips")
    idents = build_folder.read_manifest(build.manifests_dir, "identities")
    analysed = clips[clips["stage"] == "analysis"]
    result = StageResult(
        f"ours, {build.ray.num_cpus} worker{'s' if build.ray.num_cpus != 1 else ''}", len(idents),
        len(analysed), int(analysed["frames_decoded"].fillna(0).sum()), seconds,
        int(idents["n_scored"].fillna(0).sum()),
        f"{summary.counts['identities_kept']} kept; start-up {startup:.1f} s incl.; clip "
        f"analysis {analysed['analysis_seconds'].fillna(0).sum():.1f} worker-s",
        cpu_s={**cpu.cpu_s, "sampler": cpu.own_cpu_s,
               "driver": cpu.cpu_s.get("driver", 0.0) - cpu.own_cpu_s,   # less the sampler
               "analysis worker threads (most)": cpu.max_threads.get("analysis", 0)},
        cpu_note=f"{len(cpu.workers)} worker/actor processes; Ray's daemons: " + ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(cpu.daemons.items(), key=lambda kv: -kv[1])
            if v >= 0.05))
    return result, summary.timings, startup, summary.timeline


def ours_selected_sets(manifests_dir: Path) -> dict[str, SelectedSet]:
    idents = build_folder.read_manifest(manifests_dir, "identities")
    return {row.identity_id: SelectedSet(row.identity_id, row.status == "kept",
                                         _opt(row.mean_quality), _opt(row.yaw_std),
                                         _opt(row.pitch_std), _opt(row.yaw_range),
                                         _opt(row.pitch_range))
            for row in idents.itertuples()}


def _opt(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


# --- naive -----------------------------------------------------------------------------------

def run_naive(identities: list[IdentityPlan], build: BuildConfig
              ) -> tuple[StageResult, dict[str, SelectedSet]]:
    """Every frame decoded and analysed, every candidate scored, then the same selection rule."""
    from curation.faces.analysis import FaceAnalyzer
    from curation.faces.quality import QualityScorer
    from curation.pipeline.selection import choose, cluster_poses, pose_spread

    every_frame = dataclasses.replace(analysis_config(build), sample_fps=1e9,
                                      max_frames_per_clip=10 ** 9)
    analyzer = FaceAnalyzer(every_frame)
    scorer = QualityScorer.from_config(build.quality, device="cpu")
    frames = clips = calls = 0
    selected: dict[str, SelectedSet] = {}
    started = time.perf_counter()
    for ident in identities:
        candidates = []
        for clip in ident.clips:
            analysis = analyzer.analyze_clip(clip)
            clips += 1
            frames += analysis.frames_decoded
            candidates.extend(c for c in analysis.usable if c.yaw is not None)
        calls += len(candidates)
        selected[ident.identity_id] = _naive_select(
            ident.identity_id, candidates, scorer, build, choose, cluster_poses, pose_spread)
        for cand in candidates:
            cand.crop = cand.mask = None
    seconds = time.perf_counter() - started
    analyzer.close()
    kept = sum(s.kept for s in selected.values())
    return (StageResult("naive (every frame, score all)", len(identities), clips, frames,
                        seconds, calls, f"{kept} kept; subset of the plan"), selected)


def _naive_select(identity_id: str, candidates: list, scorer, build: BuildConfig, choose,
                  cluster_poses, pose_spread) -> SelectedSet:
    if len(candidates) < build.selection.images_per_identity:
        return SelectedSet(identity_id, False, None, None, None, None, None)
    quality = np.asarray(scorer.score([c.crop for c in candidates]), dtype=np.float64)
    poses = np.array([[c.yaw, c.pitch, c.roll] for c in candidates], dtype=np.float64)
    clusters = cluster_poses(poses, build.selection.pose_clusters, build.selection.seed)
    scores = {i: float(q) for i, q in enumerate(quality) if np.isfinite(q)}
    choice = choose(clusters.labels, clusters.centroids, scores,
                    build.selection.images_per_identity)
    if not choice.ok:
        return SelectedSet(identity_id, False, None, None, None, None, None)
    spread = pose_spread(poses[choice.selected])
    return SelectedSet(identity_id, True, float(np.mean([scores[i] for i in choice.selected])),
                       spread["yaw_std"], spread["pitch_std"], spread["yaw_range"],
                       spread["pitch_range"])


# --- report ----------------------------------------------------------------------------------

def stage_table(stages: list[StageResult]) -> str:
    head = (f"{'stage':<44} {'ids':>4} {'clips':>5} {'frames':>6} {'seconds':>8} "
            f"{'frames/s':>8} {'ids/min':>8} {'s/id':>6} {'q-calls/id':>10}  note")
    lines = [head, "-" * len(head)]
    for s in stages:
        lines.append(f"{s.name:<44} {s.identities:>4} {s.clips:>5} {s.frames:>6} "
                     f"{s.seconds:>8.1f} {s.frames_per_s:>8.1f} {s.identities_per_min:>8.2f} "
                     f"{s.seconds_per_identity:>6.2f} {s.quality_calls_per_identity:>10.1f}  "
                     f"{s.note}")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def selection_table(ours: dict[str, SelectedSet], naive: dict[str, SelectedSet]) -> tuple[str,
                                                                                         dict]:
    head = (f"{'identity':<28} {'q ours':>7} {'q naive':>7} {'yaw_std o/n':>13} "
            f"{'pitch_std o/n':>13} {'yaw_rng o/n':>13} {'pitch_rng o/n':>13}")
    lines = [head, "-" * len(head)]
    both = [i for i in naive if i in ours and ours[i].kept and naive[i].kept]
    for ident in naive:
        o, n = ours.get(ident), naive[ident]
        o = o or SelectedSet(ident, False, None, None, None, None, None)
        lines.append(
            f"{ident[:28]:<28} {_fmt(o.mean_quality):>7} {_fmt(n.mean_quality):>7} "
            f"{_fmt(o.yaw_std, 1):>6}/{_fmt(n.yaw_std, 1):<6} "
            f"{_fmt(o.pitch_std, 1):>6}/{_fmt(n.pitch_std, 1):<6} "
            f"{_fmt(o.yaw_range, 1):>6}/{_fmt(n.yaw_range, 1):<6} "
            f"{_fmt(o.pitch_range, 1):>6}/{_fmt(n.pitch_range, 1):<6}")
    summary: dict[str, float] = {"compared": len(both)}
    if both:
        for key in ("mean_quality", "yaw_std", "pitch_std", "yaw_range", "pitch_range"):
            summary[f"ours_{key}"] = float(np.mean([getattr(ours[i], key) for i in both]))
            summary[f"naive_{key}"] = float(np.mean([getattr(naive[i], key) for i in both]))
        lines.append(f"{'mean over ' + str(len(both)) + ' kept by both':<28} "
                     f"{summary['ours_mean_quality']:>7.3f} {summary['naive_mean_quality']:>7.3f} "
                     f"{summary['ours_yaw_std']:>6.1f}/{summary['naive_yaw_std']:<6.1f} "
                     f"{summary['ours_pitch_std']:>6.1f}/{summary['naive_pitch_std']:<6.1f} "
                     f"{summary['ours_yaw_range']:>6.1f}/{summary['naive_yaw_range']:<6.1f} "
                     f"{summary['ours_pitch_range']:>6.1f}/{summary['naive_pitch_range']:<6.1f}")
    return "\n".join(lines), summary


def verdict(name: str, value: float, target: float, higher_is_better: bool) -> str:
    if not np.isfinite(value):
        return f"{name}: not measured"
    met = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    return f"{name} = {value:.2f} (target {sign} {target:g}): {'met' if met else 'MISSED'}"


# --- main ------------------------------------------------------------------------------------

def run(config: CurationBenchConfig) -> dict[str, float]:
    workdir = Path(config.workdir).resolve()
    if config.quick:
        config = dataclasses.replace(config, identities=0, naive_identities=1,
                                     limit=config.limit or 3)
    if config.corpus:
        import json

        corpus = Path(config.corpus).resolve()
        summary = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
    else:
        corpus = corpus_dir(workdir, config.identities, config.clip_seconds)
        summary = ensure_corpus(corpus, config.identities, config.seed, config.clip_seconds)
    clip_s = summary.get("clip_frames", CLIP_FRAMES) / FPS
    quality = resolve_quality_model(config)
    builds = {n: parse_args(build_args(corpus, workdir / f"build-{n}w", n, quality,
                                       config.limit, config.sample_fps, config.identity_model))
              for n in config.workers}
    reference = builds[min(builds)]
    sampling = reference.analysis
    plan = build_plan(reference.resolved_sources(), reference.plan)
    identities = plan.identities
    print(f"[bench] {len(identities)} identities, {sum(len(i.clips) for i in identities)} clips "
          f"from {corpus} ({clip_s:.2f} s clips); quality model {quality[0]}; sampled "
          f"{sampling.sample_fps:g} frames/s (max {sampling.max_frames_per_clip}/clip); CPUs "
          f"here {os.cpu_count()}; load {os.getloadavg()[0]:.1f}", flush=True)
    print("[bench] build: python curation/build_mfhq.py "
          + " ".join(build_args(corpus, workdir / "build-Nw", 1, quality, config.limit,
                                config.sample_fps, config.identity_model)),
          flush=True)

    _set_threads(1)
    print("[bench] floor ...", flush=True)
    floors = [run_floor(identities, analysis_config(reference))]
    ours: dict[int, tuple[StageResult, dict, float, dict]] = {}
    for n, build in sorted(builds.items()):
        print(f"[bench] ours with {n} worker(s) ...", flush=True)
        ours[n] = run_ours(build)
    if config.floor_twice:
        print("[bench] floor again ...", flush=True)
        _set_threads(1)
        floors.append(run_floor(identities, analysis_config(reference)))
    # The floor is a lower bound: on a machine whose load drifts, its best run is the fairest.
    floor = min(floors, key=lambda f: f.seconds)
    if len(floors) > 1:
        floor.note += (f"; best of {len(floors)} runs (before and after the builds: "
                       + ", ".join(f"{f.seconds:.1f} s" for f in floors) + ")")
    floor_parallel = None
    if max(builds) > 1:
        print(f"[bench] floor in {max(builds)} parallel processes ...", flush=True)
        floor_parallel = run_floor_parallel(identities, analysis_config(reference), max(builds))
    stages = [floor] + ([floor_parallel] if floor_parallel else []) + [ours[n][0]
                                                                       for n in sorted(ours)]
    excl = {n: dataclasses.replace(r, name=f"{r.name}, excl. start-up",
                                   seconds=r.seconds - startup,
                                   note=f"start-up {startup:.1f} s excluded")
            for n, (r, _, startup, _) in ours.items()}
    stages.extend(excl[n] for n in sorted(excl))
    naive_sets: dict[str, SelectedSet] = {}
    naive = None
    if not config.skip_naive and config.naive_identities > 0:
        subset = spread_subset(identities, config.naive_identities)
        print(f"[bench] naive on {len(subset)} identities ...", flush=True)
        _set_threads(1)
        naive, naive_sets = run_naive(subset, reference)
        naive.note += (f" ({len(subset)} of {len(identities)} ids, "
                       f"{naive.clips / max(naive.identities, 1):.1f} clips/id vs "
                       f"{floor.clips / max(floor.identities, 1):.1f} in all)")
        stages.append(naive)

    one = excl[min(excl)]
    figures = {
        "identities": float(len(identities)),
        "floor_fps": floor.frames_per_s,
        "ours_fps": one.frames_per_s,
        "ours_ids_per_min": one.identities_per_min,
        "ours_qcalls_per_id": one.quality_calls_per_identity,
        "startup_s": ours[min(ours)][2],
        "ours_over_floor": one.seconds_per_identity / floor.seconds_per_identity,
        "ours_over_floor_incl_startup": (ours[min(ours)][0].seconds_per_identity
                                         / floor.seconds_per_identity),
        "naive_over_ours": float("nan"),
        "scaling_2_vs_1": float("nan"),
    }
    if config.clip_seconds is not None or config.sample_fps != DEMO_SAMPLE_FPS:
        # the configuration goes on the figures line only when it is not the demo's
        figures.update(clip_s=clip_s, sample_fps=sampling.sample_fps)
    if 1 in excl and 2 in excl:
        figures["scaling_2_vs_1"] = excl[1].seconds / excl[2].seconds
        figures["scaling_2_vs_1_incl_startup"] = ours[1][0].seconds / ours[2][0].seconds
    widest = max(ours)
    figures["whole_over_floor"] = ours[widest][0].seconds / floor.seconds
    floor_s_per_frame = floor.seconds / max(floor.frames, 1)
    for n, (result, _, _, timeline) in sorted(ours.items()):
        analysis = timeline.get("stages", {}).get("analysis", {})
        if analysis and result.frames:
            figures[f"analysis_per_frame_over_floor_{n}w"] = (
                analysis["busy_s"] / result.frames / floor_s_per_frame)
        if timeline.get("idle_fraction") is not None:
            figures[f"idle_{n}w"] = timeline["idle_fraction"]
        if result.cpu_s.get("analysis") and floor.cpu_s.get("floor") and result.frames:
            # CPU time, not wall: the work an analysed frame took, whatever the contention
            figures[f"analysis_cpu_per_frame_over_floor_{n}w"] = (
                result.cpu_s["analysis"] / result.frames
                / (floor.cpu_s["floor"] / max(floor.frames, 1)))
            figures[f"build_cpu_over_floor_{n}w"] = (
                sum(v for k, v in result.cpu_s.items() if k not in PROCESS_CPU_NOT_WORK)
                / floor.cpu_s["floor"])
    if floor_parallel is not None:
        figures["machine_scaling_floor"] = floor.seconds / floor_parallel.seconds
    if naive is not None:
        figures.update(naive_fps=naive.frames_per_s, naive_ids_per_min=naive.identities_per_min,
                       naive_qcalls_per_id=naive.quality_calls_per_identity,
                       naive_over_ours=naive.seconds_per_identity / one.seconds_per_identity,
                       # what naive/ours would be if ours cost exactly its floor
                       naive_over_floor=naive.seconds_per_identity / floor.seconds_per_identity)

    print()
    print(f"Curation throughput, {len(identities)} identities ({clip_s:.2f} s clips), quality "
          f"model {quality[0]}, {sampling.sample_fps:g} sampled frames/s, {os.cpu_count()} "
          f"CPUs, load {os.getloadavg()[0]:.1f}")
    print(stage_table(stages))
    for n, (_, timings, _, timeline) in sorted(ours.items()):
        print(f"build timings, {n} worker(s): "
              + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        if timeline:
            print(f"build timeline, {n} worker(s): working phase "
                  f"{timeline['working_phase_s']:.1f} s, idle {timeline['idle_cpu_s']:.1f} CPU-s "
                  f"({timeline['idle_fraction']:.1%}), by tenth "
                  + " ".join(f"{v:.1f}" for v in timeline["idle_cpu_s_by_tenth"]) + "; busy: "
                  + ", ".join(f"{k} {v['busy_s']:.1f} s ({v['spans']})"
                              for k, v in timeline["stages"].items()))
    print(f"floor process CPU: {floor.cpu_s.get('floor', float('nan')):.1f} CPU-s "
          f"({1000 * floor.cpu_s.get('floor', float('nan')) / max(floor.frames, 1):.1f} "
          f"ms/frame) in {floor.seconds:.1f} s")
    for n, (result, _, _, _) in sorted(ours.items()):
        if result.cpu_s:
            work = {k: v for k, v in result.cpu_s.items() if k not in PROCESS_CPU_NOT_WORK}
            print(f"process CPU, {n} worker(s): {sum(work.values()):.1f} CPU-s of "
                  f"{n} x {result.seconds:.1f} s: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in sorted(work.items(),
                                                                  key=lambda kv: -kv[1]))
                  + f" (analysis {1000 * work.get('analysis', 0) / max(result.frames, 1):.1f} "
                  f"ms/frame; bench sampler {result.cpu_s.get('sampler', 0):.2f} CPU-s of the "
                  f"driver's; an analysis worker had at most "
                  f"{result.cpu_s.get('analysis worker threads (most)', 0):.0f} threads)")
            print(f"  {result.cpu_note}")
    quality_ok = pose_ok = None
    if naive is not None:
        print()
        print(f"Selected sets, ours ({min(ours)} worker build) vs naive, quality model "
              f"{quality[0]} (higher = better"
              f"{'; STAND-IN weights, scores mean nothing' if config.topiq_stand_in else ''}), "
              "pose spread in degrees:")
        table, sel = selection_table(ours_selected_sets(builds[min(builds)].manifests_dir),
                                     naive_sets)
        print(table)
        if sel.get("compared"):
            quality_ok = (sel["ours_mean_quality"]
                          >= sel["naive_mean_quality"] - QUALITY_TOLERANCE
                          * abs(sel["naive_mean_quality"]))
            pose_ok = (sel["ours_yaw_std"] + sel["ours_pitch_std"]
                       >= (1 - QUALITY_TOLERANCE) * (sel["naive_yaw_std"]
                                                     + sel["naive_pitch_std"]))
            figures.update(quality_ours=sel["ours_mean_quality"],
                           quality_naive=sel["naive_mean_quality"])
    print()
    print(verdict("naive/ours", figures["naive_over_ours"], TARGET_NAIVE_OVER_OURS, True))
    if naive is not None:
        print(f"  ceiling on this corpus: naive/floor = {figures['naive_over_floor']:.2f} (naive "
              f"decodes {naive.frames / naive.identities:.0f} frames/id vs "
              f"{floor.frames / floor.identities:.0f} sampled, and scores "
              f"{naive.quality_calls_per_identity:.0f} vs {one.quality_calls_per_identity:.0f} "
              "faces/id)")
    print(verdict("ours/floor (excl. start-up)", figures["ours_over_floor"],
                  TARGET_OURS_OVER_FLOOR, False))
    print(verdict(f"whole build with {widest} worker(s), start-up included / floor",
                  figures["whole_over_floor"], TARGET_WHOLE_OVER_FLOOR, False))
    for n in sorted(ours):
        print(verdict(f"analysis busy CPU-s per frame / floor's, {n} worker(s)",
                      figures.get(f"analysis_per_frame_over_floor_{n}w", float("nan")),
                      TARGET_ANALYSIS_PER_FRAME, False))
        print(f"  in process CPU time (no waiting for a core): "
              f"{figures.get(f'analysis_cpu_per_frame_over_floor_{n}w', float('nan')):.2f}; "
              f"the whole build's CPU / the floor's: "
              f"{figures.get(f'build_cpu_over_floor_{n}w', float('nan')):.2f}")
        print(verdict(f"idle CPU share of the working phase, {n} worker(s)",
                      figures.get(f"idle_{n}w", float("nan")), TARGET_IDLE, False))
    print(verdict("2 workers / 1 worker (excl. start-up)", figures["scaling_2_vs_1"],
                  TARGET_SCALING, True))
    if floor_parallel is not None:
        print(f"  this machine's own scaling of the floor work over {max(builds)} plain "
              f"processes: {figures['machine_scaling_floor']:.2f}x")
    if quality_ok is not None:
        print(f"selected quality same or better (within {QUALITY_TOLERANCE:.0%} of naive): "
              f"{'yes' if quality_ok else 'NO'}; pose spread (yaw+pitch std) same or better: "
              f"{'yes' if pose_ok else 'NO'}")
    print("FIGURES " + " ".join(f"{k}={v:.3g}" for k, v in figures.items()))
    return figures


def parse_cli(argv: list[str] | None = None) -> CurationBenchConfig:
    d = CurationBenchConfig()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--identities", type=int, default=d.identities,
                   help="identities in the generated corpus (0 = the 9 real faces only)")
    p.add_argument("--workdir", default=d.workdir, help="corpus and build outputs go here")
    p.add_argument("--naive-identities", type=int, default=d.naive_identities,
                   help="identities the naive baseline runs on (evenly spread over the plan)")
    p.add_argument("--skip-naive", action="store_true", help="do not run the naive baseline")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: real faces only, 3 identities, naive on 1")
    p.add_argument("--workers", default="1,2",
                   help="comma-separated worker counts for the build (default 1,2)")
    p.add_argument("--quality-model", default=d.quality_model,
                   choices=("auto", "piqe", "topiq_nr-face"),
                   help="auto: TOPIQ-face where its weights are present, else piqe")
    p.add_argument("--quality-weights", default=None, help="TOPIQ-face weights file")
    p.add_argument("--topiq-stand-in", action="store_true",
                   help="TOPIQ-face with random-init stand-in weights (the real model's compute; "
                        "its scores mean nothing): for timing where the weights are absent")
    p.add_argument("--floor-once", dest="floor_twice", action="store_false",
                   help="measure the floor once (default: before and after the builds, the "
                        "faster run counts, as the machine's load may drift)")
    p.add_argument("--seed", type=int, default=d.seed, help="demo corpus seed")
    p.add_argument("--identity-model", default=None, choices=("arcface", "dlib", "none"),
                   help="the build's identity model (default: the demo's, dlib). The floor does "
                        "no identity work: 'none' makes both sides do the same work")
    p.add_argument("--corpus", default=None, metavar="DIR",
                   help="run on this existing corpus folder (with its corpus.json, e.g. the "
                        "demo's) instead of generating one")
    p.add_argument("--limit", type=int, default=None, help="first N identities only")
    p.add_argument("--clip-seconds", type=float, default=None, metavar="S",
                   help="clip length of the generated corpus in seconds (default: the demo's "
                        "3.52 s; real datasets have 3-60 s clips); its own corpus folder")
    p.add_argument("--sample-fps", type=float, default=d.sample_fps, metavar="F",
                   help=f"sampled frames/s of the build and the floor (default: the demo's "
                        f"{d.sample_fps:g}; the build's own default is 2)")
    ns = p.parse_args(argv)
    workers = sorted({int(w) for w in ns.workers.split(",") if w.strip()})
    if not workers or min(workers) < 1:
        p.error("--workers needs positive integers, e.g. 1,2")
    if ns.sample_fps <= 0:
        p.error("--sample-fps must be > 0")
    return CurationBenchConfig(ns.identities, ns.workdir, ns.naive_identities, ns.skip_naive,
                               ns.quick, workers, ns.quality_model, ns.quality_weights,
                               ns.topiq_stand_in, ns.floor_twice, ns.seed, ns.limit,
                               ns.clip_seconds, ns.sample_fps, ns.corpus, ns.identity_model)


if __name__ == "__main__":
    run(parse_cli())
