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
A quality request that gets no answer within `QUALITY_REQUEST_TIMEOUT_S` of its crops being
ready (a stuck or lost actor) is given up: its identity's finish task scores the crops itself,
and the actor is stopped (`QualityPool.retire`; the pool starts another in its place), so no
later identity waits the same limit on it.
An identity or shard task that fails is retried, then its shard is reported failed. An output
that refuses writes (`bf.is_output_full`) while a clip's work file is written stops the build
with that OSError (the runner's exit 3): the disk's failure is never recorded as the clip's.
Every wait has a time limit; nothing here waits forever. Workers send their library output to
OUTPUT/logs/.

When a worker started a clip, the driver learns from the clip clock (`_ClipClock`): one Ray
actor of no CPU, on the driver's node, that each analysis task tells at its start (a
fire-and-forget call) and that the driver reads once per POLL_S with a time-limited get. Why an
actor rather than marker files or a streaming task: worker nodes need share no filesystem with
the driver and the output may be an object store, where polling one object per clip every 2 s
costs a request each and a listing is not up to date; a streaming generator would do it with
one more object per clip and ties the start to the generator's protocol, while the actor costs
one small message per clip and answers in one call for every clip in flight. The actor times
with its own clock and reports ages, so nodes' clocks never need to agree. It holds only the
clips the driver still has in flight (each read forgets the others).

Driver memory per clip (measured by `bench/orchestration.py`): a clip's outcome stays in the
driver only until its identity is handed to its prepare task, an identity's state only until
its identity is done, the plan's clips are queued lazily, and spans are kept in `SpanLog`'s
flat arrays (17 bytes a span), not as tuples.
"""

from __future__ import annotations

import array
import collections
import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curation import build_folder as bf
from curation.errors import SchedulingError
from curation.pipeline.analyze import ClipOutcome, clip_key
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
# One identity's quality request, from its crops being ready to the actor's answer (queue
# included); past it the identity's finish task scores the crops itself.
QUALITY_REQUEST_TIMEOUT_S = 600.0
CLOCK_READ_TIMEOUT_S = 10.0     # one read of the clip clock; a late one is skipped, not waited on
CLOCK_NAME = "mfhq-clip-clock"  # the clip clock's actor name in the build's job (see ClipClock)
REPO_ROOT = Path(__file__).resolve().parents[2]
# Ray kills a worker process that stayed idle for 1 s while more processes than CPUs exist (the
# actors, zero-CPU shard tasks and the processes Ray starts ahead of demand push the count over),
# and a later clip then starts a new process and loads its models again: measured on the small
# demo build, 2-3 s of CPU per restart and a working phase twice as long. Idle workers are kept
# for the whole build instead (they hold memory, not CPU). cluster.yaml gives its head the same.
RAYLET_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 600_000}


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
        ray.init(address=config.ray.address, runtime_env=job_runtime_env(), **quiet)
    else:
        # address="local": always a fresh embedded Ray, never a stale cluster found by accident.
        # Workers get the repo root on their path, so a plain checkout works uninstalled. They
        # inherit it (and the storage options) from this process's environment, through the
        # raylet it starts, rather than from a job runtime_env: the workers Ray prestarts for
        # the first driver have the default runtime_env, and a job with its own would leave
        # them idle and start as many again (measured: 2 processes more per build).
        os.environ["PYTHONPATH"] = _pythonpath()
        ray.init(address="local", num_cpus=config.ray.num_cpus, num_gpus=config.ray.num_gpus,
                 include_dashboard=False, _system_config=RAYLET_SYSTEM_CONFIG, **quiet)
    return True


def job_runtime_env(env_vars: dict[str, str] | None = None) -> dict | None:
    """The runtime_env of the build's Ray job: `env_vars` and this process's storage options
    ($MFHQ_STORAGE_OPTIONS, which `--storage-options` sets), so that every worker of every node
    reaches the stores as the driver does (a cluster's workers are started by their raylet, not
    by this process, and inherit nothing from it). A variable the submitted job's own
    runtime_env already sets (`ray job submit --runtime-env-json`) is left to it: Ray refuses
    to merge a driver's runtime_env that sets the same one. None when there is nothing to set."""
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    from mfhq_contract.storage import OPTIONS_ENV

    wanted = dict(env_vars or {})
    if os.environ.get(OPTIONS_ENV, "").strip():
        wanted[OPTIONS_ENV] = os.environ[OPTIONS_ENV]
    try:
        submitted = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}")
        taken = set((submitted.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        taken = set()
    wanted = {name: value for name, value in wanted.items() if name not in taken}
    return {"env_vars": wanted} if wanted else None


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH")
    if existing and str(REPO_ROOT) in existing.split(os.pathsep):
        return existing          # a second build in this process: already there
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
                   clip, clock=None) -> ClipOutcome:
    """Stage 1 in a Ray worker (models cached per worker process); tells `clock` (the
    `_ClipClock`) that it started the clip: the clip's time limit counts from here."""
    from curation.pipeline.analyze import analyze_clip

    started = time.time()
    if clock is not None:
        try:
            clock.started.remote(clip_key(clip), os.getpid())     # fire and forget
        except Exception:  # noqa: BLE001 - a lost clock costs the clip its time limit only
            pass
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


class SpanLog:
    """The build's spans (`finalize.Span`: stage, start, end, on_cpu) in flat arrays: 17 bytes
    a span instead of a tuple of about 150, for one span per clip of a 600,000-clip build.
    Reads as a sequence of those tuples (what `finalize.build_timeline` and the runner's
    timeline log take)."""

    def __init__(self) -> None:
        self._stages: list[str] = []
        self._codes = array.array("B")      # stage index * 2 + on_cpu
        self._starts = array.array("d")
        self._ends = array.array("d")

    def append(self, span: tuple[str, float, float, bool]) -> None:
        stage, start, end, on_cpu = span
        if stage not in self._stages:
            self._stages.append(stage)
        self._codes.append(self._stages.index(stage) * 2 + bool(on_cpu))
        self._starts.append(float(start))
        self._ends.append(float(end))

    def extend(self, spans) -> None:
        for span in spans:
            self.append(span)

    def __iadd__(self, spans) -> SpanLog:
        self.extend(spans)
        return self

    def __len__(self) -> int:
        return len(self._codes)

    def __getitem__(self, index: int) -> tuple[str, float, float, bool]:
        code = self._codes[index]
        return self._stages[code // 2], self._starts[index], self._ends[index], bool(code % 2)

    def __iter__(self) -> Iterator[tuple[str, float, float, bool]]:
        for code, start, end in zip(self._codes, self._starts, self._ends, strict=True):
            yield self._stages[code // 2], start, end, bool(code % 2)


@dataclass
class PipelineRun:
    """What the pipeline did: shards written, shards failed, where the work ran, notes, and
    the spans of every task and quality request (`finalize.Span`) with the CPUs they ran on."""

    results: list[ShardResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    placement: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    spans: SpanLog = field(default_factory=SpanLog)
    cpus: float = 0.0                  # cluster CPUs, averaged over the run


def cluster_cpus() -> float:
    """The CPUs of the cluster's live nodes now."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def analysis_inflight_limit(cpus: float) -> int:
    """Analysis tasks kept in flight for a cluster of `cpus` CPUs: enough queued work for
    every CPU (and for an autoscaler to see), never the whole plan at once."""
    return max(2, int(INFLIGHT_PER_CPU * cpus))


class _ClipClock:
    """Which clips workers have started, and how long ago (a Ray actor of no CPU; see the
    module doc). Ages come from this actor's own monotonic clock, so no two nodes' clocks are
    compared; it holds only the clips the driver said are still in flight."""

    def __init__(self) -> None:
        self._started: dict[str, tuple[float, int]] = {}     # clip key -> (monotonic, pid)

    def started(self, key: str, pid: int) -> None:
        """A worker (process `pid`) started the clip `key` now; a retry starts it anew."""
        self._started[key] = (time.monotonic(), pid)

    def read(self, in_flight: list[str]) -> dict[str, tuple[float, int]]:
        """Seconds since each clip of `in_flight` was started, and its worker's pid; every
        other clip is forgotten (finished, or reported after the driver was done with it)."""
        keep = set(in_flight)
        self._started = {k: v for k, v in self._started.items() if k in keep}
        return self.running()

    def running(self) -> dict[str, tuple[float, int]]:
        """What `read` answers, forgetting nothing (a look from outside the build)."""
        now = time.monotonic()
        return {key: (now - at, pid) for key, (at, pid) in self._started.items()}


def start_clip_clock():
    """The build's clip clock: an actor of no CPU pinned (softly) to the driver's node, so it
    lives as long as the driver's own node does, named CLOCK_NAME in the job while the build
    runs (unnamed when another build of this job holds the name)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    options = {"num_cpus": 0, "max_restarts": -1, "scheduling_strategy": here}
    try:
        return ray.remote(_ClipClock).options(name=CLOCK_NAME, **options).remote()
    except ValueError:      # the name is taken
        return ray.remote(_ClipClock).options(**options).remote()


class _ClipTimes:
    """The driver's side of the clip clock: when (driver's monotonic clock) each clip in
    flight was started by its worker, refreshed by `refresh` once per poll."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.since: dict[str, float] = {}

    def refresh(self, in_flight: list[str]) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        asked = time.monotonic()
        try:
            ages = ray.get(self.clock.read.remote(in_flight), timeout=CLOCK_READ_TIMEOUT_S)
        except (RayError, GetTimeoutError):
            # Skipped: clips keep the starts already known, a restarted clock learns anew.
            return
        # The clock answered between `asked` and now; its ages are counted back from `asked`,
        # which errs towards a younger clip (never a clip cancelled early). A clip the clock
        # does not know (a restarted clock) keeps the start already known.
        flying = set(in_flight)
        known = {key: at for key, at in self.since.items() if key in flying}
        self.since = known | {key: asked - age for key, (age, _pid) in ages.items()}

    def done(self, key: str) -> None:
        self.since.pop(key, None)

    def overdue(self, limit_s: float, now: float | None = None) -> set[str]:
        now = time.monotonic() if now is None else now
        return {key for key, since in self.since.items() if now - since > limit_s}


class _QualityWatch:
    """Each identity's quality request, watched by the driver (no worker waits on an actor):
    from when the prepare task's crops are ready (`prepared`) to when the actor's scores are
    (`answered`). `overdue` names the requests past their limit."""

    def __init__(self, limit_s: float = QUALITY_REQUEST_TIMEOUT_S) -> None:
        self.limit_s = limit_s
        self.preparing: dict[Any, tuple[Any, Any]] = {}     # prepare's span ref -> (scores, key)
        self.asked: dict[Any, tuple[Any, float]] = {}       # scores ref -> (key, asked at)

    def watch(self, prepared_ref, scores_ref, key) -> None:
        self.preparing[prepared_ref] = (scores_ref, key)

    def refs(self) -> list:
        return [*self.preparing, *self.asked]

    def ready(self, ref, now: float | None = None) -> bool:
        """`ref` (one of `refs`) is ready: a request goes to its actor, or was answered.
        False when the ref is not watched here."""
        if ref in self.preparing:
            scores, key = self.preparing.pop(ref)
            self.asked[scores] = (key, time.monotonic() if now is None else now)
            return True
        return self.asked.pop(ref, None) is not None

    def forget(self, key) -> None:
        for ref in [r for r, (_, k) in self.preparing.items() if k == key]:
            del self.preparing[ref]
        for ref in [r for r, (k, _) in self.asked.items() if k == key]:
            del self.asked[ref]

    def overdue(self, now: float | None = None) -> list:
        """Keys of the requests unanswered for longer than the limit (forgotten here)."""
        now = time.monotonic() if now is None else now
        late = [(ref, key) for ref, (key, at) in self.asked.items() if now - at > self.limit_s]
        for ref, _ in late:
            del self.asked[ref]
        return [key for _, key in late]


@dataclass(eq=False)
class _IdentityState:
    spec: ShardSpec
    position: int                      # in the shard
    ident: Any
    remaining: int
    ordinal: int                       # in the run: picks its quality actor
    outcomes: dict[str, ClipOutcome] | None = field(default_factory=dict)  # None once handed on
    stage3: tuple | None = None        # the prepare task's refs: (span, prepared, crops)
    retried_locally: bool = False      # scored in its finish task after its actor failed


def _plan_order(specs: list[ShardSpec], ready) -> Iterator[tuple[_IdentityState, Any]]:
    """(identity state, clip) in plan order, made as they are reached (the driver never holds
    a state per identity of the plan); an identity without clips (all taken down) is handed to
    `ready` when it is reached."""
    ordinal = 0
    for spec in specs:
        for position, ident in enumerate(spec.identities):
            state = _IdentityState(spec, position, ident, len(ident.clips), ordinal)
            ordinal += 1
            if not ident.clips:
                ready(state)
            for clip in ident.clips:
                yield state, clip


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
    how many shards (`placement`, written to run.json) and every task's span (`spans`).
    Raises the OSError when the output refuses a clip's work file (`bf.is_output_full`)."""
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
    clock = start_clip_clock()
    times = _ClipTimes(clock)
    quality = _QualityWatch()
    asked_actor: dict[Any, Any] = {}     # finish report -> the actor its scores were asked of

    left = {spec.name: len(spec.identities) for spec in specs}
    results: dict[str, list] = {spec.name: [None] * len(spec.identities) for spec in specs}
    failed_shards: set[str] = set()
    clip_refs: dict[Any, tuple[_IdentityState, Any, str]] = {}     # -> (state, clip, key)
    ident_refs: dict[Any, tuple[_IdentityState, float]] = {}      # finish reports
    shard_refs: dict[Any, tuple[ShardSpec, float]] = {}
    placement: dict[str, collections.Counter] = {
        "analysis": collections.Counter(), "identity": collections.Counter(),
        "assembly": collections.Counter()}
    providers: collections.Counter = collections.Counter()   # warm-up: where models run
    clips_total = sum(len(ident.clips) for spec in specs for ident in spec.identities)
    progress = _Progress(config.progress, identities_done, identities_total, clips_total,
                         shards_total - len(specs), shards_total)

    def fail_shard(spec: ShardSpec, message: str) -> None:
        if spec.name not in failed_shards:
            failed_shards.add(spec.name)
            run.failures.append((spec.name, message[:2000]))
            progress.shard(len(spec.identities))

    def submit_identity(state: _IdentityState, local: bool = False) -> None:
        """Prepare -> the quality actor -> finish, all submitted at once (Ray runs each when
        its inputs are ready); `local`: the scores are computed in the finish task (after its
        actor failed or did not answer in time)."""
        if state.spec.name in failed_shards:
            return
        if state.stage3 is None:
            state.stage3 = prepare.remote(prepare_settings, config.verbose, folder,
                                          state.spec.name, state.ident, state.outcomes)
            state.outcomes = None      # in the prepare task's arguments now, not needed here
        span, prepared, crops = state.stage3
        # The identity's number picks its actor; which actor answers never changes a score.
        actor = None if local else pool.actor_for(state.ordinal)
        scores = actor.score_all.remote(crops) if actor is not None else None
        report, result = finish.remote(finish_settings, config.verbose, folder, span,
                                       prepared, crops, scores, config.quality)
        results[state.spec.name][state.position] = result
        ident_refs[report] = (state, time.monotonic())
        if scores is not None:
            quality.watch(span, scores, report)
            asked_actor[report] = actor

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
        state.stage3 = None
        spec = state.spec
        if spec.name in failed_shards:
            return
        left[spec.name] -= 1
        if left[spec.name] == 0:
            shard_refs[write.remote(folder, spec, *results.pop(spec.name))] = (
                spec, time.monotonic())

    def retry_locally(state: _IdentityState) -> None:
        """The identity's actor is gone or did not answer: its finish task scores the crops."""
        state.retried_locally = True
        submit_identity(state, local=True)

    upcoming = _plan_order(specs, submit_identity)
    for spec in specs:           # a shard without identities goes at once
        if not spec.identities:
            shard_refs[write.remote(folder, spec)] = (spec, time.monotonic())
    last_progress = time.monotonic()
    last_check, running = 0.0, False
    try:
        following = next(upcoming, None)
        while following is not None or clip_refs or ident_refs or shard_refs:
            max_inflight = analysis_inflight_limit(cpus)
            while following is not None and len(clip_refs) < max_inflight:
                state, clip = following
                following = next(upcoming, None)
                poisoned = state.spec.poisoned.get(clip_key(clip))
                if poisoned is not None:
                    clip_done(state, clip, ClipOutcome.failed(Reason.WORKER_CRASHED, poisoned))
                    continue
                ref = analysis.remote(config.analysis, config.identity, config.verbose, folder,
                                      state.spec.name, clip, clock)
                clip_refs[ref] = (state, clip, clip_key(clip))
            pool.poll()
            if pool.ready_s is not None and "quality_ready" not in timings:
                timings["quality_ready"] = pool.ready_s
            done, _ = ray.wait(list(clip_refs) + list(ident_refs) + list(shard_refs)
                               + quality.refs(), num_returns=1, timeout=POLL_S)
            for ref in done:
                if quality.ready(ref):
                    continue
                if ref in clip_refs:
                    state, clip, key = clip_refs.pop(ref)
                    times.done(key)
                    try:
                        outcome = ray.get(ref, timeout=60)
                    except TaskCancelledError:
                        outcome = ClipOutcome.failed(
                            Reason.VIDEO_TIMEOUT, f"analysis did not return within {limit_s:.0f} "
                            "s; its worker was stopped")
                    except (RayError, GetTimeoutError) as err:
                        if bf.is_output_full(err):
                            # The output's failure, not the clip's: the build stops (exit 3).
                            raise _output_error(err) from None
                        outcome = _crashed(err)
                    clip_done(state, clip, outcome)
                elif ref in ident_refs:
                    state, _ = ident_refs.pop(ref)
                    quality.forget(ref)
                    asked_actor.pop(ref, None)
                    try:
                        identity_done(state, ray.get(ref, timeout=60))
                    except (RayError, GetTimeoutError) as err:
                        if _actor_lost(err) and not state.retried_locally:
                            # Its quality actor is gone (node lost, never placed): the finish
                            # task scores the crops itself.
                            retry_locally(state)
                        else:
                            state.stage3 = None
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
            # Time limits and the cluster's CPUs: once per POLL_S, not after every finished task.
            if time.monotonic() - last_check >= POLL_S:
                times.refresh([key for _, _, key in clip_refs.values()])
                running = _enforce_limits(times, clip_refs, ident_refs, shard_refs, limit_s,
                                          fail_shard)
                for report in quality.overdue():
                    # An actor that left a request unanswered this long is stuck: it is
                    # stopped, so that no later identity waits the same limit on it (its other
                    # requests fail at once and are scored locally as for a lost actor).
                    pool.retire(asked_actor.pop(report, None), QUALITY_REQUEST_TIMEOUT_S)
                    if report in ident_refs:      # its finish waits on the scores: given up
                        state, _ = ident_refs.pop(report)
                        ray.cancel(report)
                        retry_locally(state)
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
        try:
            ray.kill(clock)
        except Exception:  # noqa: BLE001 - Ray already gone (interrupted): so is the clock
            pass
    run.notes = list(pool.notes)
    run.cpus = _mean_cpus(cpu_samples, time.time())
    run.placement = {stage: dict(counts) for stage, counts in placement.items()}
    # where SCRFD / ArcFace ran, per warmed-up worker: CUDA on GPU nodes, else the CPU
    run.placement["analysis_providers"] = dict(providers)
    run.placement["quality"] = [d.get("node") for d in pool.described]
    return run


def _output_error(err: BaseException) -> OSError:
    """The OSError of an output that refuses writes, out of a task's error (`err.cause`)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in bf.OUTPUT_FULL_ERRNOS:
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return OSError(errno.ENOSPC, str(err).splitlines()[-1] if str(err) else "output full")


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


def _enforce_limits(times: _ClipTimes, clip_refs: dict, ident_refs: dict, shard_refs: dict,
                    limit_s: float, fail_shard) -> bool:
    """Cancel clips past their time limit (counted from when a worker started them, as the
    clip clock says: `times`) and give up on shards whose identity or shard task runs past
    ASSEMBLY_TIMEOUT_S; True when some clip is running."""
    import ray

    late_clips = times.overdue(limit_s)
    for ref, (_state, _clip, key) in list(clip_refs.items()):
        if key in late_clips:
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
    return bool(times.since)
