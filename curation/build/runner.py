"""The whole MFHQ build, start to end (`mfhq build`, `curation/build_mfhq.py`).

    check models (driver) -> enumerate + plan -> output folder (refuse / resume) ->
    enumeration part + build-time takedowns -> Ray pool over unfinished shards -> finalize

Set-up problems raise a `SetupError` (BuildRefused, SourceError, MissingWeightsError) before
any Ray work; the commands print its message without a traceback.
"""

from __future__ import annotations

import time

from curation import build_folder as bf
from curation import manifests, takedowns
from curation.build.config import BuildConfig
from curation.build.finalize import BuildSummary, format_summary, write_run_record
from curation.build.models import check_models
from curation.build.output import prepare_output, shard_is_finished
from curation.build.plan import build_plan
from curation.build.pool import init_ray, run_shards
from curation.build.shard import ShardResult, enumeration_rows
from curation.records import Reason

__all__ = ["BuildSummary", "format_summary", "run_build"]


def run_build(config: BuildConfig) -> BuildSummary:
    """Plan, build every unfinished shard, finalize. Raises a SetupError (BuildRefused,
    SourceError, MissingWeightsError) before any Ray work."""
    import ray

    config.validate()
    folder = bf.BuildFolder.of(config)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    models = check_models(config)
    timings["check_models"] = time.monotonic() - t0

    t = time.monotonic()
    plan = build_plan(config.resolved_sources(), config.plan, takedown_file=config.takedown)
    timings["enumerate_and_plan"] = time.monotonic() - t
    # Identities removed from this folder by `mfhq takedown` never come back.
    plan = takedowns.without_recorded(plan, folder.manifests_dir)
    prepare_output(config, folder, plan)
    if not folder.enumeration_part.exists():
        # Clips on the takedown list leave no row with their ids, only a salted hash.
        listed = takedowns.read_takedown(config.takedown)
        taken = [c for c in plan.rejected_clips
                 if c.reason == Reason.TAKEDOWN or takedowns.takedown_match(c, listed)]
        takedowns.append_record(folder.manifests_dir, takedowns.clip_removals(taken, listed),
                                takedowns.DEFAULT_REASON, "build")
        rows = enumeration_rows([c for c in plan.rejected_clips if c not in taken])
        bf.write_parquet_atomic(manifests.to_table("clips", rows), folder.enumeration_part)

    t = time.monotonic()
    todo = [s for s in plan.shards if not shard_is_finished(folder, s)]
    timings["resume_check"] = time.monotonic() - t
    skipped = len(plan.shards) - len(todo)
    ids_total = len(plan.identities)
    ids_done = ids_total - sum(len(s.identities) for s in todo)

    t = time.monotonic()
    results: list[ShardResult] = []
    failures: list[tuple[str, str]] = []
    interrupted = False
    started_ray = False
    try:
        if todo:
            started_ray = init_ray(config)
            timings["ray_init"] = time.monotonic() - t
            results, failures = run_shards(config, folder, todo, ids_done, ids_total,
                                           len(plan.shards), timings)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if started_ray:
            ray.shutdown()
    timings["build"] = time.monotonic() - t

    t = time.monotonic()
    shard_rows = bf.write_shards_table(folder, [s.name for s in plan.shards])
    counts = bf.count_outcomes(folder.manifests_dir)
    timings["finalize"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t0
    summary = BuildSummary(
        shards_dir=str(config.shards_dir), manifests_dir=str(config.manifests_dir),
        config_hash=config.config_hash(), shards_total=len(plan.shards),
        shards_built=len(results), shards_skipped=skipped, shards_failed=failures,
        counts=counts, timings={k: round(v, 3) for k, v in timings.items()},
        interrupted=interrupted)
    write_run_record(config, folder, plan, models, summary, shard_rows)
    return summary


EXIT_OK, EXIT_SHARDS_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None, prog: str = "mfhq build") -> int:
    """`mfhq build` (also `curation/build_mfhq.py`): exit 0 when every shard was written, 1 when
    some failed or the run was interrupted, 2 for set-up problems (message, no traceback)."""
    from curation.build.config import parse_args
    from curation.errors import SetupError
    from curation.quiet import quiet_terminal, terminal

    config = parse_args(argv, prog=prog)
    with quiet_terminal(config.logs_dir / "build.log", enabled=not config.verbose) as log:
        try:
            summary = run_build(config)
        except SetupError as err:
            print(f"{prog}: error: {err}", file=terminal())
            return EXIT_USAGE
        if log is not None:
            summary.notes.append(f"library output (mediapipe, ffmpeg, Ray): {log}")
        print(format_summary(summary))
    return EXIT_OK if summary.ok else EXIT_SHARDS_FAILED
