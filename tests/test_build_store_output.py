"""Builds whose --output is a bucket: a real S3 API (moto's server on 127.0.0.1), never patched.

Every build is the real command in its own process (`python -m curation.build_mfhq`), with its
own node scratch (`$MFHQ_SCRATCH`, where its mirror of the output lives), so a rerun or a
`verify` on a fresh scratch reads everything from the store, as another machine would:
(a) a build from the bucket's sources into the bucket writes the local build's shards and rows;
(c) a build SIGKILLed once its first shard is committed leaves only complete shards, and a rerun
on a fresh node ends byte-identical with no stray objects; (e) a takedown on the bucket, then
a rerun, keeps the identity out; (f) `mfhq verify` on the bucket catches a flipped byte;
(k) a second build on a bucket output a live build holds is refused, naming the holder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _reliability_helpers import (
    REPO,
    kill_build,
    manifest_rows,
    shard_hashes,
    small_build_args,
    wait_for,
)
from _s3_helpers import s3_server, upload_tree  # noqa: F401 - the fixture

BUCKET = "mfhq-out"


def _env(server, scratch: Path) -> dict[str, str]:
    scratch.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, **server.env, MFHQ_SCRATCH=str(scratch), PYTHONPATH=str(REPO),
                RAY_DEDUP_LOGS="0")


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "curation.build_mfhq", *args], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env)


def _build(args: list[str], env: dict, log: Path) -> None:
    proc = _start(args, env, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


def _mfhq(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mfhq", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _keys(server, prefix: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=prefix.rstrip("/") + "/")
    return sorted(o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", []))


def _download(server, prefix: str, dest: Path) -> Path:
    client = server.client()
    for key in _keys(server, prefix):
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, f"{prefix}/{key}", str(target))
    return dest


def _stray(keys: list[str]) -> list[str]:
    """Objects no finished build leaves: work files, hidden objects (a lock, markers)."""
    return [k for k in keys if k.startswith("work/") or any(p.startswith(".")
                                                            for p in k.split("/"))]


@pytest.fixture(scope="module")
def bucket(s3_server):  # noqa: F811 - the fixture
    s3_server.bucket(BUCKET)
    return s3_server


@pytest.fixture(scope="module")
def local_build(small_build):
    """The small demo build into a local folder: the bytes every bucket build must equal."""
    return small_build


def _args_to(paths, url: str) -> list[str]:
    """The small build's arguments with `url` as its --output."""
    args = small_build_args(paths, Path("unused"))
    args[args.index("--output") + 1] = url
    return args


@pytest.fixture(scope="module")
def bucket_build(bucket, demo_corpus, local_build, tmp_path_factory):
    """The same build with local sources into s3://mfhq-out/a (a fresh node scratch)."""
    paths, _ = demo_corpus
    tmp = tmp_path_factory.mktemp("store-a")
    url = f"s3://{BUCKET}/a"
    _build(_args_to(paths, url), _env(bucket, tmp / "scratch"), tmp / "build.log")
    return url, tmp


@pytest.mark.slow
def test_a_build_into_a_bucket_writes_the_local_builds_bytes_and_no_stray_objects(
        bucket, bucket_build, local_build, tmp_path):
    _, hashes, rows = local_build
    url, _ = bucket_build
    keys = _keys(bucket, "a")
    assert not _stray(keys), _stray(keys)
    copy = _download(bucket, "a", tmp_path / "copy")
    assert shard_hashes(copy) == hashes
    assert manifest_rows(copy) == rows
    # verify on another node (a fresh scratch): everything read from the store, whose
    # endpoint comes from --storage-options this time
    env = _env(bucket, tmp_path / "verifier")
    env.pop("AWS_ENDPOINT_URL")
    checked = _mfhq(env, "verify", "--output", url, "--no-progress", "--storage-options",
                    json.dumps({"endpoint_url": bucket.endpoint}))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.slow
def test_a_build_from_bucket_sources_into_the_bucket_writes_the_local_builds_shards(
        bucket, demo_corpus, local_build, tmp_path):
    paths, _ = demo_corpus
    _, hashes, _ = local_build
    upload_tree(bucket, paths.corpus, BUCKET, "sources")
    args = [a.replace(str(paths.corpus), f"s3://{BUCKET}/sources")
            for a in _args_to(paths, f"s3://{BUCKET}/from-store")]
    _build(args, _env(bucket, tmp_path / "scratch"), tmp_path / "build.log")
    copy = _download(bucket, "from-store", tmp_path / "copy")
    assert shard_hashes(copy) == hashes


@pytest.mark.slow
def test_verify_on_a_bucket_catches_a_flipped_byte_in_a_stored_shard(
        bucket, bucket_build, tmp_path):
    client = bucket.client()
    keys = _keys(bucket, "a")
    for key in keys:
        client.copy_object(Bucket=BUCKET, Key=f"f/{key}",
                           CopySource={"Bucket": BUCKET, "Key": f"a/{key}"})
    shard = next(k for k in keys if k.startswith("shards/") and k.endswith(".tar"))
    data = bytearray(client.get_object(Bucket=BUCKET, Key=f"f/{shard}")["Body"].read())
    data[len(data) // 3] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=f"f/{shard}", Body=bytes(data))
    checked = _mfhq(_env(bucket, tmp_path / "verifier"), "verify", "--output",
                    f"s3://{BUCKET}/f", "--no-progress")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"{shard}: sha256" in checked.stdout


@pytest.mark.slow
def test_a_build_killed_on_a_bucket_resumes_on_a_fresh_node_to_the_same_bytes(
        bucket, demo_corpus, local_build, tmp_path):
    from curation import manifests

    paths, _ = demo_corpus
    _, hashes, rows = local_build
    url = f"s3://{BUCKET}/c"
    args = _args_to(paths, url)
    proc = _start(args, _env(bucket, tmp_path / "node1"), tmp_path / "build.log")
    wait_for(proc, lambda: any(k.startswith("shards/") for k in _keys(bucket, "c")),
             "the first shard committed to the bucket", poll=0.2)
    kill_build(proc)
    # What a reader sees now: every tar object is complete (its parts record its sha256).
    copy = _download(bucket, "c", tmp_path / "killed")
    for tar, sha in shard_hashes(copy).items():
        split, name = tar.split("/")
        part = copy / "manifests" / "identities" / name.replace("mfhq-", "part-").replace(
            ".tar", ".parquet")
        recorded = manifests.part_shard_sha256(part)
        assert recorded == sha, f"{tar} is visible but not the one its parts record"
    # a dry run on another node reads the store's listing, says what is left, writes nothing
    before = _keys(bucket, "c")
    dry = subprocess.run([sys.executable, "-m", "curation.build_mfhq", *args, "--dry-run"],
                         cwd=REPO, env=_env(bucket, tmp_path / "dry"), capture_output=True,
                         text=True, timeout=600)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    finished = len([k for k in before if k.startswith("shards/")])
    assert finished >= 1
    assert f"{finished} finished" in dry.stdout and "to build" in dry.stdout, dry.stdout
    assert _keys(bucket, "c") == before
    _build(args, _env(bucket, tmp_path / "node2"), tmp_path / "resume.log")
    keys = _keys(bucket, "c")
    assert not _stray(keys), _stray(keys)
    copy = _download(bucket, "c", tmp_path / "resumed")
    assert shard_hashes(copy) == hashes
    assert manifest_rows(copy) == rows
    assert json.loads((copy / "manifests" / "run.json").read_text())


@pytest.mark.slow
def test_a_takedown_on_a_bucket_removes_the_identity_and_a_rerun_keeps_it_out(
        bucket, bucket_build, demo_corpus, tmp_path):
    import pyarrow.parquet as pq

    paths, _ = demo_corpus
    url, _ = bucket_build
    env = _env(bucket, tmp_path / "node")
    before = _download(bucket, "a", tmp_path / "before")
    kept = [r for r in pq.read_table(before / "manifests" / "identities").to_pylist()
            if r["status"] == "kept"]
    gone = kept[0]["identity_id"]
    listed = tmp_path / "takedown.txt"
    listed.write_text(gone + "\n")
    done = _mfhq(env, "takedown", str(listed), "--output", url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _mfhq(env, "verify", "--output", url, "--no-progress").returncode == 0
    after = _download(bucket, "a", tmp_path / "after")
    ids = pq.read_table(after / "manifests" / "identities").column("identity_id").to_pylist()
    assert gone not in ids and len(ids) == len(kept) - 1 + sum(
        1 for r in pq.read_table(before / "manifests" / "identities").to_pylist()
        if r["status"] != "kept")
    # the rerun (incremental: the recorded plan against the sources) builds nothing back
    _build(_args_to(paths, url), _env(bucket, tmp_path / "node3"), tmp_path / "rerun.log")
    rerun = _download(bucket, "a", tmp_path / "rerun")
    assert shard_hashes(rerun) == shard_hashes(after)
    assert gone not in pq.read_table(rerun / "manifests" / "identities").column(
        "identity_id").to_pylist()


def test_a_second_build_on_a_bucket_output_a_live_build_holds_is_refused_naming_it(
        bucket, tmp_path, monkeypatch):
    from curation import build_folder as bf

    monkeypatch.setenv("MFHQ_SCRATCH", str(tmp_path / "one"))
    folder = bf.BuildFolder(f"s3://{BUCKET}/locked")
    held = bf.BuildLock.acquire(folder.manifests_dir, folder.output, lease_s=60)
    try:
        # another machine: another scratch, the same bucket
        monkeypatch.setenv("MFHQ_SCRATCH", str(tmp_path / "two"))
        other = bf.BuildFolder(f"s3://{BUCKET}/locked")
        with pytest.raises(bf.OutputLocked, match=f"pid {os.getpid()} on host"):
            bf.BuildLock.acquire(other.manifests_dir, other.output)
    finally:
        held.release()
    assert ".build.lock" not in " ".join(_keys(bucket, "locked"))
    again = bf.BuildLock.acquire(folder.manifests_dir, folder.output)
    again.release()


def _node_env(server, scratch: Path) -> dict[str, str]:
    """A Ray node's environment: the store's, and a private scratch of its own."""
    scratch.mkdir()
    return {**server.env, "MFHQ_SCRATCH": str(scratch)}


def _private_cluster(server, tmp_path: Path):
    """A real Ray cluster of a 1-CPU head with a private scratch (nodes are added by tests)."""
    from ray.cluster_utils import Cluster

    return Cluster(initialize_head=True, connect=False,
                   head_node_args={"num_cpus": 1, "include_dashboard": False,
                                   "env_vars": _node_env(server, tmp_path / "head")})


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_cluster_whose_nodes_share_only_the_bucket_builds_the_local_bytes(
        bucket, demo_corpus, local_build, tmp_path):
    """(b) Two Ray nodes, each with its own private scratch (its own mirror of the output),
    the driver with a third: the work files and shards cross nodes only through the store."""
    paths, _ = demo_corpus
    _, hashes, rows = local_build
    url = f"s3://{BUCKET}/cluster"

    c = _private_cluster(bucket, tmp_path)
    try:
        c.add_node(num_cpus=1, env_vars=_node_env(bucket, tmp_path / "worker"))
        c.wait_for_nodes(timeout=120)
        _build(_args_to(paths, url) + ["--ray-address", c.address],
               _env(bucket, tmp_path / "driver"), tmp_path / "build.log")
    finally:
        c.shutdown()
    copy = _download(bucket, "cluster", tmp_path / "copy")
    placement = json.loads((copy / "manifests" / "run.json").read_text())["placement"]
    assert len(placement["analysis"]) == 2, placement       # clips analysed on both nodes
    assert shard_hashes(copy) == hashes
    assert manifest_rows(copy) == rows
    assert not _stray(_keys(bucket, "cluster"))
    # no node wrote a shard or a work file into its scratch that outlived the build
    for name in ("head", "worker", "driver"):
        left = [p for p in (tmp_path / name).rglob("*") if p.is_file()
                and {"shards", "work"} & set(p.parts)]
        assert not left, left


def test_an_output_bucket_that_does_not_exist_is_one_error_before_any_work(
        bucket, demo_corpus, tmp_path, monkeypatch, capsys):
    from curation.audit import verify
    from curation.errors import BuildFolderError
    from curation.executor.runner import run_build
    from curation.pipeline.config import parse_args

    paths, _ = demo_corpus
    monkeypatch.setenv("MFHQ_SCRATCH", str(tmp_path))
    with pytest.raises(BuildFolderError, match="s3://no-such-bucket/mfhq: its bucket does "
                                               "not exist"):
        run_build(parse_args(_args_to(paths, "s3://no-such-bucket/mfhq")))
    assert verify.main(["--output", "s3://no-such-bucket/mfhq"]) == 2
    assert "its bucket does not exist" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.parquet"))          # nothing was started or written


def test_a_store_that_refuses_a_write_stops_the_build_as_a_full_output_does():
    import errno

    from curation import build_folder as bf
    from curation.build_folder.store import refused

    err = refused("s3://b/mfhq/shards/x.tar", PermissionError("AccessDenied: no PutObject"))
    assert isinstance(err, OSError) and err.errno == errno.EROFS
    assert bf.is_output_full(err)
    other = ConnectionError("reset")
    assert refused("s3://b/x", other) is other           # anything else is raised as it is


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_node_removed_mid_build_on_a_bucket_loses_nothing(
        bucket, demo_corpus, local_build, tmp_path):
    """(d) A worker node joins once the driver holds the bucket's lock (so the driver is not
    attached to it), analyses clips into the bucket, and is removed mid-build."""
    paths, _ = demo_corpus
    _, hashes, rows = local_build
    url = f"s3://{BUCKET}/node-lost"

    c = _private_cluster(bucket, tmp_path)
    try:
        proc = _start(_args_to(paths, url) + ["--ray-address", c.address, "--verbose"],
                      _env(bucket, tmp_path / "driver"), tmp_path / "build.log")
        wait_for(proc, lambda: "manifests/.build.lock" in _keys(bucket, "node-lost"),
                 "the driver holding the bucket's lock", poll=0.2)
        worker = c.add_node(num_cpus=2, env_vars=_node_env(bucket, tmp_path / "worker"))
        wait_for(proc, lambda: sum(k.startswith("work/") for k in _keys(bucket, "node-lost"))
                 >= 2, "clips analysed into the bucket", poll=0.2)
        c.remove_node(worker)
        assert proc.wait(timeout=600) == 0, (tmp_path / "build.log").read_text()[-3000:]
    finally:
        c.shutdown()
    copy = _download(bucket, "node-lost", tmp_path / "copy")
    assert shard_hashes(copy) == hashes
    assert manifest_rows(copy) == rows
    assert not _stray(_keys(bucket, "node-lost"))
