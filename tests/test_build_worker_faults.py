"""Worker faults on the real Ray pool: a shard actor SIGKILLed mid-clip is restarted and the
shard retried with an unchanged result; a clip on which the worker dies every time (as a
decoder crash or an out-of-memory kill would do) is recorded failed and its shard completes.

The killer asks the build's clip clock (the Ray actor `pool.CLOCK_NAME`, which every analysis
task tells when it starts a clip, with its pid), so it kills exactly while the chosen clip is
being analysed: no sleeps, no mocks."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from _reliability_helpers import manifest_rows, shard_hashes, write_folder_corpus

from curation.records import Reason

# whole builds (and, for clusters, Ray nodes started here): the full suite only
pytestmark = pytest.mark.slow

FLAGS = ["--no-progress", "--identities-per-shard", "1"]


@pytest.fixture(scope="module")
def folder_corpus(demo_corpus, tmp_path_factory):
    """Two identities of two real demo clips each, as a `folder` source."""
    paths, _ = demo_corpus
    return write_folder_corpus(tmp_path_factory.mktemp("faults") / "folder", paths.corpus,
                               ["alice", "bob"])


def _build(root: Path, output: Path):
    from curation.executor.runner import run_build
    from curation.pipeline.config import parse_args
    from mfhq.demo import DEMO_BUILD_FLAGS

    return run_build(parse_args(["--source", f"folder={root}", "--output", str(output),
                                 *DEMO_BUILD_FLAGS, *FLAGS]))


def _clip_key(root: Path, person: str, name: str) -> str:
    from curation.sources import enumerate_source

    for record in enumerate_source("folder", root):
        if record.original_clip_id in (f"{person}/{name}", f"{person}/{Path(name).stem}"):
            return f"{record.source}:{record.clip_id}"
    raise AssertionError(f"no clip {person}/{name} in {root}")


class ClipKiller(threading.Thread):
    """SIGKILLs the worker process that the build's clip clock says started `clip`, up to
    `times` times (the build runs in this process, on the session's Ray)."""

    def __init__(self, clip: str, times: int):
        super().__init__(daemon=True)
        self.clip, self.times = clip, times
        self.killed: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        from curation.executor.pool import CLOCK_NAME

        while not self.done.is_set() and len(self.killed) < self.times:
            try:       # no build running yet, or its clock between builds: ask again
                running = ray.get(ray.get_actor(CLOCK_NAME).running.remote(), timeout=10)
            except (ValueError, RayError, GetTimeoutError):
                running = {}
            _age, pid = running.get(self.clip, (None, None))
            if pid is not None and pid not in self.killed:
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def __enter__(self) -> ClipKiller:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join(5)


@pytest.fixture(scope="module")
def undisturbed(folder_corpus, ray_local, tmp_path_factory):
    output = tmp_path_factory.mktemp("undisturbed") / "build"
    summary = _build(folder_corpus, output)
    assert summary.ok and summary.shards_total == 2
    return output, shard_hashes(output), manifest_rows(output)


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_clip_is_retried_and_the_result_is_unchanged(
        folder_corpus, undisturbed, tmp_path):
    output = tmp_path / "build"
    target = _clip_key(folder_corpus, "bob", "clip_1.mp4")
    with ClipKiller(target, times=1) as killer:
        summary = _build(folder_corpus, output)
    assert len(killer.killed) == 1, "the worker was never caught on the clip"
    assert summary.ok and not summary.shards_failed
    _, hashes, rows = undisturbed
    assert shard_hashes(output) == hashes
    assert manifest_rows(output) == rows


@pytest.mark.timeout(600)
def test_a_clip_that_kills_its_worker_every_time_is_recorded_and_the_shard_completes(
        folder_corpus, undisturbed, tmp_path):
    from curation import build_folder
    from curation.audit.verify import VerifyConfig, verify_build
    from curation.executor.pool import ANALYSIS_MAX_RETRIES

    output = tmp_path / "build"
    target = _clip_key(folder_corpus, "bob", "clip_1.mp4")
    with ClipKiller(target, times=100) as killer:
        summary = _build(folder_corpus, output)
    assert len(killer.killed) == ANALYSIS_MAX_RETRIES + 1
    assert summary.ok and not summary.shards_failed
    clips = build_folder.read_manifest(output / "manifests", "clips")
    poisoned = clips[clips.source + ":" + clips.clip_id == target]
    assert len(poisoned) == 1
    row = poisoned.iloc[0]
    assert (row.status, row.reason) == ("failed", Reason.WORKER_CRASHED)
    assert "died" in row.message
    sibling = clips[(clips.identity_id == row.identity_id) & (clips.clip_id != row.clip_id)]
    assert (sibling.status == "ok").all() and len(sibling) == 1
    # The other identity's shard is untouched by the fault; the build verifies clean.
    _, hashes, _ = undisturbed
    shard = row.shard
    after = shard_hashes(output)
    assert set(after) == set(hashes)
    assert {k: v for k, v in after.items() if k != shard} == \
        {k: v for k, v in hashes.items() if k != shard}
    assert verify_build(VerifyConfig(output=str(output), progress=False)) == []
    assert not (output / "manifests" / ".inflight").exists() or \
        not any((output / "manifests" / ".inflight").iterdir())
