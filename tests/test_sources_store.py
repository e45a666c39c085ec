"""Sources in a store: every dataset read from `s3://` on a real S3 API (moto's server on
127.0.0.1), compared with the same corpus read from its local folder.

The demo corpus (with its bad inputs, 128 px frames) is uploaded key for key; enumeration from
the bucket must give the local records with URLs for paths. A missing bucket, refused
credentials and an empty prefix are one clear error each; a video deleted after the listing is
one `video_missing` clip; a whole build from the bucket writes the local build's shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _s3_helpers import HOST, S3_ENV, free_port, s3_server  # noqa: F401 - the fixture

from curation.errors import SourceError
from curation.sources import SOURCE_KINDS, check_root, enumerate_source

BUCKET = "mfhq-sources"


def upload_tree(server, local: Path, bucket: str, prefix: str) -> int:
    """Every regular file under `local` as `prefix/<relative path>` (a store has no links)."""
    client = server.client()
    count = 0
    for path in sorted(local.rglob("*")):
        if path.is_file() and not path.is_symlink():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
            count += 1
    return count


@pytest.fixture(scope="module")
def stored_corpus(s3_server, tmp_path_factory):  # noqa: F811 - the fixture
    """(local corpus folder, its URL in the bucket)."""
    from curation.democorpus import build_demo_corpus

    out = tmp_path_factory.mktemp("store-demo") / "corpus"
    build_demo_corpus(out, seed=0, with_bad_inputs=True, frame_size=128, workers=1)
    s3_server.bucket(BUCKET)
    upload_tree(s3_server, out, BUCKET, "datasets/corpus")
    return out, f"s3://{BUCKET}/datasets/corpus"


def comparable(record, root: str) -> dict:
    """A record's fields with its root taken out of the video path and the message."""
    fields = dataclasses.asdict(record)
    path = fields.pop("video_path")
    fields["video"] = None if path is None else path[len(root):].lstrip("/")
    fields["message"] = (fields.get("message") or "").replace(root, "ROOT")
    return fields


def test_every_dataset_enumerated_from_a_bucket_gives_the_local_records_with_urls(stored_corpus):
    local, url = stored_corpus
    for kind in SOURCE_KINDS:
        local_records = list(enumerate_source(kind, local / kind))
        stored_records = list(enumerate_source(kind, f"{url}/{kind}"))
        assert local_records, kind
        assert [comparable(r, f"{url}/{kind}") for r in stored_records] == \
            [comparable(r, str(local / kind)) for r in local_records], kind
        for record in stored_records:
            if record.video_path is not None:
                assert record.video_path.startswith(f"{url}/{kind}/"), record


def test_a_url_with_a_trailing_slash_is_the_same_root(stored_corpus):
    _local, url = stored_corpus
    assert check_root("celebvhq", f"{url}/celebvhq/") == f"{url}/celebvhq"


def test_a_missing_bucket_is_one_clear_error(s3_server):  # noqa: F811 - the fixture
    with pytest.raises(SourceError, match="bucket does not exist"):
        check_root("celebvhq", "s3://no-such-bucket-here/celebvhq")


def test_a_prefix_with_no_dataset_is_one_clear_error(stored_corpus):
    _local, url = stored_corpus
    with pytest.raises(SourceError, match="no objects under this prefix"):
        check_root("vfhq", f"{url}/not-a-dataset")


def test_the_command_line_takes_urls_and_refuses_storage_options_that_are_not_json():
    from curation.pipeline.config import parse_args

    config = parse_args(["--source", "celebvhq=s3://bucket/celebvhq/",
                         "--takedown", "s3://bucket/takedown.txt",
                         "--quality-weights", "s3://bucket/models/topiq.pth"])
    assert config.resolved_sources() == [("celebvhq", "s3://bucket/celebvhq")]
    assert config.output_affecting()["quality"]["weights"] == "s3://bucket/models/topiq.pth"
    with pytest.raises(SystemExit):
        parse_args(["--source", "celebvhq=s3://b/c", "--storage-options", "{not json"])


def test_storage_options_are_used_but_only_their_names_are_written(s3_server, stored_corpus):  # noqa: F811
    from curation.pipeline.config import parse_args
    from mfhq_contract import storage

    _local, url = stored_corpus
    secret = {"key": "testing", "secret": "do-not-write-me"}
    config = parse_args(["--source", f"celebvhq={url}/celebvhq",
                         "--storage-options", json.dumps(secret)])
    try:
        assert storage.options() == secret
        assert json.loads(os.environ[storage.OPTIONS_ENV]) == secret   # for Ray's workers
        written = json.dumps(config.to_json())
        assert "do-not-write-me" not in written and '"storage_options": ["key", "secret"]' \
            in written
        assert list(enumerate_source("celebvhq", f"{url}/celebvhq"))
    finally:
        storage.set_options(None)


def test_a_takedown_list_at_a_url_is_read_and_hashed(s3_server, stored_corpus):  # noqa: F811
    from curation.pipeline.config import BuildConfig
    from curation.takedowns import read_takedown

    s3_server.client().put_object(Bucket=BUCKET, Key="lists/takedown.txt",
                                  Body=b"# removed\nyt:abc\n\nvideo1  # a comment\n")
    url = f"s3://{BUCKET}/lists/takedown.txt"
    assert read_takedown(url) == {"yt:abc", "video1"}
    values = BuildConfig(sources=[("folder", "x")], takedown=url).output_affecting()
    assert values["takedown"] == url and len(values["takedown_sha256"]) == 64


@pytest.mark.parametrize("cache_bytes", ["0", "1G"])
def test_a_video_deleted_after_the_listing_is_video_missing_and_scratch_is_emptied(
        s3_server, stored_corpus, tmp_path, monkeypatch, cache_bytes):  # noqa: F811
    """With the video cache off (0) the task's own copy goes when the block ends; with it on
    the video stays in the cache only (`tests/test_storage_video_cache.py` tests the cache)."""
    from curation.faces.decoding import DecodeError
    from curation.records import Reason
    from curation.storage import local_video

    monkeypatch.setenv("MFHQ_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("MFHQ_VIDEO_CACHE_BYTES", cache_bytes)
    local, url = stored_corpus
    client = s3_server.client()
    key = "datasets/corpus/folder/t1_face1/clip_0.mp4"
    client.copy_object(Bucket=BUCKET, Key="victim/clip_0.mp4",
                       CopySource={"Bucket": BUCKET, "Key": key})
    with local_video(f"s3://{BUCKET}/victim/clip_0.mp4", time_limit_s=30) as path:
        assert Path(path).read_bytes() == (local / "folder/t1_face1/clip_0.mp4").read_bytes()
        assert Path(path).is_relative_to(tmp_path / "scratch")
    left = {p.name for p in (tmp_path / "scratch").iterdir()}
    assert left == (set() if cache_bytes == "0" else {"mfhq-video-cache"})   # no task folder
    client.delete_object(Bucket=BUCKET, Key="victim/clip_0.mp4")
    with pytest.raises(DecodeError) as raised, \
            local_video(f"s3://{BUCKET}/victim/clip_0.mp4", time_limit_s=30):
        pass
    assert raised.value.reason == Reason.VIDEO_MISSING
    assert f"s3://{BUCKET}/victim/clip_0.mp4" in raised.value.message
    assert {p.name for p in (tmp_path / "scratch").iterdir()} == left


def test_a_frame_folder_in_a_store_is_copied_whole(stored_corpus, tmp_path, monkeypatch):
    from curation.storage import local_video

    monkeypatch.setenv("MFHQ_SCRATCH", str(tmp_path))
    local, url = stored_corpus
    folder = next((local / "vfhq" / "frames").iterdir())
    with local_video(f"{url}/vfhq/frames/{folder.name}", time_limit_s=30) as path:
        assert sorted(p.name for p in Path(path).iterdir()) == \
            sorted(p.name for p in folder.iterdir())


def test_scratch_folders_of_dead_processes_are_removed_by_the_next_copy(
        stored_corpus, tmp_path, monkeypatch):
    from curation.storage import local_video

    monkeypatch.setenv("MFHQ_SCRATCH", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = tmp_path / f"mfhq-video-{dead}-abc"
    orphan.mkdir()
    (orphan / "big.mp4").write_bytes(b"x" * 1000)
    _local, url = stored_corpus
    with local_video(f"{url}/folder/t1_face1/clip_1.mp4", time_limit_s=30):
        assert not orphan.exists()


@pytest.fixture
def auth_server():
    """A second moto server that checks credentials (it knows no access key at all)."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        server.kill()
        pytest.fail("moto server did not start in 30 s")
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_credentials_the_store_refuses_are_one_clear_error(auth_server, monkeypatch):
    import fsspec

    for name, value in dict(S3_ENV, AWS_ENDPOINT_URL=auth_server).items():
        monkeypatch.setenv(name, value)
    fsspec.filesystem("s3").clear_instance_cache()
    try:
        with pytest.raises(SourceError, match="refused the credentials"):
            check_root("celebvhq", "s3://any-bucket/celebvhq")
    finally:
        fsspec.filesystem("s3").clear_instance_cache()


# --- whole builds ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_with_store(s3_server, tmp_path_factory):  # noqa: F811 - the fixture
    """A local Ray whose workers see the S3 server's AWS_* environment, as workers started
    after the credentials were set do (a session Ray started before this module would not),
    and keep their node's video cache in a folder of this module (not the machine's /tmp)."""
    import ray

    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    env = dict(s3_server.env, MFHQ_VIDEO_CACHE=str(tmp_path_factory.mktemp("video-cache")))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()
    if was_running:   # give the session back the Ray it had
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


BUILD_FLAGS = ["--min-face-size", "40", "--crop-size", "64", "--quality-model", "piqe",
               "--face-detector", "mediapipe", "--identity-model", "none",
               "--identities-per-shard", "2", "--sample-fps", "4", "--test-fraction", "0.25",
               "--no-progress", "--num-cpus", "2"]


def _build(sources: list[str], output: Path):
    from curation.executor.runner import run_build
    from curation.pipeline.config import parse_args

    args = [a for kind_root in sources for a in ("--source", kind_root)]
    return run_build(parse_args([*args, "--output", str(output), *BUILD_FLAGS]))


def _rows(output: Path, table: str) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for part in sorted((output / "manifests" / table).glob("*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def _without_paths(rows: list[dict], root: str) -> list[dict]:
    out = []
    for row in rows:
        row = {k: v for k, v in row.items()
               if k not in ("seconds", "node", "started_at", "ended_at", "analysis_seconds")}
        for key, value in row.items():
            if isinstance(value, str) and root in value:
                row[key] = value.replace(root, "ROOT")
        out.append(row)
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True, default=str))


@pytest.mark.slow
def test_a_build_from_a_bucket_writes_the_local_builds_shards_and_rows(
        s3_server, stored_corpus, tmp_path, ray_with_store):  # noqa: F811
    from curation.build_folder import file_sha256

    local, url = stored_corpus
    kinds = ["celebvhq", "vfhq", "folder"]
    _build([f"{k}={local / k}" for k in kinds], tmp_path / "local")
    _build([f"{k}={url}/{k}" for k in kinds], tmp_path / "store")
    shas = {}
    for name in ("local", "store"):
        shards = tmp_path / name / "shards"
        shas[name] = {str(p.relative_to(shards)): file_sha256(p)
                      for p in sorted(shards.glob("*/*.tar"))}
    assert shas["local"] and shas["local"] == shas["store"]
    for table in ("clips", "faces", "identities"):
        local_rows = _without_paths(_rows(tmp_path / "local", table), str(local))
        store_rows = _without_paths(_rows(tmp_path / "store", table), url)
        assert local_rows == store_rows, table


@pytest.mark.slow
def test_a_video_deleted_between_listing_and_analysis_is_one_missing_row_and_the_build_goes_on(
        s3_server, stored_corpus, tmp_path, ray_with_store):  # noqa: F811
    local, _url = stored_corpus
    prefix = "deleted/folder"
    upload_tree(s3_server, local / "folder", BUCKET, prefix)
    client = s3_server.client()
    victim = f"{prefix}/t1_face1/clip_1.mp4"
    output = tmp_path / "out"
    plan = output / "manifests" / "plan.json"

    def delete_once_planned():   # the plan is written after the listing, before analysis
        deadline = time.monotonic() + 120
        while not plan.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        client.delete_object(Bucket=BUCKET, Key=victim)

    deleter = threading.Thread(target=delete_once_planned, daemon=True)
    deleter.start()
    summary = _build([f"folder=s3://{BUCKET}/{prefix}"], output)
    deleter.join(timeout=130)
    rows = [r for r in _rows(output, "clips") if r["original_clip_id"] == "t1_face1/clip_1"]
    assert [(r["status"], r["reason"]) for r in rows] == [("failed", "video_missing")], rows
    assert f"s3://{BUCKET}/{victim}" in rows[0]["message"]
    assert any(r["status"] == "ok" for r in _rows(output, "clips"))
    assert summary is not None
