"""The whole MFHQ build, start to end (`mfhq build`, `curation/build_mfhq.py`).

    check models (driver) -> enumerate + plan -> output folder (refuse / resume / grow) ->
    enumeration part + build-time takedowns -> resume check (rewrites the old shards that an
    incremental rerun takes identities out of) -> Ray pool over unfinished shards -> finalize

Start-up overlaps: the model check runs in a thread while the driver plans and Ray starts,
and the quality actors are launched as soon as Ray is up, to load their models while the
output folder is prepared and the first clips are analysed; one warm-up task per CPU loads the
analysis models into Ray's workers meanwhile, so the first clips find them loaded. A plan with shards starts Ray
before the resume check knows whether any is left to build (a rerun of a finished build then
starts and stops Ray, in the shadow of the model check).

`--dry-run` stops after planning and the resume check and prints what the run would do.

Set-up problems raise a `SetupError` (BuildRefused, SourceError, MissingWeightsError) before
any Ray work; the commands print its message without a traceback.
"""

from __future__ import annotations

import errno
import sys
import time

from curation import build_folder as bf
from curation import manifests, takedowns
from curation.executor.pool import PipelineRun, init_ray, run_shards, warm_workers
from curation.pipeline.config import BuildConfig
from curation.pipeline.finalize import (
    BuildSummary,
    build_timeline,
    format_summary,
    write_run_record,
)
from curation.pipeline.identity_check import resolve_duplicates
from curation.pipeline.incremental import retry_candidates
from curation.pipeline.models import check_models
from curation.pipeline.output import (
    OutputPlan,
    decide_output,
    drop_output_failures,
    output_full_message,
    output_name,
    prepare_output,
    remove_temporaries,
    resume_check,
)
from curation.pipeline.plan import build_plan
from curation.pipeline.shard import enumeration_rows
from curation.records import Reason
from curation.sources import check_root

__all__ = ["BuildSummary", "format_summary", "run_build"]


def run_build(config: BuildConfig) -> BuildSummary:
    """Plan, build every unfinished shard, finalize, holding the output's lock throughout
    (`bf.BuildLock`: one build per output). Raises a SetupError (OutputLocked, BuildRefused,
    SourceError, MissingWeightsError) before any Ray work, LockLost when another build took the
    output over, and the OSError when the output refuses writes (`bf.is_output_full`); a full
    output, in the summary's failures or raised, leaves no temporaries behind."""
    config.validate()
    folder = bf.BuildFolder.of(config)
    if folder.on_store:          # a missing bucket or refused credentials: one message, exit 2
        bf.check_output(folder.output)
    lock = bf.BuildLock.acquire(folder.manifests_dir, output_name(config))
    try:
        # An output on a store: its manifests into this node's mirror, under the lock.
        bf.sync_down(folder.manifests_dir)
        summary = _run_build_locked(config)
        lock.check()
        # Clips whose work file the full disk refused were recorded as failed and their shard
        # committed: those outcomes are the disk's, so the shards go back to unfinished.
        dropped = drop_output_failures(folder)
        if dropped:
            raise OSError(errno.ENOSPC, f"{len(dropped)} shards recorded clips that failed on "
                          "it and were taken back", output_name(config))
        if any(bf.is_output_full(message) for _, message in summary.shards_failed):
            remove_temporaries(folder)
        return summary
    except Exception as err:
        if bf.is_output_full(err):
            remove_temporaries(folder)   # ours alone: the lock is still held
        raise
    finally:
        lock.release()


def _run_build_locked(config: BuildConfig) -> BuildSummary:
    import ray

    from curation.executor.quality_pool import QualityPool

    config.validate()
    folder = bf.BuildFolder.of(config)
    t0, started_at = time.monotonic(), time.time()
    timings: dict[str, float] = {}
    for kind, root in config.sources:     # a wrong path is said before any model is looked for
        check_root(kind, root)
    models_check = _InThread(check_models, config)
    if config.ray.address:
        # Joining a running cluster takes about a second, nothing worth overlapping; and a
        # `ray job submit` driver's ray.init unpacks the job's working directory again, which
        # leaves this process's working directory deleted for whatever runs meanwhile (torch's
        # import then fails in the model check).
        models_check.result(MODEL_CHECK_TIMEOUT_S)
    pipeline = PipelineRun()
    interrupted = False
    started_ray = False
    pool = None
    warm: list = []
    try:
        t = time.monotonic()
        decided = plan_run(config, folder)
        plan, increment = decided.plan, decided.increment
        timings["enumerate_and_plan"] = time.monotonic() - t
        if plan.shards:
            t = time.monotonic()
            started_ray = init_ray(config)
            timings["ray_init"] = time.monotonic() - t
            pool = QualityPool.launch(config.ray, config.quality,
                                      None if config.verbose else str(folder.logs_dir))
            warm = warm_workers(config, folder)
        # A missing weight file is said here, before the output folder is touched.
        models = models_check.result(MODEL_CHECK_TIMEOUT_S)
        timings["check_models"] = models_check.seconds
        prepare_output(config, folder, decided)
        _write_enumeration_part(config, folder, plan)

        t = time.monotonic()
        # Reads footers and sizes, never a tar (unless --verify-finished); rewrites the old
        # shards that identities of an incremental rerun left.
        check = resume_check(folder, plan, full_hash=config.verify_finished)
        todo = check.todo
        timings["resume_check"] = time.monotonic() - t
        skipped = len(plan.shards) - len(todo)
        ids_total = len(plan.identities)
        ids_done = ids_total - sum(len(s.identities) for s in todo)

        t = time.monotonic()
        try:
            if todo:
                pipeline = run_shards(config, folder, todo, ids_done, ids_total,
                                      len(plan.shards), timings, pool=pool, warm=warm)
                pool = None                   # run_shards closed it
        except KeyboardInterrupt:
            interrupted = True
        timings["build"] = time.monotonic() - t
    finally:
        if pool is not None:
            pool.close()
        if started_ray:
            ray.shutdown()
        models_check.result(MODEL_CHECK_TIMEOUT_S, reraise=False)   # never leave it running
    timeline = build_timeline(pipeline.spans, pipeline.cpus, started_at)
    if timeline:
        timings["startup"] = timeline["startup_s"]
        _write_spans(folder, pipeline.spans, started_at)

    # Parts that workers on other nodes published to the store, into this node's mirror.
    bf.sync_down(folder.manifests_dir)
    duplicates = None
    if not interrupted:   # identity check across identities (issue 13): after every shard
        duplicates = resolve_duplicates(folder, config)
        timings["duplicates"] = duplicates.seconds
    t = time.monotonic()
    shard_rows = bf.write_shards_table(folder, [s.name for s in plan.shards])
    counts = bf.count_outcomes(folder.manifests_dir)
    timings["finalize"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t0
    summary = BuildSummary(
        shards_dir=shown(config.shards_dir), manifests_dir=shown(config.manifests_dir),
        config_hash=config.config_hash(), shards_total=len(plan.shards),
        shards_built=len(pipeline.results), shards_skipped=skipped,
        shards_failed=pipeline.failures, counts=counts,
        timings={k: round(v, 3) for k, v in timings.items()}, interrupted=interrupted,
        notes=list(pipeline.notes), placement=pipeline.placement, timeline=timeline)
    if increment is not None and not increment.empty:
        summary.notes.append("incremental: " + increment.lines()[0])
    if duplicates is not None and duplicates.removed:
        # without this line the summary counts fewer identities than the progress bar did
        summary.notes.append(
            f"removed as duplicates across splits: {len(duplicates.removed)} identities (the "
            f"same person as one kept in the other split; recorded in {takedowns.TAKEDOWNS_FILE})")
    summary.notes += [f"rewrote {r.shard} without {len(r.identities)} identities"
                      for r in check.rewrites if r.identities]
    write_run_record(config, folder, plan, models, summary, shard_rows, increment)
    return summary


MODEL_CHECK_TIMEOUT_S = 900.0     # loading the quality model once on the driver's CPU
MAX_SPANS_WRITTEN = 100_000


def _write_spans(folder: bf.BuildFolder, spans: list, started_at: float) -> None:
    """Every span of the timeline (stage, start, end in s from the build's start, on CPU) as
    JSON lines in OUTPUT/logs/timeline.jsonl, for a closer look than run.json's totals; the
    first MAX_SPANS_WRITTEN only. A log, not a manifest: never fails the build."""
    import json

    try:
        lines = [json.dumps([stage, round(start - started_at, 3), round(end - started_at, 3),
                             on_cpu]) for stage, start, end, on_cpu in
                 sorted(spans, key=lambda s: s[1])[:MAX_SPANS_WRITTEN]]
        bf.atomic_write(folder.logs_dir / "timeline.jsonl", "\n".join(lines) + "\n")
    except OSError:
        pass


class _InThread:
    """`fn(*args)` in a daemon thread from now on; `result` waits for it (bounded) and returns
    its value or raises its exception."""

    def __init__(self, fn, *args):
        import threading

        self._value: object = None
        self._error: BaseException | None = None
        self.seconds = 0.0
        started = time.monotonic()

        def body() -> None:
            try:
                self._value = fn(*args)
            except BaseException as err:  # noqa: BLE001 - handed to the caller of result()
                self._error = err
            finally:
                self.seconds = time.monotonic() - started

        self._thread = threading.Thread(target=body, name=f"mfhq-{fn.__name__}", daemon=True)
        self._thread.start()

    def result(self, timeout_s: float, reraise: bool = True):
        self._thread.join(timeout_s)
        if not reraise:
            return None
        if self._thread.is_alive():
            raise TimeoutError(f"the model check did not finish within {timeout_s:.0f} s")
        if self._error is not None:
            raise self._error
        return self._value


def plan_run(config: BuildConfig, folder: bf.BuildFolder) -> OutputPlan:
    """Enumerate and plan, take out what `mfhq takedown` removed, and decide against the output
    folder: a first build, a resume, or an incremental rerun (reads only; raises SetupError)."""
    plan = build_plan(config.resolved_sources(), config.plan, takedown_file=config.takedown)
    # Identities removed from this folder by `mfhq takedown` never come back.
    plan = takedowns.without_recorded(plan, folder.manifests_dir)
    retry = (retry_candidates(folder.manifests_dir)
             if config.retry_failed and folder.plan_path.exists() else set())
    return decide_output(config, folder, plan, retry)


def _write_enumeration_part(config: BuildConfig, folder: bf.BuildFolder, plan) -> None:
    """The clips rejected before analysis, as this plan has them; written only when they
    differ from the part on disk (a rerun after a kill, or an unchanged rerun, writes nothing)."""
    # Clips on the takedown list leave no row with their ids, only a salted hash.
    listed = takedowns.read_takedown(config.takedown)
    taken = [c for c in plan.rejected_clips
             if c.reason == Reason.TAKEDOWN or takedowns.takedown_match(c, listed)]
    takedowns.append_record(folder.manifests_dir, takedowns.clip_removals(taken, listed),
                            takedowns.DEFAULT_REASON, "build")
    table = manifests.to_table("clips", enumeration_rows(
        [c for c in plan.rejected_clips if c not in taken]))
    path = folder.enumeration_part
    try:
        if path.exists() and bf.read_part(path, "clips").equals(table):
            return
    except Exception:  # noqa: BLE001 - an unreadable part is written anew
        pass
    bf.write_parquet_atomic(table, path)


def dry_run(config: BuildConfig) -> list[str]:
    """What a run with `config` would do to its output folder, as lines; writes nothing."""
    config.validate()
    folder = bf.BuildFolder.of(config)
    bf.sync_down(folder.manifests_dir)     # a store's manifests into the mirror; no object
    decided = plan_run(config, folder)
    plan, increment = decided.plan, decided.increment
    lines = [f"dry run: {shown(config.shards_dir)}, {shown(config.manifests_dir)} "
             "(nothing is written)"]
    if decided.clear:
        lines.append("--overwrite: the existing build would be deleted")
    if increment is None:
        lines.append(f"a new build: {len(plan.identities)} identities in "
                     f"{len(plan.shards)} shards")
    else:
        lines += increment.lines()
    check = resume_check(folder, plan, full_hash=config.verify_finished, dry_run=True)
    lines.append(f"shards: {len(plan.shards)} planned, {len(check.todo)} to build, "
                 f"{len(check.rewrites)} to rewrite, "
                 f"{len(plan.shards) - len(check.todo) - len(check.rewrites)} finished")
    lines += [f"  build    {s.name} ({len(s.identities)} identities)" for s in check.todo]
    lines += [f"  rewrite  {r.shard}" for r in check.rewrites]
    return lines


def shown(path) -> str:
    """A build folder as messages name it: its URL on a store, else the path."""
    return bf.store_url(path) or str(path)


EXIT_OK, EXIT_SHARDS_FAILED, EXIT_USAGE, EXIT_OUTPUT_FULL, EXIT_INTERNAL_ERRORS = 0, 1, 2, 3, 4


def exit_code(summary: BuildSummary) -> int:
    """0: every shard written and no internal_error recorded; 1: some shard failed or the run
    was interrupted; 3: the output refused writes; 4: finished, but the manifests record
    internal_error outcomes (a bug, never a clean build). 2 (set-up) is main's."""
    if any(bf.is_output_full(message) for _, message in summary.shards_failed):
        return EXIT_OUTPUT_FULL
    if not summary.ok:
        return EXIT_SHARDS_FAILED
    return EXIT_INTERNAL_ERRORS if internal_errors(summary.counts) else EXIT_OK


def internal_errors(counts: dict) -> int:
    """Clips and identities whose recorded outcome is internal_error."""
    return sum(int(counts.get(key, {}).get(Reason.INTERNAL_ERROR.value, 0))
               for key in ("clips_not_ok_by_reason", "identities_dropped_by_reason"))


def main(argv: list[str] | None = None, prog: str = "mfhq build") -> int:
    """`mfhq build` (also `curation/build_mfhq.py`), exit codes as `exit_code`, 2 for set-up
    problems (including an output another build holds) and 3 for an output that refuses
    writes: one message, no traceback."""
    from curation.errors import SetupError
    from curation.pipeline.config import parse_args
    from mfhq_contract.terminal import quiet_terminal, terminal

    config = parse_args(argv, prog=prog)
    if config.dry_run:
        # Before quiet_terminal: a dry run creates nothing, not even the log folder.
        try:
            print("\n".join(dry_run(config)))
        except SetupError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK
    with quiet_terminal(config.logs_dir / "build.log", enabled=not config.verbose) as log:
        try:
            summary = run_build(config)
        except SetupError as err:
            print(f"{prog}: error: {err}", file=terminal())
            return EXIT_USAGE
        except Exception as err:
            if not bf.is_output_full(err):
                raise
            print(f"{prog}: error: {output_full_message(config, err)}", file=terminal())
            return EXIT_OUTPUT_FULL
        code = exit_code(summary)
        if code == EXIT_OUTPUT_FULL:     # the one message; the shards' tracebacks say no more
            full = next(m for _, m in summary.shards_failed if bf.is_output_full(m))
            print(f"{prog}: error: {output_full_message(config, full)}", file=terminal())
            return code
        if log is not None:
            summary.notes.append(f"library output (mediapipe, ffmpeg, Ray): {log}")
        print(format_summary(summary))
        if code == EXIT_INTERNAL_ERRORS:
            print(f"{prog}: error: the manifests record {internal_errors(summary.counts)} "
                  "internal_error outcomes (clips or identities; a bug, their messages are in "
                  "the clips and identities manifests): the build is not clean. "
                  "--retry-failed analyses them again.", file=terminal())
    return code
