"""The build on a real multi-node Ray cluster started on this machine (`ray.cluster_utils.Cluster`):
a head node with CPUs and a worker node that declares a GPU it does not have, so that the
quality stage is scheduled onto the "GPU" node and must fall back to the CPU there.

The build runs as its own process (`python -m curation.build_mfhq --ray-address ...`), as a
user would run it against a cluster; these tests never call ray.init in the test process."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _reliability_helpers import manifest_rows, shard_hashes, write_folder_corpus

# whole builds (and, for clusters, Ray nodes started here): the full suite only
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
FLAGS = ["--no-progress", "--identities-per-shard", "1"]


@pytest.fixture(scope="module")
def small_corpus(demo_corpus, tmp_path_factory):
    """Three identities of two real demo clips each, as a `folder` source."""
    paths, _ = demo_corpus
    return write_folder_corpus(tmp_path_factory.mktemp("cluster") / "folder", paths.corpus,
                               ["alice", "bob", "carol"])


def _args(root: Path, output: Path) -> list[str]:
    from mfhq.demo import DEMO_BUILD_FLAGS

    return ["--source", f"folder={root}", "--output", str(output), *DEMO_BUILD_FLAGS, *FLAGS]


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "curation.build_mfhq", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def one_node(small_corpus, tmp_path_factory):
    """The same build on an embedded one-node Ray: the reference bytes."""
    output = tmp_path_factory.mktemp("one-node") / "build"
    result = _run(_args(small_corpus, output) + ["--num-cpus", "2"])
    assert result.returncode == 0, result.stdout + result.stderr
    return shard_hashes(output), manifest_rows(output)


@pytest.fixture()
def cluster():
    """A head with 1 CPU and a worker node with 2 CPUs that declares 1 GPU (it has none)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = c.add_node(num_cpus=2, num_gpus=1)
    c.wait_for_nodes(timeout=120)
    yield c, worker
    c.shutdown()


@contextlib.contextmanager
def _head_only(num_cpus: int):
    """A cluster of one head node with `num_cpus` CPUs (nodes may be added), shut down after."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": num_cpus, "include_dashboard": False})
    try:
        yield c
    finally:
        c.shutdown()


def _run_record(output: Path) -> dict:
    return json.loads((output / "manifests" / "run.json").read_text())


@pytest.mark.timeout(900)
def test_a_two_node_cluster_build_uses_both_nodes_and_equals_a_one_node_build(
        small_corpus, one_node, cluster, tmp_path):
    c, _ = cluster
    output = tmp_path / "build"
    result = _run(_args(small_corpus, output) + ["--ray-address", c.address])
    assert result.returncode == 0, result.stdout + result.stderr
    record = _run_record(output)
    placement = record["placement"]
    assert len(placement["analysis"]) == 2, placement          # clips analysed on both nodes
    assert sum(placement["analysis"].values()) == 6
    # The quality actor was placed on the node that declares the GPU, and fell back to its CPU.
    assert len(placement["quality"]) == 1
    assert any("declares a GPU but torch sees none" in n for n in record.get("notes", [])) or \
        "declares a GPU but torch sees none" in result.stdout
    hashes, rows = one_node
    assert shard_hashes(output) == hashes
    assert manifest_rows(output) == rows


def _start_attached_build(corpus, output: Path, address: str, log_path: Path
                          ) -> subprocess.Popen:
    """`mfhq build` as its own process, attached to the cluster at `address`, its output in
    `log_path`."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "curation.build_mfhq", "--verbose",
                                 *_args(corpus, output), "--ray-address", address],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.timeout(900)
def test_a_worker_node_removed_mid_build_loses_nothing(small_corpus, one_node, tmp_path):
    # The driver attaches to a raylet of its own machine; on a one-machine cluster that could be
    # any node, so the worker node joins only after the driver is up (as in a real cluster,
    # where the driver runs on the head and workers come and go).
    with _head_only(num_cpus=1) as c:
        output, log_path = tmp_path / "build", tmp_path / "build.log"
        proc = _start_attached_build(small_corpus, output, c.address, log_path)
        deadline = time.monotonic() + 300
        while _clips_in_flight() < 1:                   # the driver is up and working
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the build never started a clip"
            time.sleep(0.05)
        worker = c.add_node(num_cpus=2)
        while _clips_in_flight() < 2:                   # clips run on the new node too
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no clip ever ran on the added node"
            time.sleep(0.05)
        c.remove_node(worker)
        assert proc.wait(timeout=600) == 0, log_path.read_text()
    text = log_path.read_text()
    # A clip was lost with the node and run again elsewhere; nothing is lost in the output.
    assert "node it was running on is dead" in text, text[-3000:]
    hashes, rows = one_node
    assert shard_hashes(output) == hashes
    assert manifest_rows(output) == rows


@pytest.mark.timeout(900)
def test_gpus_asked_for_on_a_cluster_without_them_is_said_within_a_minute(small_corpus,
                                                                        tmp_path):
    with _head_only(num_cpus=2) as c:
        output = tmp_path / "build"
        started = time.monotonic()
        result = _run(_args(small_corpus, output) + ["--ray-address", c.address,
                                                      "--gpus-per-actor", "1", "--limit", "1"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "could not be placed within 60 s" in result.stdout
    assert "GPU" in result.stdout
    assert time.monotonic() - started < 600


@pytest.mark.timeout(600)
def test_a_cluster_whose_worker_nodes_never_join_stops_with_a_clear_error(small_corpus,
                                                                          tmp_path):
    # The head of cluster.yaml declares no CPUs (it only drives); with no worker node up, no
    # analysis task can ever start.
    with _head_only(num_cpus=0) as c:
        result = _run(_args(small_corpus, tmp_path / "build") + [
            "--ray-address", c.address, "--stall-timeout", "20", "--limit", "1"], timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no analysis task of the build could start" in result.stderr
    assert "Traceback" not in result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(1200)
def test_a_build_submitted_with_ray_job_submit_completes(small_corpus, one_node, tmp_path):
    from ray.cluster_utils import Cluster

    port = _free_port()
    # The head's dashboard agent serves job submissions on a port of its own. Its default
    # (52365) is taken while any other Ray runs on this machine, e.g. the session's embedded
    # Ray in the test process; the agent then starts without its HTTP server, and every
    # submission is answered "No available agent" for as long as that Ray lives.
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "include_dashboard": True,
                                "dashboard_host": "127.0.0.1", "dashboard_port": port,
                                "dashboard_agent_listen_port": _free_port()})
    try:
        c.add_node(num_cpus=2)
        c.wait_for_nodes(timeout=120)
        output = tmp_path / "build"
        ray_cli = Path(sys.executable).with_name("ray")
        # As the README says: the checkout is uploaded as the job's working dir (.gitignore'd
        # files such as .venv stay behind) and the build joins the cluster it runs on.
        submit = [str(ray_cli), "job", "submit", "--address", f"http://127.0.0.1:{port}",
                  "--working-dir", str(REPO), "--", sys.executable, "curation/build_mfhq.py",
                  "--ray-address", "auto", *_args(small_corpus, output)]
        # The head's job agent registers a few seconds after the dashboard answers (longer
        # on a loaded machine), and until then a submission is refused with "No available agent".
        deadline = time.monotonic() + 240
        while True:
            result = subprocess.run(submit, cwd=REPO, capture_output=True, text=True,
                                    timeout=800)
            if "No available agent" not in result.stderr or time.monotonic() > deadline:
                break
            time.sleep(3)
    finally:
        c.shutdown()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in (result.stdout + result.stderr).lower()
    hashes, rows = one_node
    assert shard_hashes(output) == hashes
    assert manifest_rows(output) == rows


def _clips_in_flight() -> int:
    """Analysis tasks running now on the nodes this process started: Ray titles a worker
    process `ray::<task>` while it runs one, and each node's raylet (a child of this process)
    starts its workers. Other Rays on this machine are not counted."""
    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::_analysis_task") and \
                    parent(parent(int(cmdline.parent.name))) == os.getpid():
                count += 1
        except (OSError, ValueError, IndexError):
            continue            # a process that ended meanwhile
    return count


def _ray_task_spans(address: str, task: str) -> list[tuple[float, float]]:
    """(start, end) in seconds of every execution of the remote function named `task`, from
    Ray's own timeline of the cluster (read by a separate driver: this process never joins)."""
    probe = ("import json, sys, ray\n"
             f"ray.init(address={address!r}, logging_level='ERROR')\n"
             "events = ray.timeline()\n"
             f"spans = [(e['ts'] / 1e6, (e['ts'] + e['dur']) / 1e6) for e in events\n"
             f"         if str(e.get('cat', '')).startswith('task::')\n"
             f"         and str(e.get('name', '')).endswith({task!r})]\n"
             "print('SPANS ' + json.dumps(spans))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    line = [x for x in result.stdout.splitlines() if x.startswith("SPANS ")]
    assert line, result.stdout[-2000:] + result.stderr[-2000:]
    return [tuple(span) for span in json.loads(line[-1][len("SPANS "):])]


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.fixture(scope="module")
def wide_corpus(small_corpus, tmp_path_factory):
    """The small corpus with each clip twice (12 clips): enough clips left when a node joins."""
    import shutil

    root = tmp_path_factory.mktemp("wide") / "folder"
    for person in sorted(p for p in small_corpus.iterdir() if p.is_dir()):
        (root / person.name).mkdir(parents=True)
        for i, clip in enumerate(sorted(person.glob("*.mp4")) * 2):
            shutil.copyfile(clip, root / person.name / f"clip_{i}.mp4")
    return root


@pytest.mark.timeout(900)
def test_a_node_that_joins_mid_build_gets_analysis_tasks_at_once(wide_corpus, tmp_path,
                                                                 monkeypatch):
    reference = tmp_path / "one-node"
    result = _run(_args(wide_corpus, reference) + ["--num-cpus", "2"])
    assert result.returncode == 0, result.stdout + result.stderr
    # Ray's own timeline records task executions only with profiling on, in every node.
    monkeypatch.setenv("RAY_PROFILING", "1")
    with _head_only(num_cpus=1) as c:
        output, log_path = tmp_path / "build", tmp_path / "build.log"
        proc = _start_attached_build(wide_corpus, output, c.address, log_path)
        deadline = time.monotonic() + 300
        while _clips_in_flight() < 1:                  # the first clip runs
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the build never started a clip"
            time.sleep(0.05)
        c.add_node(num_cpus=4)
        assert proc.wait(timeout=600) == 0, log_path.read_text()
        time.sleep(2)        # task events reach the GCS within a second
        spans = _ray_task_spans(c.address, "_analysis_task")
    # On the 1-CPU head alone at most one clip runs; the in-flight limit followed the new
    # node's CPUs, so clips ran side by side there.
    assert len(spans) >= 6, spans
    assert _most_at_once(spans) > 2, spans
    assert shard_hashes(output) == shard_hashes(reference)
    assert manifest_rows(output) == manifest_rows(reference)
