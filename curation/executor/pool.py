"""The Ray side of a build: start or join Ray, and stream the three stages over the cluster.

    init_ray(config)            an embedded local Ray, or the cluster at --ray-address
    run_shards(config, ...)     the staged pipeline over the unfinished shards:

      stage 1  analysis   one Ray task per clip (1 CPU each, any node): decode, detect,
                          landmarks, pose, align, crop -> the clip's work file
      stage 2  quality    an actor pool (one actor per GPU, else a few CPU actors), models
                          loaded once, large batches of the crops selection wants scored
      stage 3  assembly   one Ray task per shard (1 CPU) once all its clips are analysed:
                          cluster, score (stage 2), choose, write tar + parts, commit

Why Ray core tasks and actors rather than Ray Data: the unit of commit is a shard whose inputs
are a known set of clips, and the output must be byte-identical whatever the scheduling; tasks
with a per-shard barrier say that directly, give per-clip retries and time limits, and keep the
driver's state to one small outcome per clip. Work streams: clips are submitted in plan order,
at most `2 x cluster CPUs` at a time (backpressure), and a shard is assembled as soon as its
last clip is analysed, so early shards are committed while later clips are still decoded.

Faults: a clip whose worker dies is retried (`ANALYSIS_MAX_RETRIES`); when it dies every time
the clip is recorded `worker_crashed`. A clip that runs past its time limit (counted from when
its worker started it, `--clip-time-limit` + grace) is cancelled and recorded `video_timeout`.
An assembly task that fails is retried, then its shard is reported failed. Every wait has a
time limit; nothing here waits forever. Workers send their library output to OUTPUT/logs/.
"""

from __future__ import annotations

import collections
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation import build_folder as bf
from curation.pipeline.analyze import ClipOutcome, clip_key, read_inflight
from curation.pipeline.config import BuildConfig
from curation.pipeline.plan import ShardSpec
from curation.pipeline.shard import ShardResult
from curation.errors import SchedulingError
from curation.records import Reason

ANALYSIS_MAX_RETRIES = 2
ASSEMBLY_MAX_RETRIES = 2
TIMEOUT_GRACE_S = 30.0          # over the analyzer's own per-clip limit before a clip is killed
POLL_S = 2.0                    # how often the driver looks at time limits and progress
INFLIGHT_PER_CPU = 2            # analysis tasks in flight per cluster CPU (backpressure)
ASSEMBLY_TIMEOUT_S = 6 * 3600.0  # one shard's assembly; past it the shard is reported failed
REPO_ROOT = Path(__file__).resolve().parents[2]


def init_ray(config: BuildConfig) -> bool:
    """Start or join Ray; returns True when this call started it (so it should shut it down).

    Without `config.verbose`, worker output is not forwarded to this terminal (it is in
    OUTPUT/logs/ and in Ray's own session logs)."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    quiet = {} if config.verbose else {"log_to_driver": False, "logging_level": logging.WARNING}
    if config.ray.address:
        # On a cluster the code comes from the job's working_dir (`ray job submit`) or from the
        # install in cluster.yaml's setup commands (`ray submit`).
        ray.init(address=config.ray.address, **quiet)
    else:
        # address="local": always a fresh embedded Ray, never a stale cluster found by accident.
        # Workers get the repo root on their path, so a plain checkout works uninstalled.
        ray.init(address="local", num_cpus=config.ray.num_cpus, num_gpus=config.ray.num_gpus,
                 include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}}, **quiet)
    return True


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH")
    return f"{REPO_ROOT}{os.pathsep}{existing}" if existing else str(REPO_ROOT)


_QUIETED = False


def _quiet_worker(config: BuildConfig, folder: bf.BuildFolder) -> None:
    global _QUIETED
    if not config.verbose and not _QUIETED:
        from curation.quiet import send_process_output_to

        send_process_output_to(folder.logs_dir)
        _QUIETED = True


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _analysis_task(config: BuildConfig, folder: bf.BuildFolder, shard: str, clip) -> ClipOutcome:
    """Stage 1 in a Ray worker (models cached per worker process)."""
    from curation.pipeline.analyze import analyze_clip

    _quiet_worker(config, folder)
    outcome = analyze_clip(config, folder, shard, clip)
    outcome.node = _node()
    return outcome


def _assembly_task(config: BuildConfig, folder: bf.BuildFolder, spec: ShardSpec,
                   outcomes: dict[str, ClipOutcome], pool) -> tuple[ShardResult, str]:
    """Stage 3 in a Ray worker; scores through the quality pool (stage 2)."""
    from curation.pipeline.shard import assemble_shard

    _quiet_worker(config, folder)
    return assemble_shard(config, folder, spec, outcomes, pool.score), _node()


def _crashed(err: Exception) -> ClipOutcome:
    return ClipOutcome.failed(
        Reason.WORKER_CRASHED,
        f"the worker process died {ANALYSIS_MAX_RETRIES + 1} times while analysing this clip "
        f"(crash or out of memory in the decoder or a model); the clip was left out "
        f"({type(err).__name__})")


class _Progress:
    """One bar over identities (a shard's identities count when it is committed), with clips
    analysed and shards written beside it; on the terminal even when library output is not."""

    def __init__(self, config: BuildConfig, ids_done: int, ids_total: int, clips_total: int,
                 shards_done: int, shards_total: int):
        from tqdm import tqdm

        from curation.quiet import terminal

        self.clips, self.clips_total = 0, clips_total
        self.shards, self.shards_total = shards_done, shards_total
        self.bar = tqdm(total=ids_total, initial=ids_done, unit="id", file=terminal(),
                        disable=not config.progress, desc="identities", dynamic_ncols=True)
        self.show()

    def show(self) -> None:
        self.bar.set_postfix_str(f"clips {self.clips}/{self.clips_total}, "
                                 f"shards {self.shards}/{self.shards_total}")

    def clip(self) -> None:
        self.clips += 1
        self.show()

    def shard(self, identities: int) -> None:
        self.shards += 1
        self.bar.update(identities)
        self.show()

    def close(self) -> None:
        self.bar.close()


@dataclass
class PipelineRun:
    """What the pipeline did: shards written, shards failed, where the work ran, notes."""

    results: list[ShardResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    placement: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_shards(config: BuildConfig, folder: bf.BuildFolder, specs: list[ShardSpec],
               identities_done: int, identities_total: int, shards_total: int,
               timings: dict[str, float] | None = None) -> PipelineRun:
    """Build the given shards with the staged pipeline.

    `timings["quality_ready"]` gets the seconds until the quality actors were placed and had
    their model loaded; the run records which node analysed how many clips and assembled how
    many shards (`placement`, written to run.json)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError, TaskCancelledError

    from curation.executor.quality_pool import QualityPool

    run = PipelineRun()
    if not specs:
        return run
    timings = timings if timings is not None else {}
    started = time.monotonic()
    pool, run.notes = QualityPool.start(config, str(folder.logs_dir))
    timings["quality_ready"] = time.monotonic() - started
    analysis = ray.remote(_analysis_task).options(
        num_cpus=1, max_retries=ANALYSIS_MAX_RETRIES, retry_exceptions=False)
    assembly = ray.remote(_assembly_task).options(num_cpus=1, max_retries=ASSEMBLY_MAX_RETRIES)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    max_inflight = max(2, INFLIGHT_PER_CPU * cpus)
    limit_s = config.analysis.clip_time_limit_s + TIMEOUT_GRACE_S

    queue = collections.deque((spec, clip) for spec in specs for ident in spec.identities
                              for clip in ident.clips)
    remaining = {spec.name: sum(len(i.clips) for i in spec.identities) for spec in specs}
    outcomes: dict[str, dict[str, ClipOutcome]] = {spec.name: {} for spec in specs}
    by_name = {spec.name: spec for spec in specs}
    clip_refs: dict[Any, tuple[ShardSpec, Any]] = {}
    shard_refs: dict[Any, tuple[ShardSpec, float]] = {}
    placement: dict[str, collections.Counter] = {"analysis": collections.Counter(),
                                                 "assembly": collections.Counter()}
    results, failures = run.results, run.failures
    progress = _Progress(config, identities_done, identities_total, len(queue),
                         shards_total - len(specs), shards_total)

    def clip_done(spec: ShardSpec, clip, outcome: ClipOutcome) -> None:
        outcomes[spec.name][clip_key(clip)] = outcome
        if outcome.node:
            placement["analysis"][outcome.node] += 1
        progress.clip()
        remaining[spec.name] -= 1
        if remaining[spec.name] == 0:
            ref = assembly.remote(config, folder, spec, outcomes.pop(spec.name), pool)
            shard_refs[ref] = (spec, time.monotonic())

    for spec in specs:     # a shard without clips (all taken down) is assembled at once
        if remaining[spec.name] == 0:
            shard_refs[assembly.remote(config, folder, spec, {}, pool)] = (spec, time.monotonic())
    last_progress = time.monotonic()
    last_check, running = 0.0, False
    try:
        while queue or clip_refs or shard_refs:
            while queue and len(clip_refs) < max_inflight:
                spec, clip = queue.popleft()
                poisoned = spec.poisoned.get(clip_key(clip))
                if poisoned is not None:
                    clip_done(spec, clip, ClipOutcome.failed(Reason.WORKER_CRASHED, poisoned))
                    continue
                clip_refs[analysis.remote(config, folder, spec.name, clip)] = (spec, clip)
            done, _ = ray.wait(list(clip_refs) + list(shard_refs), num_returns=1,
                               timeout=POLL_S)
            for ref in done:
                if ref in clip_refs:
                    spec, clip = clip_refs.pop(ref)
                    try:
                        outcome = ray.get(ref, timeout=60)
                    except TaskCancelledError:
                        outcome = ClipOutcome.failed(
                            Reason.VIDEO_TIMEOUT, f"analysis did not return within {limit_s:.0f} "
                            "s; its worker was stopped")
                    except (RayError, GetTimeoutError) as err:
                        outcome = _crashed(err)
                    clip_done(spec, clip, outcome)
                else:
                    spec, _ = shard_refs.pop(ref)
                    try:
                        result, node = ray.get(ref, timeout=60)
                        results.append(result)
                        placement["assembly"][node] += 1
                    except (RayError, GetTimeoutError) as err:
                        failures.append((spec.name, str(err)[:2000]))
                    progress.shard(len(by_name[spec.name].identities))
            # Time limits read one marker file per clip in flight (on a shared filesystem):
            # once per POLL_S, not after every finished task.
            if time.monotonic() - last_check >= POLL_S:
                running = _enforce_limits(folder, clip_refs, shard_refs, limit_s, failures,
                                          progress)
                last_check = time.monotonic()
            if done or running or not clip_refs:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > config.ray.stall_timeout_s:
                raise SchedulingError(_stalled_message(config, len(clip_refs), pool))
    finally:
        progress.close()
        pool.close()
        # Markers of clips whose workers were killed (timeouts, crashes) are stale now.
        shutil.rmtree(folder.manifests_dir / bf.INFLIGHT_DIR, ignore_errors=True)
    run.placement = {stage: dict(counts) for stage, counts in placement.items()}
    run.placement["quality"] = [d.get("node") for d in pool.described]
    return run


def _stalled_message(config: BuildConfig, waiting: int, pool) -> str:
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    return (f"for {config.ray.stall_timeout_s:.0f} s no analysis task of the build could start "
            f"({waiting} clips waiting): the cluster has {total.get('CPU', 0):g} CPUs, "
            f"{free.get('CPU', 0):g} free, on {len(ray.nodes())} nodes, and the quality stage "
            f"holds {len(pool.actors)} actors. Add worker nodes with CPUs (`ray status` shows "
            "what the cluster has), lower --quality-actors, or raise --stall-timeout while an "
            "autoscaler adds nodes. Rerun the same command: finished shards and analysed clips "
            "are kept.")


def _enforce_limits(folder: bf.BuildFolder, clip_refs: dict, shard_refs: dict, limit_s: float,
                    failures: list, progress: _Progress | None) -> bool:
    """Cancel clips past their time limit (counted from when a worker started them) and give
    up on shards whose assembly runs past ASSEMBLY_TIMEOUT_S; True when some clip is running."""
    import ray

    now = time.time()
    running = False
    for ref, (_spec, clip) in list(clip_refs.items()):
        marker = read_inflight(folder, clip)
        running = running or marker is not None
        if marker and now - float(marker.get("started", now)) > limit_s:
            ray.cancel(ref, force=True)        # kills the worker; met as TaskCancelledError
    for ref, (spec, submitted) in list(shard_refs.items()):
        if time.monotonic() - submitted > ASSEMBLY_TIMEOUT_S:
            ray.cancel(ref, force=True)
            shard_refs.pop(ref)
            failures.append((spec.name, f"assembly did not finish within "
                                        f"{ASSEMBLY_TIMEOUT_S:.0f} s"))
            if progress is not None:
                progress.shard(len(spec.identities))
    return running
