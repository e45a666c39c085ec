"""The node's video cache (`curation.storage.local_video`) on a real S3 API: moto's server on
127.0.0.1, wrapped so that the test can count the object bytes it served.

Clips of one video fetch it once; a replaced object (new ETag) is fetched again; the cache stays
within its bound and never removes a video a clip is reading; two processes asking for the same
video at once both get it whole from one fetch; a wait on another process's copy is bounded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _s3_helpers import HOST, S3_ENV, free_port

from curation.errors import SourceError

BUCKET = "mfhq-video-cache"
REPO = Path(__file__).resolve().parent.parent
CHILD_TIME_LIMIT_S = 120


class Counting:
    """A WSGI wrapper of moto's app: the bytes of object GETs it served, optionally slowed."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.bytes = 0
        self.gets = 0
        self.pause_s = 0.0       # per 64 kB sent: a slow store, so that fetches overlap

    def __call__(self, environ, start_response):
        body = self.app(environ, start_response)
        # object reads only: a listing is a GET with a query string
        if environ["REQUEST_METHOD"] != "GET" or environ.get("QUERY_STRING"):
            return body
        with self.lock:
            self.gets += 1
        return self._counted(body)

    def _counted(self, body):
        try:
            for chunk in body:
                for start in range(0, len(chunk), 1 << 16):
                    piece = chunk[start:start + (1 << 16)]
                    with self.lock:
                        self.bytes += len(piece)
                    if self.pause_s:
                        time.sleep(self.pause_s)
                    yield piece
        finally:
            if hasattr(body, "close"):
                body.close()


@pytest.fixture(scope="module")
def store():
    """(counting wrapper, boto3 client, env for subprocesses) of a fresh moto server."""
    pytest.importorskip("moto.server")
    import boto3
    import fsspec
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    counting = Counting(DomainDispatcherApplication(create_backend_app))
    server = make_server(HOST, free_port(), counting, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://{HOST}:{server.server_port}"
    env = dict(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.filesystem("s3").clear_instance_cache()   # an earlier instance knows no endpoint
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield counting, client, env
    finally:
        server.shutdown()
        thread.join(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        fsspec.filesystem("s3").clear_instance_cache()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MFHQ_SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("MFHQ_VIDEO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MFHQ_VIDEO_CACHE_BYTES", raising=False)
    return tmp_path / "cache"


def put(client, key: str, size: int, seed: int) -> bytes:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return data


def videos_in(cache: Path) -> dict[str, int]:
    """The cached videos' names and sizes (what the bound is about)."""
    return {p.name: p.stat().st_size for p in cache.glob("*/*.mp4")}


def test_two_clips_of_the_same_video_fetch_it_once(store, cache):
    from curation.storage import local_video

    counting, client, _env = store
    data = put(client, "raw/ytb_a.mp4", 1 << 20, seed=1)
    before = counting.bytes
    paths = []
    for _clip in range(2):
        with local_video(f"s3://{BUCKET}/raw/ytb_a.mp4", time_limit_s=60) as path:
            assert Path(path).read_bytes() == data
            paths.append(path)
    assert counting.bytes - before == len(data)
    assert paths[0] == paths[1] and Path(paths[0]).is_relative_to(cache)
    assert not list((cache.parent / "scratch").glob("mfhq-video-*-*"))   # no private copy


def test_a_replaced_video_with_a_new_etag_is_fetched_again(store, cache):
    from curation.storage import local_video

    counting, client, _env = store
    put(client, "raw/ytb_b.mp4", 1 << 18, seed=2)
    with local_video(f"s3://{BUCKET}/raw/ytb_b.mp4", time_limit_s=60):
        pass
    replaced = put(client, "raw/ytb_b.mp4", 1 << 18, seed=3)   # same size, other bytes
    before = counting.bytes
    with local_video(f"s3://{BUCKET}/raw/ytb_b.mp4", time_limit_s=60) as path:
        assert Path(path).read_bytes() == replaced
    assert counting.bytes - before == len(replaced)


def test_the_cache_stays_within_its_bound_and_never_removes_a_video_being_read(
        store, cache, monkeypatch):
    from curation.storage import local_video

    counting, client, _env = store
    size = 1 << 18
    data = {name: put(client, f"raw/{name}.mp4", size, seed=i)
            for i, name in enumerate(["v1", "v2", "v3", "v4"], start=10)}
    bound = int(2.5 * size)           # room for two videos
    monkeypatch.setenv("MFHQ_VIDEO_CACHE_BYTES", str(bound))

    def url(name):
        return f"s3://{BUCKET}/raw/{name}.mp4"

    with local_video(url("v1"), time_limit_s=60) as first:      # read for the whole test
        with local_video(url("v2"), time_limit_s=60):
            pass
        time.sleep(0.02)   # v2's last use is later than v1's
        with local_video(url("v3"), time_limit_s=60) as third:
            # v1 is the least recently used, but a clip is reading it: v2 went instead
            assert set(videos_in(cache)) == {"v1.mp4", "v3.mp4"}
            assert Path(first).read_bytes() == data["v1"]
            # both cached videos in use: v4 cannot make room and is the task's own copy
            before = counting.bytes
            with local_video(url("v4"), time_limit_s=60) as fourth:
                assert Path(fourth).read_bytes() == data["v4"]
                assert not Path(fourth).is_relative_to(cache)
            assert counting.bytes - before == size
            assert Path(third).read_bytes() == data["v3"]
            assert sum(videos_in(cache).values()) <= bound
        assert Path(first).read_bytes() == data["v1"]
    with local_video(url("v4"), time_limit_s=60) as fourth:     # nothing in use: room made
        assert Path(fourth).is_relative_to(cache)
    assert sum(videos_in(cache).values()) <= bound and "v4.mp4" in videos_in(cache)


def test_a_video_larger_than_the_bound_or_with_the_cache_off_is_a_private_copy(
        store, cache, monkeypatch):
    from curation.storage import local_video

    _counting, client, _env = store
    data = put(client, "raw/big.mp4", 1 << 18, seed=20)
    for bound in ("0", "100K"):
        monkeypatch.setenv("MFHQ_VIDEO_CACHE_BYTES", bound)
        with local_video(f"s3://{BUCKET}/raw/big.mp4", time_limit_s=60) as path:
            assert Path(path).read_bytes() == data and not Path(path).is_relative_to(cache)
        assert videos_in(cache) == {}


CHILD = """
import hashlib, json, os, sys, time
from pathlib import Path
from curation.storage import local_video
import curation.faces.decoding  # imported before the start: both begin together
ready, go = Path(sys.argv[2] + ".ready"), Path(sys.argv[3])
ready.touch()
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("no go within 60 s")
    time.sleep(0.005)
started = time.monotonic()
with local_video(sys.argv[1], time_limit_s=60) as path:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
print(json.dumps({"sha256": digest, "seconds": time.monotonic() - started}))
"""


def test_two_processes_fetching_the_same_video_at_once_both_get_it_whole_from_one_fetch(
        store, cache, tmp_path):
    counting, client, env = store
    data = put(client, "raw/shared.mp4", 2 << 20, seed=30)
    go = tmp_path / "go"
    child_env = dict(os.environ, **env, PYTHONPATH=str(REPO))
    children = [subprocess.Popen([sys.executable, "-c", CHILD, f"s3://{BUCKET}/raw/shared.mp4",
                                  str(tmp_path / f"child{i}"), str(go)],
                                 cwd=REPO, env=child_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for i in range(2)]
    counting.pause_s = 0.02          # ~0.6 s per copy: the second asks while the first copies
    try:
        deadline = time.monotonic() + CHILD_TIME_LIMIT_S
        while not all((tmp_path / f"child{i}.ready").exists() for i in range(2)):
            assert time.monotonic() < deadline, "children did not start"
            assert all(c.poll() is None for c in children), children[0].communicate()
            time.sleep(0.05)
        before = counting.bytes
        go.touch()
        results = []
        for child in children:
            out, err = child.communicate(timeout=CHILD_TIME_LIMIT_S)
            assert child.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        counting.pause_s = 0.0
        for child in children:
            if child.poll() is None:
                child.kill()
    whole = hashlib.sha256(data).hexdigest()
    assert [r["sha256"] for r in results] == [whole, whole]
    assert counting.bytes - before == len(data)                 # one fetch between them
    assert min(r["seconds"] for r in results) > 0.3             # both waited for that fetch


def test_waiting_for_another_processs_copy_ends_at_the_time_limit_naming_the_url(
        store, cache):
    from curation.faces.decoding import DecodeError
    from curation.records import Reason
    from curation.storage import _VideoCache, filesystem, local_video

    _counting, client, _env = store
    put(client, "raw/stuck.mp4", 1 << 16, seed=40)
    url = f"s3://{BUCKET}/raw/stuck.mp4"
    etag = filesystem(url).info(url)["ETag"].strip('"')
    cache.mkdir(parents=True)
    lock = cache / f"{_VideoCache.key(url, f'ETag={etag}')}.lock"
    with open(lock, "w") as holder:              # another process copying it, forever
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(DecodeError) as raised, local_video(url, time_limit_s=1):
            pass
    assert 0.9 < time.monotonic() - started < 10
    assert raised.value.reason == Reason.VIDEO_UNREADABLE and url in raised.value.message


def test_a_copy_a_dead_process_left_half_done_is_resumed_and_verified(store, cache):
    from curation.storage import _VideoCache, filesystem, local_video

    counting, client, _env = store
    data = put(client, "raw/half.mp4", 1 << 18, seed=50)
    url = f"s3://{BUCKET}/raw/half.mp4"
    etag = filesystem(url).info(url)["ETag"].strip('"')
    entry = cache / _VideoCache.key(url, f"ETag={etag}")
    entry.mkdir(parents=True)
    (entry / "reserved").write_text(str(len(data)))
    (entry / ".half.mp4.part").write_bytes(data[:1000])        # its lock died with it
    before = counting.bytes
    with local_video(url, time_limit_s=60) as path:
        assert Path(path).read_bytes() == data
    assert counting.bytes - before == len(data) - 1000


def test_a_cache_size_that_is_not_a_size_is_one_clear_error(monkeypatch):
    from curation.storage import check_store_root, parse_byte_count

    assert parse_byte_count("16G") == 16 << 30 and parse_byte_count("512MiB") == 512 << 20
    assert parse_byte_count("1000") == 1000 and parse_byte_count("0") == 0
    for bad in ("lots", "-1", "inf", "G"):
        with pytest.raises(SourceError, match="MFHQ_VIDEO_CACHE_BYTES"):
            parse_byte_count(bad)
    monkeypatch.setenv("MFHQ_VIDEO_CACHE_BYTES", "a lot")
    with pytest.raises(SourceError, match="not a byte count"):
        check_store_root(f"s3://{BUCKET}/raw")
