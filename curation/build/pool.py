"""The Ray side of a build: start or join Ray, and a pool of shard-building actors.

    init_ray(config)        an embedded local Ray, or the cluster at --ray-address
    run_shards(...)         ShardBuilder actors (models loaded once each; a GPU share when the
                            cluster has GPUs) fed one ShardSpec at a time

A worker that dies is replaced; when it died on the same clip every time, the shard is built
again with that clip recorded as `worker_crashed`. Every actor sends its third-party output
(decoders, TF Lite, onnxruntime) to OUTPUT/logs/ (`curation.quiet`), not to the driver.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from curation import build_folder as bf
from curation.build.config import BuildConfig
from curation.build.plan import ShardSpec
from curation.build.shard import ShardBuilder, ShardResult, read_inflight

ACTOR_MAX_RESTARTS = 2
ACTOR_MAX_TASK_RETRIES = 2
MAX_POISONED_CLIPS_PER_SHARD = 3
# Actors that are not ready by then are met (and recorded) by their first build instead.
ACTORS_READY_TIMEOUT_S = 600.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def init_ray(config: BuildConfig, log_dir: Path | None = None) -> bool:
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


class _ShardActor:
    """Ray actor body: one ShardBuilder (models loaded once) serving shard specs."""

    def __init__(self, config: BuildConfig, folder: bf.BuildFolder, device: str):
        if not config.verbose:
            from curation.quiet import send_process_output_to

            send_process_output_to(folder.logs_dir)
        self.builder = ShardBuilder(config, folder, device)

    def build(self, spec: ShardSpec) -> ShardResult:
        return self.builder.build(spec)

    def ready(self) -> bool:
        """Loads the face analyzer too, so that start-up is over once this returns (a failure
        here is left for `build` to meet and record)."""
        try:
            self.builder.load_models()
        except Exception:  # noqa: BLE001 - see the docstring
            pass
        return True


def _pool_shape(config: BuildConfig, n_work: int) -> tuple[int, float]:
    import ray

    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    n_actors = max(1, min(config.ray.actors or max(1, cpus), n_work))
    # An explicit share is used as given (an autoscaling cluster may have no GPU node yet).
    gpu_share = config.ray.gpus_per_actor or 0.0
    if not gpu_share and gpus > 0:
        gpu_share = min(1.0, gpus / n_actors)
    return n_actors, gpu_share


def run_shards(config: BuildConfig, folder: bf.BuildFolder, specs: list[ShardSpec],
               identities_done: int, identities_total: int, shards_total: int,
               timings: dict[str, float] | None = None
               ) -> tuple[list[ShardResult], list[tuple[str, str]]]:
    """Build the given shards on a pool of Ray actors; returns (results, failures).

    `timings["actors_ready"]` gets the seconds until every actor had its models loaded."""
    import ray
    from ray.exceptions import RayActorError, RayError
    from tqdm import tqdm

    from curation.quiet import terminal

    if not specs:
        return [], []
    n_actors, gpu_share = _pool_shape(config, len(specs))
    device = "cuda" if gpu_share > 0 else "cpu"
    actor_cls = ray.remote(_ShardActor).options(
        num_cpus=1, num_gpus=gpu_share, max_restarts=ACTOR_MAX_RESTARTS,
        max_task_retries=ACTOR_MAX_TASK_RETRIES)
    started = time.monotonic()
    idle = [actor_cls.remote(config, folder, device) for _ in range(n_actors)]
    pending = collections.deque(specs)
    inflight: dict[Any, tuple[Any, ShardSpec]] = {}
    results: list[ShardResult] = []
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=identities_total, initial=identities_done, unit="id", file=terminal(),
               disable=not config.progress, desc="identities", dynamic_ncols=True)
    shards_done = shards_total - len(specs)
    bar.set_postfix_str(f"shards {shards_done}/{shards_total}")
    try:
        # ray.wait, not ray.get: an actor that fails to start is met (and recorded) by its builds.
        ray.wait([actor.ready.remote() for actor in idle], num_returns=len(idle),
                 timeout=ACTORS_READY_TIMEOUT_S)
        if timings is not None:
            timings["actors_ready"] = time.monotonic() - started
        while pending or inflight:
            while idle and pending:
                actor, spec = idle.pop(), pending.popleft()
                inflight[actor.build.remote(spec)] = (actor, spec)
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                actor, spec = inflight.pop(ref)
                try:
                    results.append(ray.get(ref))
                    idle.append(actor)
                except RayActorError as err:
                    # Ray already restarted it and retried the shard; replace the actor so the
                    # rest of the build goes on.
                    ray.kill(actor, no_restart=True)
                    idle.append(actor_cls.remote(config, folder, device))
                    retry = _without_poisoned_clip(folder, spec)
                    if retry is not None:
                        pending.appendleft(retry)   # the shard again, that clip recorded failed
                        continue
                    failures.append((spec.name, f"worker died: {err}"[:1000]))
                except RayError as err:
                    failures.append((spec.name, str(err)[:2000]))
                    idle.append(actor)
                shards_done += 1
                bar.update(len(spec.identities))
                bar.set_postfix_str(f"shards {shards_done}/{shards_total}")
    finally:
        bar.close()
        for actor in idle + [a for a, _ in inflight.values()]:
            ray.kill(actor, no_restart=True)
    return results, failures


def _without_poisoned_clip(folder: bf.BuildFolder, spec: ShardSpec) -> ShardSpec | None:
    """The spec again with the clip its worker died on marked poisoned, or None when that clip
    is unknown or already marked (then the shard itself fails)."""
    clip = read_inflight(folder, spec.name)
    if clip is None or clip in spec.poisoned or \
            len(spec.poisoned) >= MAX_POISONED_CLIPS_PER_SHARD:
        return None
    why = (f"the worker process died {ACTOR_MAX_TASK_RETRIES + 1} times while analysing this "
           "clip (crash or out of memory in the decoder or a model); the clip was left out")
    return dataclasses.replace(spec, poisoned={**spec.poisoned, clip: why})
