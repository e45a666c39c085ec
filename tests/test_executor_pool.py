"""The executor's own machinery on a real local Ray (the session's `ray_local`), no whole build:
the clip clock and the per-clip time limit, the quality request's time limit with an actor that
hangs, the spans' compact log, the job's runtime_env (storage options reach a cluster's worker
node: a real two-node `ray.cluster_utils.Cluster`), and a full output during analysis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.build_folder import BuildFolder
from curation.records import ClipRecord

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _by_value():
    """Ray's workers do not have tests/ on their path: this module's functions and classes
    travel by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _clip(name: str = "c") -> ClipRecord:
    return ClipRecord(source="folder", clip_id=name, original_clip_id=name,
                      identity_id="folder:x", source_video_id="x",
                      video_path="/nonexistent.mp4")


def _hang(clock, key: str, seconds: float) -> str:
    """A task that tells `clock` it started `key` (when `clock` is given), then hangs."""
    import os
    import time

    if clock is not None:
        clock.started.remote(key, os.getpid())
    time.sleep(seconds)
    return "finished"


def _wait_until(condition, timeout_s: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:.0f} s"
        time.sleep(0.05)


def test_a_clip_is_cancelled_only_past_its_limit_counted_from_when_its_worker_started_it(
        ray_local):
    import ray
    from ray.exceptions import TaskCancelledError

    from curation.executor import pool

    clock = pool.start_clip_clock()
    try:
        times = pool._ClipTimes(clock)
        hang = ray.remote(_hang).options(max_retries=0)
        silent = hang.remote(None, "folder:silent", 120)    # never tells the clock: not started
        started = hang.remote(clock, "folder:started", 120)
        refs = {silent: (None, _clip("silent"), "folder:silent"),
                started: (None, _clip("started"), "folder:started")}
        keys = [key for _, _, key in refs.values()]

        def clock_knows_it() -> bool:
            times.refresh(keys)
            return "folder:started" in times.since

        _wait_until(clock_knows_it, what="the worker's start reaching the clock")
        assert "folder:silent" not in times.since
        # Within a generous limit nothing is cancelled; the worker started it less than 1 h ago.
        assert pool._enforce_limits(times, refs, {}, {}, 3600.0, lambda *failure: None)
        assert ray.wait([silent, started], timeout=0.5)[0] == []
        # Past a limit of 0 s since its start: cancelled, its worker stopped; the silent one not.
        pool._enforce_limits(times, refs, {}, {}, 0.0, lambda *failure: None)
        with pytest.raises(TaskCancelledError):
            ray.get(started, timeout=60)
        assert ray.wait([silent], timeout=0.5)[0] == []
        ray.cancel(silent, force=True)
        # The clock forgets every clip the driver no longer has in flight.
        times.refresh([])
        assert ray.get(clock.running.remote(), timeout=30) == {}
    finally:
        ray.kill(clock)


def test_the_clip_clock_is_found_by_name_while_a_build_holds_it_and_reports_the_worker(
        ray_local):
    import ray

    from curation.executor import pool

    clock = pool.start_clip_clock()
    try:
        found = ray.get_actor(pool.CLOCK_NAME)
        ref = ray.remote(_hang).options(max_retries=0).remote(found, "folder:k", 120)
        _wait_until(lambda: "folder:k" in ray.get(clock.running.remote(), timeout=30),
                    what="the start reaching the clock")
        age, pid = ray.get(clock.running.remote(), timeout=30)["folder:k"]
        assert age >= 0 and pid != os.getpid()
        ray.cancel(ref, force=True)
    finally:
        ray.kill(clock)
    # The name is free again at once: the next build's clock takes it.
    again = pool.start_clip_clock()
    try:
        assert ray.get_actor(pool.CLOCK_NAME)._actor_id == again._actor_id
    finally:
        ray.kill(again)


class _Stuck:
    """A quality actor that never answers one request (a hung GPU call), or answers at once."""

    def score_all(self, crops, hang: bool):
        import time

        if hang:
            time.sleep(3600)
        return [0.5 for _ in crops]


def test_a_quality_request_unanswered_past_its_limit_is_given_up_and_an_answered_one_is_not(
        ray_local):
    import ray

    from curation.executor import pool

    stuck = ray.remote(_Stuck).options(num_cpus=0, max_concurrency=2).remote()
    try:
        watch = pool._QualityWatch(limit_s=60.0)
        crops = ray.put([1, 2, 3])         # the prepare task's crops: ready
        for key, hang in (("hung", True), ("answered", False)):
            watch.watch(crops if key == "hung" else ray.put([4]),
                        stuck.score_all.remote(crops, hang), key)
        asked_at = time.monotonic()
        # The driver's loop: every ready ref goes to the watch, the crops first.
        while watch.preparing or len(watch.asked) > 1:
            ready, _ = ray.wait(watch.refs(), num_returns=1, timeout=60)
            assert ready, "a prepared ref or the quick answer never came"
            for ref in ready:
                assert watch.ready(ref, now=asked_at)
        assert watch.overdue(now=asked_at + 59.0) == []          # within its limit
        assert watch.overdue(now=asked_at + 61.0) == ["hung"]   # past it: given up once
        assert watch.overdue(now=asked_at + 3600.0) == [] and watch.refs() == []
    finally:
        ray.kill(stuck)


def test_spans_are_kept_compact_and_read_back_as_the_timeline_takes_them():
    from curation.executor.pool import SpanLog
    from curation.pipeline.finalize import build_timeline

    spans = [("analysis", 10.0, 12.5, True), ("quality", 11.0, 11.25, False),
             ("identity", 12.5, 13.0, True), ("analysis", 10.5, 10.0, True)]
    log = SpanLog()
    log.append(spans[0])
    log += spans[1:3]
    log.extend(spans[3:])
    assert list(log) == spans and len(log) == 4 and log[1] == spans[1]
    assert sorted(log, key=lambda s: s[1]) == sorted(spans, key=lambda s: s[1])
    assert build_timeline(log, 2.0, 9.0) == build_timeline(spans, 2.0, 9.0)
    assert not SpanLog()


def test_the_storage_options_go_into_the_jobs_runtime_env_unless_the_job_sets_them(
        monkeypatch):
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    from curation.executor.pool import job_runtime_env
    from mfhq_contract.storage import OPTIONS_ENV

    monkeypatch.delenv(OPTIONS_ENV, raising=False)
    monkeypatch.delenv(RAY_JOB_CONFIG_JSON_ENV_VAR, raising=False)
    assert job_runtime_env() is None
    assert job_runtime_env({"PYTHONPATH": "/repo"}) == {"env_vars": {"PYTHONPATH": "/repo"}}
    options = json.dumps({"endpoint_url": "http://127.0.0.1:9000"})
    monkeypatch.setenv(OPTIONS_ENV, options)
    assert job_runtime_env() == {"env_vars": {OPTIONS_ENV: options}}
    # `ray job submit --runtime-env-json` set it already: Ray would refuse a second value.
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps(
        {"runtime_env": {"working_dir": "x", "env_vars": {OPTIONS_ENV: "{}"}}}))
    assert job_runtime_env({"PYTHONPATH": "/repo"}) == {"env_vars": {"PYTHONPATH": "/repo"}}


_DRIVER = """
import json, os, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from curation.executor.pool import init_ray
from curation.pipeline.config import BuildConfig
from mfhq_contract.storage import set_options

set_options(sys.argv[2])                 # what --storage-options does in the driver
config = BuildConfig()
config.ray.address = sys.argv[1]
assert init_ray(config)
here = ray.get_runtime_context().get_node_id()
others = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]

def options():
    import os
    return os.environ.get("MFHQ_STORAGE_OPTIONS")

remote = ray.remote(options).options(num_cpus=1, scheduling_strategy=(
    NodeAffinitySchedulingStrategy(others[0], soft=False)))
print("SEEN " + json.dumps(ray.get(remote.remote(), timeout=120)))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_storage_options_reach_the_workers_of_another_node_of_a_cluster(tmp_path):
    from ray.cluster_utils import Cluster

    from mfhq_contract.storage import OPTIONS_ENV

    # The nodes are started from this process, whose environment has no storage options: a
    # worker can only have them from the job's runtime_env.
    env = {k: v for k, v in os.environ.items() if k != OPTIONS_ENV}
    options = json.dumps({"endpoint_url": "http://127.0.0.1:9", "anon": True})
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes(timeout=120)
        result = subprocess.run([sys.executable, "-c", _DRIVER, c.address, options], cwd=REPO,
                                env=dict(env, PYTHONPATH=str(REPO)), capture_output=True,
                                text=True, timeout=300)
    finally:
        c.shutdown()
    seen = [line for line in result.stdout.splitlines() if line.startswith("SEEN ")]
    assert seen, result.stdout[-2000:] + result.stderr[-3000:]
    assert json.loads(seen[-1][len("SEEN "):]) == options


@pytest.fixture
def full_disk(tmp_path):
    """A 64 kB tmpfs at tmp_path/disk, filled up; unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True, text=True, timeout=60)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{mounted.stderr.strip()}")
    try:
        with open(disk / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
    except OSError:
        pass
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=60)


def test_a_full_output_while_a_clip_is_analysed_is_raised_not_recorded_as_the_clips(
        tmp_path, full_disk):
    from curation import build_folder as bf
    from curation.pipeline import analyze
    from curation.pipeline.config import parse_args

    config = parse_args(["--source", f"folder={tmp_path}", "--quality-model", "piqe",
                         "--face-detector", "mediapipe", "--min-face-size", "64",
                         "--crop-size", "64", "--identity-model", "none"])
    folder = BuildFolder(str(full_disk / "build"))
    with pytest.raises(OSError) as raised:
        analyze.analyze_clip(config.analysis, config.identity, folder,
                             "train/mfhq-train-000000.tar", _clip())
    assert bf.is_output_full(raised.value)
    # With room, the same clip's own failure (no such file) is its outcome, as before.
    roomy = BuildFolder(str(tmp_path / "roomy"))
    outcome = analyze.analyze_clip(config.analysis, config.identity, roomy,
                                   "train/mfhq-train-000000.tar", _clip())
    assert outcome.status == "failed" and not bf.is_output_full(outcome.message)
    assert outcome.work is not None


def test_a_task_error_caused_by_a_full_output_gives_back_the_outputs_oserror(ray_local):
    import errno

    import ray
    from ray.exceptions import RayError

    from curation.build_folder import is_output_full
    from curation.executor.pool import _output_error

    def refused(path: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", path)

    with pytest.raises(RayError) as raised:
        ray.get(ray.remote(refused).options(max_retries=0).remote("/out/work/x.tar"),
                timeout=60)
    err = _output_error(raised.value)
    assert type(err) is OSError and err.errno == errno.ENOSPC
    assert err.filename == "/out/work/x.tar" and is_output_full(err)


def test_a_quality_actor_that_left_a_request_unanswered_is_stopped_and_said(ray_local):
    import ray
    from ray.exceptions import RayActorError

    from curation.executor.quality_pool import QualityPool
    from curation.faces.quality import QualityConfig, QualityModel
    from curation.pipeline.config import RayConfig

    pool = QualityPool.launch(RayConfig(quality_actors=1), QualityConfig(QualityModel.PIQE), None)
    try:
        stuck = pool.actor_for(0)
        assert stuck is not None
        pool.retire(stuck, 600.0)
        assert all(a is not stuck for a in pool.actors)
        assert any("did not answer within 600 s and was stopped" in n for n in pool.notes)
        with pytest.raises(RayActorError):
            ray.get(stuck.score_all.remote([]), timeout=60)
        pool.retire(stuck, 600.0)              # twice, or an actor already gone: nothing more
        pool.retire(None, 600.0)
        assert sum("was stopped" in n for n in pool.notes) == 1
    finally:
        pool.close()
