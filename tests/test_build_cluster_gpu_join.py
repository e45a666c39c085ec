"""A GPU node that joins a running build gets a quality actor, on a real multi-node Ray cluster
started on this machine (`ray.cluster_utils.Cluster`).

Contract under test (`curation.executor.quality_pool.QualityPool.follow`): a build that started
on a cluster of CPUs only (one CPU quality actor) adds one GPU quality actor when a node that
declares a GPU joins while it runs; that actor serves the build from its node, falling back to
the node's CPU when its torch sees no GPU (this machine has none), and says so in the build's
notes. The build's own `run.json` is the evidence (`placement["quality"]`: the node of every
actor that became ready; `notes`), and its shards and manifests are those of a one-node build.

The build runs as its own process (`python -m curation.build_mfhq --ray-address ...`), as a
user would run it against a cluster; this test never calls ray.init in the test process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _reliability_helpers import manifest_rows, shard_hashes, write_folder_corpus

# whole builds and Ray nodes started here: the full suite only
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
FLAGS = ["--no-progress", "--identities-per-shard", "1"]
COPIES = 10         # each real clip this many times: 60 clips, a build that outlasts the join


@pytest.fixture(scope="module")
def long_corpus(demo_corpus, tmp_path_factory):
    """Three identities of the demo corpus's real clips, each clip COPIES times, as a `folder`
    source: on a 1-CPU head the build still has clips to analyse long after a node joins and
    its actor has loaded (the pool looks for new nodes every FOLLOW_S)."""
    paths, _ = demo_corpus
    base = write_folder_corpus(tmp_path_factory.mktemp("gpu-join") / "base", paths.corpus,
                               ["alice", "bob", "carol"])
    root = base.parent / "folder"
    for person in sorted(p for p in base.iterdir() if p.is_dir()):
        (root / person.name).mkdir(parents=True)
        for i, clip in enumerate(sorted(person.glob("*.mp4")) * COPIES):
            shutil.copyfile(clip, root / person.name / f"clip_{i}.mp4")
    return root


def _args(root: Path, output: Path) -> list[str]:
    from mfhq.demo import DEMO_BUILD_FLAGS

    return ["--source", f"folder={root}", "--output", str(output), *DEMO_BUILD_FLAGS, *FLAGS]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _workers_titled(prefix: bytes, raylets: set[int]) -> int:
    """Ray worker processes of the raylets `raylets` (pids) whose process title starts with
    `prefix`: Ray titles a worker `ray::<task>` while it runs a task and `ray::<Actor>` once it
    holds an actor. Other Rays on this machine (other engineers' builds) are not counted."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(prefix) and \
                    _parent(int(cmdline.parent.name)) in raylets:
                count += 1
        except (OSError, ValueError, IndexError):
            continue            # a process that ended meanwhile
    return count


def _raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def _wait(proc: subprocess.Popen, log_path: Path, condition, what: str,
          deadline: float) -> None:
    while not condition():
        assert proc.poll() is None, f"the build ended before {what}:\n" + \
            log_path.read_text()[-4000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.timeout(1200)
def test_a_gpu_node_that_joins_mid_build_gets_a_quality_actor_and_the_shards_are_unchanged(
        long_corpus, tmp_path):
    from ray.cluster_utils import Cluster

    reference = tmp_path / "one-node"
    result = subprocess.run([sys.executable, "-m", "curation.build_mfhq",
                             *_args(long_corpus, reference), "--num-cpus", "2"],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr

    # A head with one CPU and no GPU: the pool starts with one CPU actor.
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        output, log_path = tmp_path / "build", tmp_path / "build.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "curation.build_mfhq", "--verbose",
                                     *_args(long_corpus, output), "--ray-address", c.address],
                                    cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            head = {_raylet_pid(c.head_node)}
            # The driver attaches to a raylet of its own machine, which on a one-machine cluster
            # could be any node: the GPU node joins only once the build works on the head.
            _wait(proc, log_path, lambda: _workers_titled(b"ray::_analysis_task", head) >= 1,
                  "the first clip ran", deadline)
            # One CPU for the actor (the pool asks 1 GPU + 1 CPU), so analysis stays on the head
            # and the build stays long; the node has no GPU, torch there sees none.
            gpu_node = c.add_node(num_cpus=1, num_gpus=1)
            joined = {_raylet_pid(gpu_node)}
            _wait(proc, log_path, lambda: _workers_titled(b"ray::QualityActor", joined) >= 1,
                  "a quality actor on the joined GPU node", deadline)
            assert proc.wait(timeout=600) == 0, log_path.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        head_id, gpu_id = c.head_node.node_id, gpu_node.node_id
    finally:
        c.shutdown()

    record = json.loads((output / "manifests" / "run.json").read_text())
    placement = record["placement"]
    # The CPU actor on the head from the start, and the GPU actor added on the joined node.
    assert sorted(placement["quality"]) == sorted([head_id, gpu_id]), (placement, head_id,
                                                                       gpu_id)
    # Its node declares a GPU that its torch cannot use: the actor said so and used the CPU.
    assert any("declares a GPU but torch sees none" in n for n in record.get("notes", [])), \
        record.get("notes")
    assert shard_hashes(output) == shard_hashes(reference)
    assert manifest_rows(output) == manifest_rows(reference)
