"""The end of a build: shards table, run record and the one-screen summary.

Everything here is computed from the files on disk (the source of truth after resumes), never
from what this run happened to build.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from curation import build_folder as bf
from curation.pipeline.config import BuildConfig
from curation.pipeline.models import package_versions
from curation.pipeline.plan import Plan


@dataclass
class BuildSummary:
    shards_dir: str
    manifests_dir: str
    config_hash: str
    shards_total: int
    shards_built: int
    shards_skipped: int
    shards_failed: list[tuple[str, str]]
    counts: dict[str, Any]
    timings: dict[str, float]
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    placement: dict[str, Any] = field(default_factory=dict)   # node -> clips / shards
    timeline: dict[str, Any] = field(default_factory=dict)    # see `build_timeline`

    @property
    def ok(self) -> bool:
        return not self.shards_failed and not self.interrupted


def write_run_record(config: BuildConfig, folder: bf.BuildFolder, plan: Plan, models: dict,
                     summary: BuildSummary, shard_rows: list[dict], increment=None) -> None:
    """run.json: arguments, package versions, model files, counts, shards, timings, and what an
    incremental rerun changed (`increment`: curation.pipeline.incremental.Increment)."""
    record = {
        "config_hash": summary.config_hash,
        "plan_fingerprint": plan.fingerprint(),
        "plan_generation": plan.generation,
        "increment": increment.to_json() if increment is not None else None,
        "arguments": config.to_json(),
        "argv": sys.argv,
        "packages": package_versions(),
        "models": models,
        "counts": summary.counts,
        "shards": {"planned": summary.shards_total, "written": len(shard_rows),
                   "built_this_run": summary.shards_built,
                   "skipped_finished": summary.shards_skipped,
                   "failed": [{"shard": s, "error": e} for s, e in summary.shards_failed],
                   "samples": sum(r["samples"] for r in shard_rows),
                   "bytes": sum(r["bytes"] for r in shard_rows)},
        "timings_s": summary.timings,
        "placement": summary.placement,
        "timeline": summary.timeline,
        "notes": summary.notes,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    bf.atomic_write(folder.run_path, json.dumps(record, sort_keys=True, indent=1, default=str))


def format_summary(summary: BuildSummary) -> str:
    """A one-screen text summary of a build."""
    c = summary.counts
    lines = [
        "MFHQ build summary",
        f"  shards:     {summary.shards_dir}  manifests: {summary.manifests_dir}",
        f"  clips read: {c['clips_read']}  ok: {c['clips_ok']}",
    ]
    for reason, n in c["clips_not_ok_by_reason"].items():
        lines.append(f"    not ok  {reason:<24} {n}")
    by_split = ", ".join(f"{k} {v}" for k, v in c["identities_kept_by_split"].items()) or "none"
    lines.append(f"  identities: {c['identities_planned']} planned, {c['identities_kept']} kept "
                 f"({by_split})")
    for reason, n in c["identities_dropped_by_reason"].items():
        lines.append(f"    dropped {reason:<24} {n}")
    lines.append(f"  faces:      {c['faces_considered']} considered, {c['faces_selected']} selected")
    lines.append(f"  shards:     {summary.shards_total} planned, {summary.shards_built} built now, "
                 f"{summary.shards_skipped} already finished, {len(summary.shards_failed)} failed")
    for name, err in summary.shards_failed:
        lines.append(f"    FAILED {name}: {err.splitlines()[0] if err else ''}")
    if summary.interrupted:
        lines.append("  interrupted: rerun the same command to finish the remaining shards")
    lines.append(f"  time:       {summary.timings.get('total', 0.0):.1f} s "
                 f"(build {summary.timings.get('build', 0.0):.1f} s)")
    where = summary.placement.get("analysis_providers") or {}
    if where:
        lines.append("  models:     " + "; ".join(f"{label or 'mediapipe only'} ({n} workers)"
                                              for label, n in sorted(where.items())))
    lines.extend(timeline_lines(summary.timeline))
    lines.extend(f"  note: {n}" for n in summary.notes)
    return "\n".join(lines)


# --- the build's own timeline -------------------------------------------------------------------

# (stage, start, end, on_cpu): one span of work, wall-clock seconds (time.time()); on_cpu is
# False for work on a GPU (it keeps no CPU busy).
Span = tuple[str, float, float, bool]


def build_timeline(spans: list[Span], cpus: float, started_at: float) -> dict[str, Any]:
    """Per-stage busy time and the CPUs left idle, from the spans of every task and request.

    The working phase runs from the first analysis span to the last span of any stage; idle
    CPU-s is the integral over it of (cpus - CPU spans running, at least 0), so work queued
    behind a busy actor, a driver that is slow to hand out work or a serial tail all show up
    as idle. `startup_s` is from `started_at` (the build's start) to the first analysis span.
    Returns {} without spans."""
    spans = [s for s in spans if s[2] >= s[1]]
    if not spans:
        return {}
    first = min((s[1] for s in spans if s[0] == "analysis"), default=min(s[1] for s in spans))
    last = max(s[2] for s in spans)
    stages: dict[str, dict[str, float]] = {}
    for stage, start, end, _ in spans:
        entry = stages.setdefault(stage, {"spans": 0, "busy_s": 0.0, "max_s": 0.0,
                                          "first_s": start - first, "last_s": end - first})
        entry["spans"] += 1
        entry["busy_s"] += end - start
        entry["max_s"] = max(entry["max_s"], end - start)
        entry["first_s"] = min(entry["first_s"], start - first)
        entry["last_s"] = max(entry["last_s"], end - first)
    events = sorted([(max(start, first), 1) for _, start, _, on_cpu in spans if on_cpu]
                    + [(max(end, first), -1) for _, _, end, on_cpu in spans if on_cpu])
    phase = last - first
    # Idle CPU-s in each tenth of the working phase: a slow start and a serial tail show apart.
    tenths = [0.0] * 10
    idle = busy = 0.0
    running, at = 0, first

    def add_idle(begin: float, end: float, free: float) -> None:
        if free <= 0 or end <= begin:
            return
        for part in range(10):
            low, high = first + phase * part / 10, first + phase * (part + 1) / 10
            tenths[part] += max(0.0, min(end, high) - max(begin, low)) * free

    for when, step in [*events, (last, 0)]:
        add_idle(at, when, max(0.0, cpus - running))
        idle += (when - at) * max(0.0, cpus - running)
        busy += (when - at) * min(float(running), cpus)
        running, at = running + step, when
    rounded = {name: {k: round(v, 3) if isinstance(v, float) else v for k, v in entry.items()}
               for name, entry in sorted(stages.items())}
    return {"cpus": cpus, "startup_s": round(first - started_at, 3),
            "working_phase_s": round(phase, 3), "busy_cpu_s": round(busy, 3),
            "idle_cpu_s": round(idle, 3),
            "idle_fraction": round(idle / (cpus * phase), 4) if phase > 0 and cpus else None,
            "idle_cpu_s_by_tenth": [round(v, 2) for v in tenths], "stages": rounded}


def timeline_lines(timeline: dict[str, Any]) -> list[str]:
    """The timeline in the summary: working phase, idle CPU, busy time per stage."""
    if not timeline:
        return []
    idle = timeline.get("idle_fraction")
    lines = [f"  timeline:   start-up {timeline['startup_s']:.1f} s, working phase "
             f"{timeline['working_phase_s']:.1f} s on {timeline['cpus']:g} CPUs, idle "
             f"{timeline['idle_cpu_s']:.1f} CPU-s"
             + (f" ({idle:.0%})" if idle is not None else "")]
    lines.append("    " + ", ".join(f"{name} {entry['busy_s']:.1f} s busy ({entry['spans']})"
                                      for name, entry in timeline["stages"].items()))
    return lines


def summary_json(summary: BuildSummary) -> dict:
    return asdict(summary)
