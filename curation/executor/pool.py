"""The Ray side of a build: start or join Ray, and stream the stages over the cluster.

    init_ray(config)            an embedded local Ray, or the cluster at --ray-address
    run_shards(config, ...)     the staged pipeline over the unfinished shards:

      stage 1  analysis   one Ray task per clip (1 CPU each, any node): decode, detect,
                          landmarks, pose, align, crop -> the clip's work file
      stage 2  quality    an actor pool (one actor per GPU, else a few CPU actors that hold no
                          CPU), models loaded once, fixed requests of the faces selection wants
      stage 3  identity   per identity, the moment its last clip is analysed: a prepare
                          task (1 CPU: identity check, pose clusters, the crops to score) ->
                          its quality actor (stage 2) -> a finish task (1 CPU: the choice of
                          N, the encoded sample and the identity's manifest rows), chained
                          through the object store so that no worker waits on an actor
      stage 4  shard      one Ray task per shard (no CPU reserved: it only writes) once its
                          identities are done: the samples in plan order, parts, commit

Why Ray core tasks and actors rather than Ray Data: the unit of commit is a shard whose inputs
are a known set of identities, and the output must be byte-identical whatever the scheduling;
tasks say that directly, give per-clip retries and time limits, and keep the driver's state to
one small outcome per clip. Work streams: clips are submitted in plan order, at most
`INFLIGHT_PER_CPU x cluster CPUs` at a time (backpressure, recomputed as nodes join and leave),
an identity is selected as soon as its clips are analysed (so no shard-wide serial tail), and a
shard is written as soon as its identities are done. Identity results travel to their shard
task through Ray's object store, never through the driver.

Every task and quality request reports its wall-clock span; `run.json` gets the build's
timeline from them (busy time per stage, idle CPU-s over the working phase:
`curation.pipeline.finalize.build_timeline`).

Faults: a clip whose worker dies is retried (`ANALYSIS_MAX_RETRIES`); when it dies every time
the clip is recorded `worker_crashed`. A clip that runs past its time limit (counted from when
its worker started it, `--clip-time-limit` + grace) is cancelled and recorded `video_timeout`.
An identity or shard task that fails is retried, then its shard is reported failed. Every wait
has a time limit; nothing here waits forever. Workers send their library output to
OUTPUT/logs/.
"""

from __future__ import annotations

import collections
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curation import build_folder as bf
from curation.errors import SchedulingError
from curation.pipeline.analyze import ClipOutcome, clip_key, read_inflight
from curation.pipeline.config import BuildConfig
from curation.pipeline.plan import ShardSpec
from curation.pipeline.shard import ShardResult
from curation.records import Reason

ANALYSIS_MAX_RETRIES = 2
ASSEMBLY_MAX_RETRIES = 2        # identity and shard tasks
TIMEOUT_GRACE_S = 30.0          # over the analyzer's own per-clip limit before a clip is killed
POLL_S = 2.0                    # how often the driver looks at time limits and progress
INFLIGHT_PER_CPU = 2            # analysis tasks in flight per cluster CPU (backpressure)
ASSEMBLY_TIMEOUT_S = 6 * 3600.0  # one identity's or shard's task; past it the shard has failed
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


def _quiet_worker(verbose: bool, folder: bf.BuildFolder) -> None:
    global _QUIETED
    if not verbose and not _QUIETED:
        from mfhq_contract.terminal import send_process_output_to

        send_process_output_to(folder.logs_dir)
        _QUIETED = True


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _warm_task(analysis, identity, verbose: bool, folder: bf.BuildFolder
               ) -> tuple[float, float, str]:
    """Start-up in a Ray worker: import the stages and load the analysis models, while the
    driver still checks models and prepares the output folder; returns its span and where the
    models run (`providers_label`)."""
    from curation.pipeline.analyze import load_models

    started = time.time()
    _quiet_worker(verbose, folder)
    providers = load_models(analysis, identity)
    return started, time.time(), providers_label(providers)


def providers_label(providers: dict[str, str | None]) -> str:
    """'detector CUDAExecutionProvider, embedder CPUExecutionProvider' (run.json, summary)."""
    return ", ".join(f"{model} {where}" for model, where in sorted(providers.items()) if where)


def warm_workers(config: BuildConfig, folder: bf.BuildFolder) -> list:
    """One warm-up task per cluster CPU (spread over the nodes), so that the first clips find
    workers with their models loaded; returns their refs (spans, for `run_shards`). A warm-up
    that fails costs nothing: the clip that meets the problem records it."""
    import ray

    warm = ray.remote(_warm_task).options(num_cpus=1, max_retries=0,
                                          scheduling_strategy="SPREAD")
    return [warm.remote(config.analysis, config.identity, config.verbose, folder)
            for _ in range(max(1, int(cluster_cpus())))]


def _analysis_task(analysis, identity, verbose: bool, folder: bf.BuildFolder, shard: str,
                   clip) -> ClipOutcome:
    """Stage 1 in a Ray worker (models cached per worker process)."""
    from curation.pipeline.analyze import analyze_clip

    started = time.time()
    _quiet_worker(verbose, folder)
    outcome = analyze_clip(analysis, identity, folder, shard, clip)
    outcome.node = _node()
    outcome.started_at, outcome.ended_at = started, time.time()
    return outcome


def _prepare_task(settings: dict, verbose: bool, folder: bf.BuildFolder, shard: str, ident,
                  outcomes: dict[str, ClipOutcome]):
    """Stage 3, first half, in a Ray worker: identity check, pose clusters, the crops to score.
    Three returns: its span, the PreparedIdentity, the crops (the quality actor's input)."""
    from curation.pipeline.shard import prepare_identity

    started = time.time()
    _quiet_worker(verbose, folder)
    prepared, crops = prepare_identity(ident, shard, outcomes, **settings)
    return (started, time.time()), prepared, crops


def _finish_task(settings: dict, verbose: bool, folder: bf.BuildFolder, prepare_span,
                 prepared, crops, scores, quality):
    """Stage 3, second half, in a Ray worker: the choice of N from the actor's `scores` (None:
    no actor could score them, they are scored here), the encoded sample and the rows. Two
    returns: a small report for the driver (node, the spans of both halves) and the
    IdentityResult for the shard task (it stays in the object store)."""
    from curation.pipeline.scoring import local_scores
    from curation.pipeline.shard import finish_identity

    started = time.time()
    _quiet_worker(verbose, folder)
    if scores is None:
        try:
            scores = local_scores(quality, crops) if crops else np.zeros(0)
        except Exception as err:  # noqa: BLE001 - handed on: the identity drops with it
            scores = err
    result = finish_identity(prepared, crops, scores, **settings)
    report = {"node": _node(), "spans": [tuple(prepare_span), (started, time.time())]}
    return report, result


def _shard_task(folder: bf.BuildFolder, spec: ShardSpec, *results) -> tuple[ShardResult, dict]:
    """Stage 4 in a Ray worker: write the shard from its identities' results (plan order)."""
    from curation.pipeline.shard import write_shard

    started = time.time()
    result = write_shard(folder, spec, list(results))
    return result, {"node": _node(), "started_at": started, "ended_at": time.time()}


def _crashed(err: Exception) -> ClipOutcome:
    return ClipOutcome.failed(
        Reason.WORKER_CRASHED,
        f"the worker process died {ANALYSIS_MAX_RETRIES + 1} times while analysing this clip "
        f"(crash or out of memory in the decoder or a model); the clip was left out "
        f"({type(err).__name__})")


class _Progress:
    """One bar over identities (a shard's identities count when it is committed), with clips
    analysed and shards written beside it; on the terminal even when library output is not."""

    def __init__(self, enabled: bool, ids_done: int, ids_total: int, clips_total: int,
                 shards_done: int, shards_total: int):
        from tqdm import tqdm

        from mfhq_contract.terminal import terminal

        self.clips, self.clips_total = 0, clips_total
        self.shards, self.shards_total = shards_done, shards_total
        self.bar = tqdm(total=ids_total, initial=ids_done, unit="id", file=terminal(),
                        disable=not enabled, desc="identities", dynamic_ncols=True)
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
    """What the pipeline did: shards written, shards failed, where the work ran, notes, and
    the spans of every task and quality request (`finalize.Span`) with the CPUs they ran on."""

    results: list[ShardResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    placement: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    spans: list[tuple[str, float, float, bool]] = field(default_factory=list)
    cpus: float = 0.0                  # cluster CPUs, averaged over the run


def cluster_cpus() -> float:
    """The CPUs of the cluster's live nodes now."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def analysis_inflight_limit(cpus: float) -> int:
    """Analysis tasks kept in flight for a cluster of `cpus` CPUs: enough queued work for
    every CPU (and for an autoscaler to see), never the whole plan at once."""
    return max(2, int(INFLIGHT_PER_CPU * cpus))


@dataclass
class _IdentityState:
    spec: ShardSpec
    position: int                      # in the shard
    ident: Any
    remaining: int
    outcomes: dict[str, ClipOutcome] = field(default_factory=dict)
    retried_locally: bool = False      # scored in its finish task after its actor failed


def run_shards(config: BuildConfig, folder: bf.BuildFolder, specs: list[ShardSpec],
               identities_done: int, identities_total: int, shards_total: int,
               timings: dict[str, float] | None = None, pool=None,
               warm: list | None = None) -> PipelineRun:
    """Build the given shards with the staged pipeline.

    `warm`: refs of `warm_workers` tasks, whose spans join the timeline.
    `pool`: quality actors already launched (`QualityPool.launch`, so that they load while the
    driver plans), else launched here; analysis starts without waiting for them.
    `timings["quality_ready"]` gets the seconds from their launch until they were ready; the
    run records which node analysed how many clips, selected how many identities and wrote
    how many shards (`placement`, written to run.json) and every task's span (`spans`)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError, TaskCancelledError

    from curation.executor.quality_pool import QualityPool
    from curation.faces.quality import QualityModel

    run = PipelineRun()
    if not specs:
        if pool is not None:
            pool.close()
        return run
    timings = timings if timings is not None else {}
    if pool is None:
        pool = QualityPool.launch(config.ray, config.quality,
                                  None if config.verbose else str(folder.logs_dir))
    analysis = ray.remote(_analysis_task).options(
        num_cpus=1, max_retries=ANALYSIS_MAX_RETRIES, retry_exceptions=False)
    # Stage 3 is two tasks around the actor's call, chained through the object store: no
    # worker ever blocks waiting on an actor (Ray would lend its CPU to a new worker process,
    # whose start-up leaves the CPU idle meanwhile).
    prepare = ray.remote(_prepare_task).options(num_cpus=1, num_returns=3,
                                                max_retries=ASSEMBLY_MAX_RETRIES)
    finish = ray.remote(_finish_task).options(num_cpus=1, num_returns=2,
                                              max_retries=ASSEMBLY_MAX_RETRIES)
    # Writing a shard is short I/O: reserving a CPU would leave one idle beside it.
    write = ray.remote(_shard_task).options(num_cpus=0, max_retries=ASSEMBLY_MAX_RETRIES)
    prepare_settings = {"selection": config.selection, "identity": config.identity}
    finish_settings = {"images_per_identity": config.selection.images_per_identity,
                       "crop_size": config.analysis.crop_size,
                       "quality_model": QualityModel(config.quality.model).value}
    limit_s = config.analysis.clip_time_limit_s + TIMEOUT_GRACE_S
    cpus = cluster_cpus()
    cpu_samples = [(time.time(), cpus)]

    identities: list[_IdentityState] = []
    queue: collections.deque = collections.deque()
    for spec in specs:
        for position, ident in enumerate(spec.identities):
            state = _IdentityState(spec, position, ident, len(ident.clips))
            identities.append(state)
            queue.extend((state, clip) for clip in ident.clips)
    left = {spec.name: len(spec.identities) for spec in specs}
    results: dict[str, list] = {spec.name: [None] * len(spec.identities) for spec in specs}
    failed_shards: set[str] = set()
    clip_refs: dict[Any, tuple[_IdentityState, Any]] = {}
    ident_refs: dict[Any, tuple[_IdentityState, float]] = {}      # finish reports
    stage3: dict[int, tuple] = {}        # id(state) -> (span, prepared, crops) refs
    shard_refs: dict[Any, tuple[ShardSpec, float]] = {}
    placement: dict[str, collections.Counter] = {
        "analysis": collections.Counter(), "identity": collections.Counter(),
        "assembly": collections.Counter()}
    providers: collections.Counter = collections.Counter()   # warm-up: where models run
    progress = _Progress(config.progress, identities_done, identities_total, len(queue),
                         shards_total - len(specs), shards_total)
    ordinal = {id(state): i for i, state in enumerate(identities)}

    def fail_shard(spec: ShardSpec, message: str) -> None:
        if spec.name not in failed_shards:
            failed_shards.add(spec.name)
            run.failures.append((spec.name, message[:2000]))
            progress.shard(len(spec.identities))

    def submit_identity(state: _IdentityState, local: bool = False) -> None:
        """Prepare -> the quality actor -> finish, all submitted at once (Ray runs each when
        its inputs are ready); `local`: the scores are computed in the finish task (after its
        actor failed)."""
        if state.spec.name in failed_shards:
            return
        if id(state) not in stage3:
            stage3[id(state)] = prepare.remote(prepare_settings, config.verbose, folder,
                                               state.spec.name, state.ident, state.outcomes)
        span, prepared, crops = stage3[id(state)]
        # The identity's number picks its actor; which actor answers never changes a score.
        actor = None if local else pool.actor_for(ordinal[id(state)])
        scores = actor.score_all.remote(crops) if actor is not None else None
        report, result = finish.remote(finish_settings, config.verbose, folder, span,
                                       prepared, crops, scores, config.quality)
        results[state.spec.name][state.position] = result
        ident_refs[report] = (state, time.monotonic())

    def clip_done(state: _IdentityState, clip, outcome: ClipOutcome) -> None:
        state.outcomes[clip_key(clip)] = outcome
        if outcome.node:
            placement["analysis"][outcome.node] += 1
        if outcome.started_at is not None and outcome.ended_at is not None:
            run.spans.append(("analysis", outcome.started_at, outcome.ended_at, True))
        progress.clip()
        state.remaining -= 1
        if state.remaining == 0:
            submit_identity(state)

    def identity_done(state: _IdentityState, report: dict) -> None:
        placement["identity"][report["node"]] += 1
        run.spans += [("identity", start, end, True) for start, end in report["spans"]]
        stage3.pop(id(state), None)
        spec = state.spec
        if spec.name in failed_shards:
            return
        left[spec.name] -= 1
        if left[spec.name] == 0:
            shard_refs[write.remote(folder, spec, *results.pop(spec.name))] = (
                spec, time.monotonic())

    for state in identities:     # an identity without clips (all taken down) goes at once
        if state.remaining == 0:
            submit_identity(state)
    for spec in specs:           # so does a shard without identities
        if not spec.identities:
            shard_refs[write.remote(folder, spec)] = (spec, time.monotonic())
    last_progress = time.monotonic()
    last_check, running = 0.0, False
    try:
        while queue or clip_refs or ident_refs or shard_refs:
            max_inflight = analysis_inflight_limit(cpus)
            while queue and len(clip_refs) < max_inflight:
                state, clip = queue.popleft()
                poisoned = state.spec.poisoned.get(clip_key(clip))
                if poisoned is not None:
                    clip_done(state, clip, ClipOutcome.failed(Reason.WORKER_CRASHED, poisoned))
                    continue
                ref = analysis.remote(config.analysis, config.identity, config.verbose, folder,
                                      state.spec.name, clip)
                clip_refs[ref] = (state, clip)
            pool.poll()
            if pool.ready_s is not None and "quality_ready" not in timings:
                timings["quality_ready"] = pool.ready_s
            done, _ = ray.wait(list(clip_refs) + list(ident_refs) + list(shard_refs),
                               num_returns=1, timeout=POLL_S)
            for ref in done:
                if ref in clip_refs:
                    state, clip = clip_refs.pop(ref)
                    try:
                        outcome = ray.get(ref, timeout=60)
                    except TaskCancelledError:
                        outcome = ClipOutcome.failed(
                            Reason.VIDEO_TIMEOUT, f"analysis did not return within {limit_s:.0f} "
                            "s; its worker was stopped")
                    except (RayError, GetTimeoutError) as err:
                        outcome = _crashed(err)
                    clip_done(state, clip, outcome)
                elif ref in ident_refs:
                    state, _ = ident_refs.pop(ref)
                    try:
                        identity_done(state, ray.get(ref, timeout=60))
                    except (RayError, GetTimeoutError) as err:
                        if _actor_lost(err) and not state.retried_locally:
                            # Its quality actor is gone (node lost, never placed): the finish
                            # task scores the crops itself.
                            state.retried_locally = True
                            submit_identity(state, local=True)
                        else:
                            results.pop(state.spec.name, None)
                            fail_shard(state.spec, f"identity {state.ident.identity_id}: {err}")
                else:
                    spec, _ = shard_refs.pop(ref)
                    try:
                        result, report = ray.get(ref, timeout=60)
                        run.results.append(result)
                        placement["assembly"][report["node"]] += 1
                        run.spans.append(("shard", report["started_at"], report["ended_at"],
                                          True))
                        progress.shard(len(spec.identities))
                    except (RayError, GetTimeoutError) as err:
                        fail_shard(spec, str(err))
            # Time limits read one marker file per clip in flight (on a shared filesystem), and
            # the cluster's CPUs are looked up: once per POLL_S, not after every finished task.
            if time.monotonic() - last_check >= POLL_S:
                running = _enforce_limits(folder, clip_refs, ident_refs, shard_refs, limit_s,
                                          fail_shard)
                cpus = cluster_cpus()
                cpu_samples.append((time.time(), cpus))
                last_check = time.monotonic()
            if done or running or not clip_refs:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > config.ray.stall_timeout_s:
                raise SchedulingError(_stalled_message(config, len(clip_refs), pool))
        pool.poll()
        for ref in warm or []:
            try:
                start, end, where = ray.get(ref, timeout=10)
                run.spans.append(("warm-up", start, end, True))
                providers[where] += 1
            except (RayError, GetTimeoutError):
                continue
        for described in pool.busy_spans():
            on_cpu = not str(described.get("device", "cpu")).startswith("cuda")
            run.spans += [("quality", start, end, on_cpu) for start, end in described["spans"]]
    finally:
        progress.close()
        pool.close()
        # Markers of clips whose workers were killed (timeouts, crashes) are stale now.
        shutil.rmtree(folder.manifests_dir / bf.INFLIGHT_DIR, ignore_errors=True)
    run.notes = list(pool.notes)
    run.cpus = _mean_cpus(cpu_samples, time.time())
    run.placement = {stage: dict(counts) for stage, counts in placement.items()}
    # where SCRFD / ArcFace ran, per warmed-up worker: CUDA on GPU nodes, else the CPU
    run.placement["analysis_providers"] = dict(providers)
    run.placement["quality"] = [d.get("node") for d in pool.described]
    return run


def _actor_lost(err: BaseException) -> bool:
    """Whether a task failed because an actor it depended on is gone."""
    from ray.exceptions import RayActorError

    return isinstance(err, RayActorError) or "ActorDiedError" in str(err) \
        or "RayActorError" in str(err)


def _mean_cpus(samples: list[tuple[float, float]], end: float) -> float:
    """Time-weighted mean of the cluster's CPUs over the run (nodes may join and leave)."""
    total = weight = 0.0
    for (at, cpus), (nxt, _) in zip(samples, [*samples[1:], (end, 0.0)], strict=True):
        total += cpus * max(nxt - at, 0.0)
        weight += max(nxt - at, 0.0)
    return total / weight if weight > 0 else samples[-1][1]


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


def _enforce_limits(folder: bf.BuildFolder, clip_refs: dict, ident_refs: dict, shard_refs: dict,
                    limit_s: float, fail_shard) -> bool:
    """Cancel clips past their time limit (counted from when a worker started them) and give
    up on shards whose identity or shard task runs past ASSEMBLY_TIMEOUT_S; True when some
    clip is running."""
    import ray

    now = time.time()
    running = False
    for ref, (_state, clip) in list(clip_refs.items()):
        marker = read_inflight(folder, clip)
        running = running or marker is not None
        if marker and now - float(marker.get("started", now)) > limit_s:
            ray.cancel(ref, force=True)        # kills the worker; met as TaskCancelledError
    late = f"did not finish within {ASSEMBLY_TIMEOUT_S:.0f} s"
    for ref, (state, submitted) in list(ident_refs.items()):
        if time.monotonic() - submitted > ASSEMBLY_TIMEOUT_S:
            ray.cancel(ref, force=True)
            ident_refs.pop(ref)
            fail_shard(state.spec, f"identity {state.ident.identity_id} {late}")
    for ref, (spec, submitted) in list(shard_refs.items()):
        if time.monotonic() - submitted > ASSEMBLY_TIMEOUT_S:
            ray.cancel(ref, force=True)
            shard_refs.pop(ref)
            fail_shard(spec, f"writing the shard {late}")
    return running
