"""How busy the staged build keeps the machine's CPUs: a 20-identity build on this machine.

    python bench/build_utilisation.py                   # 20 identities, all CPUs
    python bench/build_utilisation.py --identities 40 --num-cpus 2

Generates a demo corpus of `--identities N` (reused from `--workdir` when already there), runs
the real build (`python -m curation.build_mfhq`, the demo's settings, embedded Ray with
`--num-cpus`) in a fresh output folder, and samples the machine's CPU time (/proc/stat) every
0.5 s while it runs, and the CPU time of the build's own processes (the driver and every Ray
worker, from /proc/<pid>/stat). Prints the CPUs the build kept busy over its working phase
(from the first clip's analysis until the last shard is committed, taken from the build's own
timeline in run.json: start-up and the final tables are reported apart; the timeline's own idle
CPU-s is printed beside it) and over the whole command, with the
baseline of the same run: the machine's utilisation in the 5 s before the build started (other
work on a shared machine). The machine-wide figure counts every process, so read it beside that
baseline; the build's own figure counts only its processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs together."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]            # idle + iowait
    return sum(fields) - idle, sum(fields)


def ray_worker_rss() -> dict[int, tuple[str, int]]:
    """{pid: (name, resident bytes)} of this machine's Ray worker processes (`ray::...`)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if not name.startswith("ray::") or "Dashboard" in name or "RuntimeEnv" in name:
                continue
            out[int(entry.name)] = (name, rss_of(int(entry.name)))
        except OSError:
            continue
    return out


def cpu_seconds_of(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Sampler(threading.Thread):
    """Samples (time, busy, total) every `period` s until stopped, and the peak resident memory
    of the driver (`driver_pid`, once set) and of each Ray worker process."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()
        self.driver_pid: int | None = None
        self.driver_peak = 0
        self.worker_peak: dict[int, tuple[str, int]] = {}
        self.cpu_of: dict[int, float] = {}        # last seen CPU seconds of each build process
        self.build_cpu: list[tuple[float, float]] = []   # (time, CPU s of the build so far)

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), *cpu_times()))
            pids = list(ray_worker_rss().items())
            try:
                if self.driver_pid:
                    self.driver_peak = max(self.driver_peak, rss_of(self.driver_pid))
                    self.cpu_of[self.driver_pid] = cpu_seconds_of(self.driver_pid)
            except OSError:
                pass
            for pid, (name, rss) in pids:
                if rss > self.worker_peak.get(pid, ("", 0))[1]:
                    self.worker_peak[pid] = (name, rss)
                try:
                    self.cpu_of[pid] = cpu_seconds_of(pid)
                except OSError:
                    pass
            self.build_cpu.append((time.time(), sum(self.cpu_of.values())))
            self.stop.wait(self.period)

    def build_cpus_busy(self, start: float, end: float) -> float:
        """CPUs kept busy by the build's own processes (driver + Ray workers) in [start, end]:
        other work on a shared machine does not count."""
        inside = [s for s in self.build_cpu if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan")
        return (inside[-1][1] - inside[0][1]) / max(inside[-1][0] - inside[0][0], 1e-9)

    def utilisation(self, start: float, end: float) -> float:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan")
        (_, b0, t0), (_, b1, t1) = inside[0], inside[-1]
        return (b1 - b0) / max(t1 - t0, 1e-9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/build_utilisation.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--identities", type=int, default=20)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "mfhq-bench-util"))
    p.add_argument("--long-identity", type=int, default=0, metavar="CLIPS",
                   help="instead: one identity of CLIPS clips of one person, 12 s each (a long "
                        "interview video cut into clips), for the peak memory of the driver and "
                        "the workers on a long-video identity")
    ns = p.parse_args(argv)
    from curation.democorpus import build_demo_corpus
    from mfhq.demo import DEMO_BUILD_FLAGS

    work = Path(ns.workdir)
    if ns.long_identity:
        corpus = work / "corpus-long"
        if not (corpus / "corpus.json").exists():
            build_demo_corpus(corpus, seed=0, clip_seconds=12.0)
        root = work / f"long-{ns.long_identity}" / "folder"
        person = root / "one_person"
        if not person.is_dir():
            person.mkdir(parents=True)
            clips = sorted((corpus / "folder" / "t1_face1").glob("clip_*.mp4"))
            for i in range(ns.long_identity):
                shutil.copyfile(clips[i % len(clips)], person / f"clip_{i:04d}.mp4")
        sources = ["--source", f"folder={root}"]
        identities = 1
    else:
        corpus = work / f"corpus-{ns.identities}"
        if not (corpus / "corpus.json").exists():
            build_demo_corpus(corpus, seed=0, total_identities=ns.identities)
        sources = [a for kind in ("celebvhq", "celebvtext", "vfhq", "talkinghead1kh", "folder")
                   if (corpus / kind).is_dir() for a in ("--source", f"{kind}={corpus / kind}")]
        identities = ns.identities
    output = work / "build"
    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, "-m", "curation.build_mfhq", *sources, "--output", str(output),
           *DEMO_BUILD_FLAGS, "--num-cpus", str(ns.num_cpus), "--no-progress",
           "--limit", str(identities)]
    sampler = Sampler()
    sampler.start()
    time.sleep(5.0)
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    sampler.driver_pid = proc.pid
    stdout, stderr = proc.communicate(timeout=3600)
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    ended = time.time()
    sampler.stop.set()
    sampler.join()
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        return 1
    run = json.loads((output / "manifests" / "run.json").read_text())
    timeline = run.get("timeline") or {}
    # The working phase, from the build's own timeline: its first analysis task to its last
    # span (the build process starts a moment after `started`: a slight overestimate of both).
    work_start = started + timeline.get("startup_s", 0.0)
    work_end = work_start + timeline.get("working_phase_s", 0.0)
    baseline = sampler.utilisation(started - 5.5, started)
    working = sampler.utilisation(work_start, work_end)
    whole = sampler.utilisation(started, ended)
    counts = run["counts"]
    ncpu = os.cpu_count() or 1
    workers = sorted(sampler.worker_peak.values(), key=lambda w: -w[1])
    analysis_peak = max((rss for name, rss in workers if "Actor" not in name), default=0)
    actor_peak = max((rss for name, rss in workers if "Actor" in name), default=0)
    print(f"peak resident memory: driver {sampler.driver_peak / 2**20:.0f} MiB, a task worker "
          f"(analysis / assembly) {analysis_peak / 2**20:.0f} MiB, the quality actor "
          f"{actor_peak / 2**20:.0f} MiB ({len(workers)} Ray worker processes seen)")
    print(f"build: {counts.get('identities_kept')} identities kept of {identities}, "
          f"{sum(run['placement'].get('analysis', {}).values())} clips analysed, "
          f"{run['shards']['planned']} shards, --num-cpus {ns.num_cpus} on a {ncpu}-CPU machine")
    own = sampler.build_cpus_busy(work_start, work_end)
    print(f"working phase {work_end - work_start:.1f} s: the build's own processes kept "
          f"{own:.2f} of its {ns.num_cpus} CPUs busy ({own / ns.num_cpus:.0%}); the machine as a "
          f"whole: {working:.0%} of {ncpu} CPUs")
    print(f"whole command {ended - started:.1f} s: {whole:.0%}; baseline before it: "
          f"{baseline:.0%}")
    if timeline:
        print(f"the build's own timeline: start-up {timeline['startup_s']:.1f} s, idle "
              f"{timeline['idle_cpu_s']:.1f} CPU-s of the working phase "
              f"({timeline['idle_fraction']:.1%}); busy per stage: "
              + ", ".join(f"{k} {v['busy_s']:.1f} s" for k, v in timeline["stages"].items()))
    print(f"FIGURES identities={identities} clips={ns.long_identity or ''} "
          f"num_cpus={ns.num_cpus} driver_peak_mib={sampler.driver_peak / 2**20:.0f} "
          f"worker_peak_mib={analysis_peak / 2**20:.0f} actor_peak_mib={actor_peak / 2**20:.0f} "
          f"working_s={work_end - work_start:.1f} build_cpus_busy={own:.2f} "
          f"machine_util={working:.3f} "
          f"whole_util={whole:.3f} baseline_util={baseline:.3f} "
          f"timeline_idle={timeline.get('idle_fraction', float('nan'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
