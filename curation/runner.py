"""The driver of an MFHQ build: plan, Ray actor pool over shards, resume, finalize, summary.

    plan (driver) -> pool of ShardBuilder actors (models loaded once each; GPU share when the
    cluster has GPUs) fed one ShardSpec at a time -> finalize (shards.parquet, run.json).

Resume: the output folder keeps `manifests/plan.json` with the config hash and the plan's
fingerprint. A shard counts as finished when its tar and its three manifest parts exist and
every part records the tar's sha256; finished shards are never rebuilt. A different config
into the same output folder is refused unless `overwrite` is set.
"""

from __future__ import annotations

import collections
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curation import manifests, takedown
from curation.config import BuildConfig
from curation.planning import (
    Plan,
    ShardSpec,
    build_plan,
    plan_json_bytes,
    read_takedown,
    takedown_match,
)
from curation.records import Reason
from curation.shard_build import (
    INFLIGHT_DIR,
    BuilderSettings,
    ShardBuilder,
    ShardResult,
    enumeration_rows,
    read_inflight,
)
from curation.shard_writer import file_sha256, remove_stale_temporaries

PLAN_FILE = "plan.json"
RUN_FILE = "run.json"
SHARDS_TABLE = "shards.parquet"
ACTOR_MAX_RESTARTS = 2
ACTOR_MAX_TASK_RETRIES = 2
MAX_POISONED_CLIPS_PER_SHARD = 3
VERSIONED_PACKAGES = ("ray", "torch", "torchvision", "pyiqa", "mediapipe", "insightface",
                      "onnxruntime", "decord", "av", "numpy", "scikit-learn", "pyarrow",
                      "pillow", "webdataset", "opencv-python-headless")


class BuildRefused(RuntimeError):
    """The output folder holds a different build; the message says what to do."""


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

    @property
    def ok(self) -> bool:
        return not self.shards_failed and not self.interrupted


# --- output folder: plan file, overwrite, resume ----------------------------------------------

def prepare_output(config: BuildConfig, plan: Plan) -> None:
    """Check the output folder against this config and plan, then record the plan there."""
    mdir, sdir = config.manifests_dir, config.shards_dir
    plan_path = mdir / PLAN_FILE
    config_hash = config.config_hash()
    if plan_path.exists():
        try:
            previous = json.loads(plan_path.read_text())
        except (OSError, ValueError):
            previous = {}
        same_config = previous.get("config_hash") == config_hash
        same_plan = previous.get("plan", {}).get("fingerprint") == plan.fingerprint()
        if not (same_config and same_plan) and not config.overwrite:
            what = ("was built with different settings" if not same_config else
                    "was planned from different source contents (clips added or removed)")
            raise BuildRefused(
                f"the output folder ({sdir}, {mdir}) {what} (config hash "
                f"{previous.get('config_hash')} vs {config_hash}). Rerun with the original "
                "arguments to resume it, choose another --output, or pass --overwrite to delete "
                "it and build anew.")
        if not (same_config and same_plan):
            clear_outputs(config)
    elif _has_build_outputs(config) and not config.overwrite:
        raise BuildRefused(
            f"the output folder ({sdir}, {mdir}) holds shards or manifests but no {PLAN_FILE}; "
            "choose another --output or pass --overwrite to delete them.")
    elif config.overwrite:
        clear_outputs(config)
    for split in ("train", "test"):
        remove_stale_temporaries(sdir / split)
    for table in manifests.TABLES:
        remove_stale_temporaries(mdir / table)
    remove_stale_temporaries(mdir)
    shutil.rmtree(mdir / INFLIGHT_DIR, ignore_errors=True)
    _write_atomic(plan_path, plan_json_bytes(plan, config_hash, config.to_json()))


def _has_build_outputs(config: BuildConfig) -> bool:
    sdir, mdir = config.shards_dir, config.manifests_dir
    return (any(sdir.glob("*/mfhq-*.tar")) or any(mdir.glob("*/part-*.parquet"))
            or (mdir / SHARDS_TABLE).exists())


def clear_outputs(config: BuildConfig) -> None:
    """Delete what a build writes (shards, parts, tables, run files); nothing else."""
    for split in ("train", "test"):
        for path in (config.shards_dir / split).glob("*mfhq-*.tar*"):
            path.unlink()
    for table in manifests.TABLES:
        folder = config.manifests_dir / table
        if folder.is_dir():
            shutil.rmtree(folder)
    for name in (SHARDS_TABLE, RUN_FILE, PLAN_FILE):
        (config.manifests_dir / name).unlink(missing_ok=True)


def shard_is_finished(config: BuildConfig, spec: ShardSpec) -> bool:
    """Tar present, all parts present, every part records the tar's sha256 and the same ids."""
    tar = config.shards_dir / spec.name
    parts = manifests.part_paths(config.manifests_dir, spec.name)
    if not tar.exists() or not all(p.exists() for p in parts.values()):
        return False
    recorded = {manifests.part_shard_sha256(p) for p in parts.values()}
    if len(recorded) != 1 or None in recorded:
        return False
    try:
        import pyarrow.parquet as pq
        ids = pq.read_table(parts["identities"], columns=["identity_id"]).column(0).to_pylist()
    except Exception:  # noqa: BLE001 - an unreadable part means: not finished
        return False
    if ids != [i.identity_id for i in spec.identities]:
        return False
    return recorded == {file_sha256(tar)}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- models checked on the driver ------------------------------------------------------------

def check_models(config: BuildConfig) -> dict[str, Any]:
    """Load the quality model once on the driver (a missing weights file fails here, before any
    Ray work, with quality.MissingWeightsError) and describe the model files for run.json."""
    from curation.quality import QualityScorer

    scorer = QualityScorer(model=config.quality_model, weights=config.quality_weights,
                           device="cpu", batch_size=1)
    models = {"quality": {"model": scorer.model_name, "weights": _opt_str(scorer.weights_path),
                          "sha256": scorer.weights_sha256}}
    models["face_detector"] = describe_face_detector(config)
    return models


def describe_face_detector(config: BuildConfig) -> dict[str, Any]:
    """The detector's model file and sha256; raises FileNotFoundError with the fix if missing."""
    if config.face_detector == "mediapipe":
        return {"detector": "mediapipe", "weights": "bundled with mediapipe",
                "version": _version("mediapipe")}
    from curation.detection import scrfd_model_path

    model = scrfd_model_path(insightface_root(config))   # FileNotFoundError names the fix
    return {"detector": "insightface", "weights": str(model), "sha256": file_sha256(model)}


def insightface_root(config: BuildConfig) -> str:
    return str(Path(config.insightface_root or Path.home() / ".insightface").expanduser())


def _opt_str(value) -> str | None:
    return None if value is None else str(value)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    versions = {name: _version(name) for name in VERSIONED_PACKAGES}
    versions["python"] = platform.python_version()
    return versions


# --- Ray -------------------------------------------------------------------------------------

def init_ray(config: BuildConfig) -> bool:
    """Start or join Ray; returns True when this call started it (so it should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if config.ray_address:
        # On a cluster the code comes from the job's working_dir (`ray job submit`) or from the
        # install in cluster.yaml's setup commands (`ray submit`).
        ray.init(address=config.ray_address)
    else:
        # address="local": always a fresh embedded Ray, never a stale cluster found by accident.
        # Workers get the repo root on their path, so a plain checkout works uninstalled.
        ray.init(address="local", num_cpus=config.num_cpus, num_gpus=config.num_gpus,
                 include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}})
    return True


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{existing}" if existing else root


class _ShardActor:
    """Ray actor body: one ShardBuilder (models loaded once) serving shard specs."""

    def __init__(self, settings: BuilderSettings):
        self.builder = ShardBuilder(settings)

    def build(self, spec: ShardSpec) -> ShardResult:
        return self.builder.build(spec)

    def ready(self) -> bool:
        """Loads the face analyzer too, so that start-up is over once this returns (a failure
        here is left for `build` to meet and record)."""
        try:
            if self.builder._analyzer is None:
                self.builder._fresh_analyzer()
        except Exception:  # noqa: BLE001 - see the docstring
            pass
        return True


def builder_settings(config: BuildConfig, device: str) -> BuilderSettings:
    return BuilderSettings(
        shards_dir=str(config.shards_dir.resolve()),
        manifests_dir=str(config.manifests_dir.resolve()),
        images_per_identity=config.images_per_identity, pose_clusters=config.pose_clusters,
        scored_per_cluster=config.scored_per_cluster, seed=config.seed, crop_size=config.crop_size,
        clip_time_limit_s=config.clip_time_limit_s, quality_model=config.quality_model,
        quality_weights=config.quality_weights, quality_batch_size=config.quality_batch_size,
        device=device,
        analysis={
            "sample_fps": config.sample_fps, "max_frames_per_clip": config.max_frames_per_clip,
            "detect_max_side": config.detect_max_side, "min_face_size": config.min_face_size,
            "crop_size": config.crop_size, "face_detector": config.face_detector,
            "insightface_root": (insightface_root(config)
                                 if config.face_detector == "insightface" else None),
            "clip_time_limit_s": config.clip_time_limit_s,
        })


def _pool_shape(config: BuildConfig, n_work: int) -> tuple[int, float]:
    import ray

    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    n_actors = max(1, min(config.actors or max(1, cpus), n_work))
    # An explicit share is used as given (an autoscaling cluster may have no GPU node yet).
    gpu_share = config.gpus_per_actor or 0.0
    if not gpu_share and gpus > 0:
        gpu_share = min(1.0, gpus / n_actors)
    return n_actors, gpu_share


def run_shards(config: BuildConfig, specs: list[ShardSpec], identities_done: int,
               identities_total: int, shards_total: int, timings: dict[str, float] | None = None
               ) -> tuple[list[ShardResult], list[tuple[str, str]]]:
    """Build the given shards on a pool of Ray actors; returns (results, failures).

    `timings["actors_ready"]` gets the seconds until every actor had its models loaded."""
    import ray
    from ray.exceptions import RayActorError, RayError
    from tqdm import tqdm

    if not specs:
        return [], []
    n_actors, gpu_share = _pool_shape(config, len(specs))
    settings = builder_settings(config, "cuda" if gpu_share > 0 else "cpu")
    actor_cls = ray.remote(_ShardActor).options(
        num_cpus=1, num_gpus=gpu_share, max_restarts=ACTOR_MAX_RESTARTS,
        max_task_retries=ACTOR_MAX_TASK_RETRIES)
    started = time.monotonic()
    idle = [actor_cls.remote(settings) for _ in range(n_actors)]
    pending = collections.deque(specs)
    inflight: dict[Any, tuple[Any, ShardSpec]] = {}
    results: list[ShardResult] = []
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=identities_total, initial=identities_done, unit="id", file=sys.stderr,
               disable=not config.progress, desc="identities", dynamic_ncols=True)
    shards_done = shards_total - len(specs)
    bar.set_postfix_str(f"shards {shards_done}/{shards_total}")
    try:
        # ray.wait, not ray.get: an actor that fails to start is met (and recorded) by its builds.
        ray.wait([actor.ready.remote() for actor in idle], num_returns=len(idle))
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
                    idle.append(actor_cls.remote(settings))
                    retry = _without_poisoned_clip(config, spec)
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


def _without_poisoned_clip(config: BuildConfig, spec: ShardSpec) -> ShardSpec | None:
    """The spec again with the clip its worker died on marked poisoned, or None when that clip
    is unknown or already marked (then the shard itself fails)."""
    import dataclasses

    clip = read_inflight(config.manifests_dir, spec.name)
    if clip is None or clip in spec.poisoned or \
            len(spec.poisoned) >= MAX_POISONED_CLIPS_PER_SHARD:
        return None
    why = (f"the worker process died {ACTOR_MAX_TASK_RETRIES + 1} times while analysing this "
           "clip (crash or out of memory in the decoder or a model); the clip was left out")
    return dataclasses.replace(spec, poisoned={**spec.poisoned, clip: why})


# --- finalize ---------------------------------------------------------------------------------

def write_shards_table(config: BuildConfig, plan: Plan) -> list[dict]:
    """shards.parquet from the finished shards on disk (the source of truth after resumes)."""
    import pyarrow.parquet as pq

    rows = []
    for spec in plan.shards:
        tar = config.shards_dir / spec.name
        parts = manifests.part_paths(config.manifests_dir, spec.name)
        if not tar.exists() or not parts["identities"].exists():
            continue
        statuses = pq.read_table(parts["identities"], columns=["status"]).column(0).to_pylist()
        rows.append({"path": spec.name, "split": spec.split,
                     "samples": sum(s == "kept" for s in statuses), "bytes": tar.stat().st_size,
                     "sha256": manifests.part_shard_sha256(parts["identities"])})
    table = manifests.to_table("shards", rows)
    manifests.write_table_atomic(table, config.manifests_dir / SHARDS_TABLE)
    return rows


def count_outcomes(manifests_dir: Path) -> dict[str, Any]:
    """Counts for the summary and run.json, from the manifests on disk."""
    clips = manifests.read_frame(manifests_dir, "clips")
    idents = manifests.read_frame(manifests_dir, "identities")
    faces = manifests.read_table(manifests_dir, "faces").select(["selected"]).to_pandas()
    bad_clips = clips[clips["status"] != "ok"]
    dropped = idents[idents["status"] != "kept"]
    kept = idents[idents["status"] == "kept"]
    return {
        "clips_read": int(len(clips)),
        "clips_ok": int((clips["status"] == "ok").sum()),
        "clips_not_ok_by_reason": {str(k): int(v) for k, v in
                                   bad_clips["reason"].fillna("unknown").value_counts()
                                   .sort_index().items()},
        "identities_planned": int(len(idents)),
        "identities_kept": int(len(kept)),
        "identities_kept_by_split": {str(k): int(v) for k, v in
                                     kept["split"].value_counts().sort_index().items()},
        "identities_dropped_by_reason": {str(k): int(v) for k, v in
                                         dropped["reason"].fillna("unknown").value_counts()
                                         .sort_index().items()},
        "faces_considered": int(len(faces)),
        "faces_selected": int(faces["selected"].sum()) if len(faces) else 0,
    }


def write_run_record(config: BuildConfig, plan: Plan, models: dict, summary: BuildSummary,
                     shard_rows: list[dict]) -> None:
    record = {
        "config_hash": summary.config_hash,
        "plan_fingerprint": plan.fingerprint(),
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
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_atomic(config.manifests_dir / RUN_FILE,
                  json.dumps(record, sort_keys=True, indent=1, default=str).encode())


# --- the whole build ----------------------------------------------------------------------------

def run_build(config: BuildConfig) -> BuildSummary:
    """Plan, build every unfinished shard, finalize. Raises BuildRefused, SourceError,
    MissingWeightsError or FileNotFoundError (missing detector weights) before any Ray work."""
    import ray

    config.validate()
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    models = check_models(config)
    timings["check_models"] = time.monotonic() - t0

    t = time.monotonic()
    plan = build_plan(config.resolved_sources(), takedown_file=config.takedown,
                      test_fraction=config.test_fraction,
                      identities_per_shard=config.identities_per_shard, limit=config.limit)
    timings["enumerate_and_plan"] = time.monotonic() - t
    # Identities removed from this folder by `python -m curation.takedown` never come back.
    plan = takedown.without_recorded(plan, config.manifests_dir)
    prepare_output(config, plan)
    enumeration_part = config.manifests_dir / "clips" / manifests.ENUMERATION_PART
    if not enumeration_part.exists():
        # Clips on the takedown list leave no row with their ids, only a salted hash.
        listed = read_takedown(config.takedown)
        taken = [c for c in plan.rejected_clips
                 if c.reason == Reason.TAKEDOWN or takedown_match(c, listed)]
        takedown.append_record(config.manifests_dir, takedown.clip_removals(taken, listed),
                               takedown.DEFAULT_REASON, "build")
        rows = enumeration_rows([c for c in plan.rejected_clips if c not in taken])
        manifests.write_table_atomic(manifests.to_table("clips", rows), enumeration_part)

    t = time.monotonic()
    todo = [s for s in plan.shards if not shard_is_finished(config, s)]
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
            results, failures = run_shards(config, todo, ids_done, ids_total, len(plan.shards),
                                            timings)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if started_ray:
            ray.shutdown()
    timings["build"] = time.monotonic() - t

    t = time.monotonic()
    shard_rows = write_shards_table(config, plan)
    counts = count_outcomes(config.manifests_dir)
    timings["finalize"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t0
    summary = BuildSummary(
        shards_dir=str(config.shards_dir), manifests_dir=str(config.manifests_dir),
        config_hash=config.config_hash(), shards_total=len(plan.shards),
        shards_built=len(results), shards_skipped=skipped, shards_failed=failures,
        counts=counts, timings={k: round(v, 3) for k, v in timings.items()},
        interrupted=interrupted)
    write_run_record(config, plan, models, summary, shard_rows)
    return summary


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
