"""Stage 2 of the build: face quality on a pool of actors (one per GPU, or N on CPUs).

    pool = QualityPool.launch(ray_cfg, quality, logs_dir)   (driver) actors placed, not awaited
    pool.poll()                                             (driver) placement limit, growth
    pool.actor_for(i).score_all.remote(crops_ref)           one identity's crops, fixed requests

Each actor holds one QualityScorer. Where the cluster has GPUs there is one actor per GPU
(`num_gpus=1`, or `--gpus-per-actor`); the actor uses CUDA when torch sees a GPU on its node
and falls back to the CPU otherwise (a node may declare a GPU its torch cannot use: it says so
in `describe()` rather than failing every identity). Without GPUs, `--quality-actors` CPU actors
(default: one per 8 CPUs of the cluster, at least one) serve the whole build; they reserve no
CPU: they take CPU only when they compute, beside the tasks that hold the CPUs (on a busy node
one process more than its CPUs for as long as a request takes, rather than a core reserved and
idle for the whole build). Every actor computes on one torch thread
(`curation.faces.quality.SCORER_THREADS`, set where its model loads): the one CPU it computes
with. torch's own default is a thread per core of the node, which on a node busy with analysis
tasks only contends with them (issue 22).

The build does not wait for the actors: `launch` returns at once, analysis starts while the
actors load their models, and an identity's first request waits (bounded) for its actor. The
driver's `poll` gives up on actors not placed within PLACEMENT_TIMEOUT_S (their callers then
score on their own CPU) and records when the rest were ready.

Crops travel as arrays (S x S x 3 uint8) through the object store: the driver chains an
identity's prepare task, its actor's `score_all` and its finish task, so no worker blocks on an
actor. An identity's crops are scored in fixed requests (`REQUEST_CROPS`) in an order that does
not depend on scheduling, and the actor scores a request in chunks of `--quality-batch-size`,
so every score (and so every byte of the output) is the same whatever the number of actors or
the order in which they answer. An identity whose actor is gone is finished again with its
crops scored in its own finish task (`LocalScorer`, same requests), so the loss of a GPU node
slows the build down and loses nothing. Each actor keeps the wall-clock spans of its requests
for the build's timeline.
"""

from __future__ import annotations

import collections
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.pipeline.scoring import LocalScorer, score_in_requests

if TYPE_CHECKING:
    from curation.faces.quality import QualityConfig
    from curation.pipeline.config import RayConfig

PLACEMENT_TIMEOUT_S = 60.0          # actors not placed by then: say so, score on the CPUs
CPUS_PER_CPU_ACTOR = 8
FOLLOW_S = 10.0                     # how often the pool looks for nodes that joined


class QualityActor:
    """Ray actor body: one LocalScorer serving requests; remembers when it computed."""

    def __init__(self, quality: QualityConfig, logs_dir: str | None, device: str):
        if logs_dir is not None:
            from mfhq_contract.terminal import send_process_output_to

            send_process_output_to(logs_dir)
        self.local = LocalScorer(quality, device)   # torch threads: SCORER_THREADS
        self.spans: list[tuple[float, float]] = []

    def describe(self) -> dict[str, Any]:
        import ray

        context = ray.get_runtime_context()
        return {"device": self.local.device, "note": self.local.note,
                "node": context.get_node_id(), "actor": context.get_actor_id(),
                "model": self.local.scorer.model_name}

    def score(self, crops: list[np.ndarray]) -> np.ndarray:
        started = time.time()
        try:
            return self.local.score(crops)
        finally:
            self.spans.append((started, time.time()))

    def score_all(self, crops: list[np.ndarray]) -> np.ndarray:
        """Every score of one identity's crops, in the fixed requests of `score_in_requests`
        (the same requests whoever answers)."""
        return score_in_requests(lambda request, _index: self.score(request), crops)

    def busy_spans(self) -> dict[str, Any]:
        return {"device": self.local.device, "spans": list(self.spans)}


class QualityPool:
    """The driver's side of the quality actors: launched without waiting, polled by the
    driver's loop (which also follows the cluster: actors are added as nodes join), closed at
    the end."""

    def __init__(self, quality: QualityConfig, ray_cfg: RayConfig | None = None,
                 logs_dir: str | None = None):
        from curation.pipeline.config import RayConfig

        self.quality = quality
        self.ray_cfg = ray_cfg or RayConfig()
        self.logs_dir = logs_dir
        self.actors: list = []                  # placed or still loading
        self.described: list[dict] = []         # of the ready actors
        self.notes: list[str] = []
        self.ready_s: float | None = None       # from launch until every placed actor was ready
        self._pending: dict[Any, tuple[Any, float]] = {}   # describe() ref -> (actor, launched)
        self._device: dict[Any, str] = {}       # actor id -> "cuda" | "cpu" (asked for)
        self._launched = time.monotonic()
        self._followed = 0.0
        self._unplaced = {"cuda": 0, "cpu": 0}

    @classmethod
    def launch(cls, ray_cfg: RayConfig, quality: QualityConfig, logs_dir: str | None
               ) -> QualityPool:
        """Create the actors (one per GPU, or CPU actors: `ray_cfg`), not waiting for them;
        `logs_dir` receives their library output (None: the terminal)."""
        pool = cls(quality, ray_cfg, logs_dir)
        pool.follow(force=True)
        return pool

    def wanted(self, resources: dict[str, float]) -> tuple[str, int]:
        """(device, number of actors) the pool should have on a cluster with `resources`:
        one per GPU (or per --gpus-per-actor share) where there are GPUs or a share was asked
        for, else one CPU actor per CPUS_PER_CPU_ACTOR CPUs; --quality-actors fixes the
        number."""
        gpus = float(resources.get("GPU", 0))
        cpus = float(resources.get("CPU", 1))
        share = self.ray_cfg.gpus_per_actor or (1.0 if gpus >= 1 else 0.0)
        if share > 0:
            return "cuda", self.ray_cfg.quality_actors or max(1, math.floor((gpus or share)
                                                                             / share))
        return "cpu", self.ray_cfg.quality_actors or max(1, int(cpus // CPUS_PER_CPU_ACTOR))

    def follow(self, force: bool = False) -> None:
        """Add actors when the cluster grew (a GPU node joined: GPU actors; more CPUs: CPU
        actors), at most once per FOLLOW_S. Never removes one: an actor whose node left is
        restarted by Ray elsewhere, or its callers score locally."""
        import ray

        if not force and time.monotonic() - self._followed < FOLLOW_S:
            return
        self._followed = time.monotonic()
        resources = ray.cluster_resources()
        device, count = self.wanted(resources)
        have = sum(1 for a in self.actors if self._device.get(a._actor_id) == device)
        have += self._unplaced[device]       # given up on: not asked for again
        if count <= have:
            return
        if device == "cuda":
            share = self.ray_cfg.gpus_per_actor or 1.0
            options = {"num_gpus": share, "num_cpus": 1}
        else:
            # No CPU of its own: a CPU actor computes a few seconds per identity, so reserving
            # a core would leave it idle most of the build, and on a 1-CPU machine leave none
            # for analysis.
            options = {"num_cpus": 0}
        actor_cls = ray.remote(QualityActor).options(max_restarts=2, max_task_retries=0,
                                                     **options)
        self._resources = (float(resources.get("GPU", 0)), float(resources.get("CPU", 0)))
        for _ in range(count - have):
            actor = actor_cls.remote(self.quality, self.logs_dir, device)
            self.actors.append(actor)
            self._device[actor._actor_id] = device
            self._pending[actor.describe.remote()] = (actor, time.monotonic())
        self.ready_s = None

    def poll(self, wait_s: float = 0.0) -> None:
        """Take in the actors that became ready; give up on those not placed within
        PLACEMENT_TIMEOUT_S of their launch (killed, with a note for the summary); follow the
        cluster (`follow`)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        self.follow()
        if not self._pending:
            return
        ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending),
                            timeout=wait_s)
        for ref in ready:
            actor, _ = self._pending.pop(ref)
            try:
                described = ray.get(ref, timeout=1.0)
                self.described.append(described)
                if described.get("note"):
                    self.notes.append(described["note"])
            except (RayError, GetTimeoutError) as err:
                self.notes.append(f"a quality actor failed to start: {str(err).splitlines()[0]}")
                self._drop(actor)
        late = [ref for ref, (_, launched) in self._pending.items()
                if time.monotonic() - launched > PLACEMENT_TIMEOUT_S]
        if late:
            asked = {"cuda": f"{self.ray_cfg.gpus_per_actor or 1.0:g} GPU and 1 CPU",
                     "cpu": "no CPU"}
            kinds = collections.Counter()
            for ref in late:
                actor, _ = self._pending.pop(ref)
                kinds[self._device.get(actor._actor_id, "cpu")] += 1
                self._drop(actor)
            gpus, cpus = self._resources
            for device, unplaced in kinds.items():
                self._unplaced[device] += unplaced
                self.notes.append(
                    f"{unplaced} quality actors ({asked[device]} each) could not be placed "
                    f"within {PLACEMENT_TIMEOUT_S:.0f} s (the cluster has {gpus:g} GPUs, "
                    f"{cpus:g} CPUs); identities score their faces on their own CPU instead. "
                    "Add GPU nodes, lower --gpus-per-actor, or set --quality-actors.")
        if not self._pending and self.ready_s is None:
            self.ready_s = time.monotonic() - self._launched

    def retire(self, actor, waited_s: float) -> None:
        """Stop an actor that left a request unanswered for `waited_s` (None or an actor
        already gone: nothing); later identities go to the others or score on their own CPU."""
        if actor is None or not any(a is actor for a in self.actors):
            return
        self._drop(actor)
        self.notes.append(
            f"a quality actor did not answer within {waited_s:.0f} s and was stopped; its "
            f"identities were scored on their own CPUs ({len(self.actors)} actors left)")

    def _drop(self, actor) -> None:
        import ray

        ray.kill(actor, no_restart=True)
        self.actors = [a for a in self.actors if a is not actor]

    def actor_for(self, index: int):
        """The actor that scores the identity numbered `index` (None: there is none, the
        identity scores on its own CPU): among the GPU actors once one is ready (so that every
        identity from then on is scored on the same kind of device), else among every actor
        placed or still loading (a call waits for its model)."""
        ready_gpu = {d.get("actor") for d in self.described if d.get("device") == "cuda"}
        actors = [a for a in self.actors if a._actor_id.hex() in ready_gpu] or self.actors
        return actors[index % len(actors)] if actors else None

    def busy_spans(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Every live actor's {'device', 'spans'} (bounded wait; an actor that does not answer
        is left out of the timeline)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        out = []
        refs = [actor.busy_spans.remote() for actor in self.actors]
        deadline = time.monotonic() + timeout_s
        for ref in refs:
            try:
                out.append(ray.get(ref, timeout=max(0.1, deadline - time.monotonic())))
            except (RayError, GetTimeoutError):
                continue
        return out

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
