"""Stage 2 of the build: face quality on a pool of actors (one per GPU, or N on CPUs).

    pool = QualityPool.start(config)          (driver)   actors placed, models loaded once
    scores = pool.score(crops_png)            (anywhere) large batches, any number of callers

Each actor holds one QualityScorer. Where the cluster has GPUs there is one actor per GPU
(`num_gpus=1`, or `--gpus-per-actor`); the actor uses CUDA when torch sees a GPU on its node
and falls back to the CPU otherwise (a node may declare a GPU its torch cannot use: it says so
in `describe()` rather than failing every shard). Without GPUs, `--quality-actors` CPU actors
(default: one per 8 CPUs of the cluster, at least one) serve the whole build; they reserve no
CPU (they compute while their callers, which hold one, wait).

Crops travel as PNG bytes. Callers split their work into fixed requests (`REQUEST_CROPS`) in
an order that does not depend on scheduling, and the actor scores a request in chunks of
`--quality-batch-size`, so every score (and so every byte of the output) is the same whatever
the number of actors or the order in which they answer. A caller whose actor is gone or does
not answer within the time limit scores the request itself on its own CPU (`LocalScorer`), so
the loss of a GPU node slows the build down and loses nothing.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.pipeline.scoring import REQUEST_CROPS, LocalScorer, score_in_requests

if TYPE_CHECKING:
    from curation.pipeline.config import BuildConfig

REQUEST_TIMEOUT_S = 600.0           # a request that takes longer is scored by the caller
PLACEMENT_TIMEOUT_S = 60.0          # actors not placed by then: say so, score on the CPUs
CPUS_PER_CPU_ACTOR = 8


class QualityActor:
    """Ray actor body: one LocalScorer serving requests."""

    def __init__(self, config: BuildConfig, logs_dir: str, device: str):
        if not config.verbose:
            from curation.quiet import send_process_output_to

            send_process_output_to(logs_dir)
        self.local = LocalScorer(config, device)

    def describe(self) -> dict[str, Any]:
        import ray

        return {"device": self.local.device, "note": self.local.note,
                "node": ray.get_runtime_context().get_node_id(),
                "model": self.local.scorer.model_name}

    def score(self, crops_png: list[bytes]) -> np.ndarray:
        return self.local.score(crops_png)


class QualityPool:
    """Handles to the quality actors (picklable: shard assembly tasks receive the pool)."""

    def __init__(self, actors: list, config: BuildConfig, described: list[dict]):
        self.actors = actors
        self.config = config
        self.described = described
        self._local: LocalScorer | None = None

    def __getstate__(self) -> dict:
        return {"actors": self.actors, "config": self.config, "described": self.described}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["actors"], state["config"], state["described"])

    @classmethod
    def start(cls, config: BuildConfig, logs_dir: str) -> tuple[QualityPool, list[str]]:
        """Place the actors and wait (bounded) until their models are loaded; returns the pool
        and notes for the summary (a GPU that cannot be used, actors that could not be placed)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        cpus = float(resources.get("CPU", 1))
        share = config.ray.gpus_per_actor or (1.0 if gpus >= 1 else 0.0)
        if share > 0:
            count = config.ray.quality_actors or max(1, math.floor((gpus or share) / share))
            options = {"num_gpus": share, "num_cpus": 1}
            device = "cuda"
        else:
            count = config.ray.quality_actors or max(1, int(cpus // CPUS_PER_CPU_ACTOR))
            # No CPU of its own: a CPU actor computes only while an assembly task (which holds
            # a CPU) waits on it, so reserving one would idle a core for the whole build, and on
            # a 1-CPU machine leave none for analysis. The cost is at most one extra busy
            # process per actor while Ray lends the waiting task's CPU to another task.
            options = {"num_cpus": 0}
            device = "cpu"
        actor_cls = ray.remote(QualityActor).options(max_restarts=2, max_task_retries=0,
                                                     **options)
        actors = [actor_cls.remote(config, logs_dir, device) for _ in range(count)]
        notes: list[str] = []
        described: list[dict] = []
        refs = [a.describe.remote() for a in actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PLACEMENT_TIMEOUT_S)
        placed = []
        for actor, ref in zip(actors, refs, strict=True):
            if ref not in ready:
                ray.kill(actor, no_restart=True)
                continue
            try:
                described.append(ray.get(ref, timeout=1.0))
                placed.append(actor)
            except (RayError, GetTimeoutError) as err:
                notes.append(f"a quality actor failed to start: {str(err).splitlines()[0]}")
                ray.kill(actor, no_restart=True)
        if len(placed) < count:
            asked = f"{options.get('num_gpus', 0)} GPU and 1 CPU" if share else "no CPU"
            notes.append(
                f"{count - len(placed)} of {count} quality actors ({asked} each) could not be "
                f"placed within {PLACEMENT_TIMEOUT_S:.0f} s (the cluster has {gpus:g} GPUs, "
                f"{cpus:g} CPUs); shards score their faces on their own CPU instead. Add GPU "
                "nodes, lower --gpus-per-actor, or set --quality-actors.")
        notes += [d["note"] for d in described if d.get("note")]
        return cls(placed, config, described), notes

    def score(self, crops_png: list[bytes], request_index: int = 0) -> np.ndarray:
        """Scores of one request on the actor chosen by `request_index` (deterministic), or
        locally when that actor is gone or does not answer in time."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        if self.actors:
            actor = self.actors[request_index % len(self.actors)]
            try:
                return ray.get(actor.score.remote(crops_png), timeout=REQUEST_TIMEOUT_S)
            except (RayError, GetTimeoutError):
                pass        # the actor's node is gone or stuck: the caller scores it
        if self._local is None:
            self._local = LocalScorer(self.config, "cpu")
        return self._local.score(crops_png)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def timed(fn, *args):
    started = time.monotonic()
    return fn(*args), time.monotonic() - started
