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
    lines.extend(f"  note: {n}" for n in summary.notes)
    return "\n".join(lines)


def summary_json(summary: BuildSummary) -> dict:
    return asdict(summary)
