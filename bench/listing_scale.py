"""Listing and planning MFHQ's four datasets from a store (issue 24), on a real S3 API.

    python bench/listing_scale.py                  # --scale 0.05 (31,883 objects), projected
    python bench/listing_scale.py --scale 1        # the full 637,670 objects (upload: ~33 min)
    python bench/listing_scale.py --videos         # also: the cost of fetching videos per clip
    python bench/listing_scale.py --videos-only    # only that (seconds, no upload)

The tree is `bench/planning_scale.py`'s (the four datasets' metadata at `--scale` times the
released sizes, every video an empty object), uploaded to moto's S3 server, started here as its
own process on 127.0.0.1 (so the figures of the measuring process are the build's alone). Then a
fresh process, pinned to one core, lists each dataset prefix (`curation.sources.common.
build_index` of `s3://bench/<kind>`: ListObjectsV2 pages of 1,000 keys), enumerates it (the
adapters read the metadata objects), and plans (`plan_from_records`, plan.json), printing wall
seconds, CPU seconds and peak RSS per stage, and the projection to the full size: CPU and
memory are the build's own and scale with the entries; wall time also holds the server's time
per page (moto rescans its key table for every page, a real S3 answers a page in ~30-100 ms).
Goal at full size: under 5 minutes and under 2 GB on one core.

Uploading is moto's speed, not the build's: ~325 objects/s on 2 cores here, so the full size
takes ~33 minutes to set up; the default is a twentieth, and `--scale 1` is there for a machine
with the time.

`--videos` measures `curation.storage.local_video` for `--clips` clips cut from one raw
`--video-mb` download (CelebV-HQ / CelebV-Text keep many clips of one `<ytb_id>.mp4`): the object
bytes the server sent (counted by the server process itself) and seconds per clip, first with the
node's video cache off (`MFHQ_VIDEO_CACHE_BYTES=0`: each clip copies the whole video, as before
issue 24) and then on, printed against the clip's share of its video (a 10 s clip of a 20-minute
download: 1/120). Measured here (2 shared cores, moto on 127.0.0.1):

    --videos-only (64 MB, 6 clips)
    cache off: 64.0 MB fetched per clip = 120x the clip's share, 6.05 s for the 6 clips
    cache on:  10.7 MB fetched per clip =  20x the clip's share, 1.03 s (the video once)
    --videos-only --video-mb 8 --clips 120
    cache off:  8.0 MB fetched per clip = 120x the clip's share, 11.33 s for the 120 clips
    cache on:   0.07 MB fetched per clip =  1x the clip's share, 0.45 s

With the cache a video is fetched once per node, so the bytes per clip are the video over its
clips on that node: 1x the share when all 120 ten-second clips of a 20-minute download are cut.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "bench"):
    if str(folder) not in sys.path:
        sys.path.append(str(folder))

from planning_scale import FULL, PeakRSS, generate  # noqa: E402 - the same tree and sampler

KINDS = ["celebvhq", "celebvtext", "vfhq", "talkinghead1kh"]
BUCKET = "bench"
VIDEO_BUCKET = "bench-videos"
FULL_OBJECTS = 637_670
HOST = "127.0.0.1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}


COUNTS_PATH = "/_bench/object-bytes"


def serve(port: int) -> None:
    """moto's S3 app on 127.0.0.1:port, counting the bytes of the object GETs it answers
    (`GET COUNTS_PATH` returns them as JSON): the bytes a build fetched, as the store saw them."""
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    lock, sent = threading.Lock(), {"bytes": 0, "gets": 0}

    def counted(body):
        for chunk in body:
            with lock:
                sent["bytes"] += len(chunk)
            yield chunk

    def counting(environ, start_response):
        if environ["PATH_INFO"] == COUNTS_PATH:
            start_response("200 OK", [("Content-Type", "application/json")])
            with lock:
                return [json.dumps(sent).encode()]
        body = app(environ, start_response)
        # object reads only: a listing is a GET with a query string
        if environ["REQUEST_METHOD"] != "GET" or environ.get("QUERY_STRING"):
            return body
        with lock:
            sent["gets"] += 1
        return counted(body)

    make_server(HOST, port, counting, threaded=True).serve_forever()


def object_bytes(endpoint: str) -> int:
    import urllib.request

    with urllib.request.urlopen(endpoint + COUNTS_PATH, timeout=30) as answer:  # noqa: S310
        return json.loads(answer.read())["bytes"]


def start_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server (`serve`) in its own process on a free port of 127.0.0.1 (waits at
    most 60 s)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return server, f"http://{HOST}:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto server did not start within 60 s")


def upload(root: Path, endpoint: str, threads: int = 16) -> tuple[int, float]:
    """Every file under root as s3://bench/<relative path>; (objects, seconds)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != "generated.json"]
    started = time.perf_counter()

    def put(path: Path) -> None:
        client.put_object(Bucket=BUCKET, Key=path.relative_to(root).as_posix(),
                          Body=path.read_bytes())

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(put, files):
            pass
    return len(files), time.perf_counter() - started


def measure(prefix: str) -> list[dict]:
    """The stages on the store (this process): listing + enumeration per kind, then the plan."""
    from curation.pipeline.config import BuildConfig
    from curation.pipeline.plan import plan_from_records, plan_json_bytes
    from curation.sources import _ADAPTERS, group_identities
    from curation.sources.common import build_index

    sampler = PeakRSS()
    stages: list[dict] = []

    def timed(name: str, unit: str, count, fn):
        sampler.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        stages.append({"stage": name, "unit": unit, "entries": count(result),
                       "seconds": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                       "peak_rss": sampler.peak()})
        return result

    records = []
    for kind in KINDS:
        index = timed(f"list {kind}", "objects", lambda ix: ix.n_files(),
                      lambda kind=kind: build_index(f"{prefix}/{kind}"))
        records += timed(f"enumerate {kind}", "records", len,
                         lambda ix=index, kind=kind: list(_ADAPTERS[kind](ix)))
        del index
    plan = timed("plan", "identities", lambda p: len(p.identities),
                 lambda: plan_from_records(records, takedown=set(), test_fraction=0.02,
                                           identities_per_shard=256, limit=None,
                                           group_fn=group_identities))
    config = BuildConfig(sources=[(k, f"{prefix}/{k}") for k in KINDS])
    timed("plan.json", "bytes", len,
          lambda: plan_json_bytes(plan, config.config_hash(), config.to_json()))
    sampler.stop()
    return stages


def measure_in_child(prefix: str, env: dict) -> list[dict]:
    pin = ["taskset", "-c", "0"] if _has_taskset() else []
    out = subprocess.run([*pin, sys.executable, __file__, "--measure", prefix], check=True,
                         capture_output=True, text=True, timeout=3600, env=env, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _has_taskset() -> bool:
    from shutil import which

    return which("taskset") is not None


def report(stages: list[dict], scale: float, objects: int, upload_s: float) -> None:
    mb = 1 << 20
    print(f"{'stage':<26} {'entries':>9} {'unit':<10} {'wall s':>7} {'CPU s':>7} "
          f"{'peak RSS MB':>11}")
    for s in stages:
        print(f"{s['stage']:<26} {s['entries']:>9} {s['unit']:<10} {s['seconds']:>7.2f} "
              f"{s['cpu']:>7.2f} {s['peak_rss'] / mb:>11.0f}")
    wall = sum(s["seconds"] for s in stages)
    cpu = sum(s["cpu"] for s in stages)
    listing_wall = sum(s["seconds"] for s in stages if s["stage"].startswith("list "))
    listing_cpu = sum(s["cpu"] for s in stages if s["stage"].startswith("list "))
    peak = max(s["peak_rss"] for s in stages)
    baseline = stages[0]["peak_rss"]
    pages = sum(-(-s["entries"] // 1000) for s in stages if s["stage"].startswith("list "))
    full_cpu = cpu / scale
    full_mb = (baseline + (peak - baseline) / scale) / mb
    full_pages = -(-FULL_OBJECTS // 1000)
    print(f"{'total':<26} {'':>9} {'':<10} {wall:>7.2f} {cpu:>7.2f} {peak / mb:>11.0f}")
    print(f"upload: {objects} objects in {upload_s:.0f} s ({objects / upload_s:.0f}/s; the "
          f"full {FULL_OBJECTS} would take {FULL_OBJECTS / (objects / upload_s) / 60:.0f} min)")
    print(f"listing: {pages} pages, {listing_wall:.2f} s wall of which {listing_cpu:.2f} s "
          f"the build's CPU (the rest is the server's time per page)")
    print(f"projected to the full size: {full_cpu:.0f} CPU s of the build on one core, plus "
          f"{full_pages} list pages x the store's time per page (at 0.1 s: "
          f"{full_pages * 0.1:.0f} s) = {full_cpu + full_pages * 0.1:.0f} s (goal < 300 s: "
          f"{'met' if full_cpu + full_pages * 0.1 < 300 else 'missed'}); peak RSS "
          f"{full_mb:.0f} MB (goal < 2048 MB: {'met' if full_mb < 2048 else 'missed'})")
    print(f"FIGURES scale={scale} objects={objects} upload_s={upload_s:.1f} wall_s={wall:.2f} "
          f"cpu_s={cpu:.2f} peak_rss_mb={peak / mb:.0f} projected_cpu_s={full_cpu:.0f} "
          f"projected_rss_mb={full_mb:.0f}")


def measure_videos(endpoint: str, video_mb: int, clips: int) -> dict:
    """`clips` clips of one `video_mb` video through `local_video`, as `clips` analysis tasks
    of one node would ask for it: cache off, then on (a fresh cache); bytes and seconds."""
    import boto3

    from curation.storage import local_video

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=VIDEO_BUCKET)
    payload = os.urandom(video_mb << 20)
    client.put_object(Bucket=VIDEO_BUCKET, Key="raw/ytb_id.mp4", Body=payload)
    share = 10 / (20 * 60)        # a 10 s clip of a 20-minute raw download
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["MFHQ_SCRATCH"] = scratch
        os.environ["MFHQ_VIDEO_CACHE"] = str(Path(scratch) / "cache")
        for mode, bound in (("off", "0"), ("on", str(4 * len(payload)))):
            os.environ["MFHQ_VIDEO_CACHE_BYTES"] = bound
            before, times = object_bytes(endpoint), []
            for _ in range(clips):
                started = time.perf_counter()
                with local_video(f"s3://{VIDEO_BUCKET}/raw/ytb_id.mp4", time_limit_s=600) as path:
                    assert os.path.getsize(path) == len(payload)
                times.append(time.perf_counter() - started)
            per_clip = (object_bytes(endpoint) - before) / clips
            figures[mode] = {"mb_per_clip": per_clip / (1 << 20),
                             "share_x": per_clip / (share * len(payload)),
                             "first_s": times[0], "later_s": sorted(times[1:])[len(times) // 2 - 1]
                             if clips > 1 else times[0], "total_s": sum(times)}
            f = figures[mode]
            print(f"cache {mode}: {f['mb_per_clip']:.1f} MB fetched per clip = "
                  f"{f['share_x']:.0f}x the clip's share ({video_mb} MB video, {clips} clips); "
                  f"first clip {f['first_s']:.2f} s, later clips {f['later_s']:.3f} s (median), "
                  f"{f['total_s']:.2f} s in all")
    print(f"FIGURES videos video_mb={video_mb} clips={clips} "
          + " ".join(f"{m}_mb_per_clip={f['mb_per_clip']:.2f} {m}_share_x={f['share_x']:.1f} "
                     f"{m}_total_s={f['total_s']:.2f}" for m, f in figures.items()))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.05,
                        help="size relative to the real datasets (1 = 637,670 objects)")
    parser.add_argument("--workdir", default=None,
                        help="generate (or reuse) the tree here; default: a temporary folder")
    parser.add_argument("--videos", action="store_true",
                        help="also measure copying a video to node-local scratch per clip")
    parser.add_argument("--videos-only", action="store_true",
                        help="only the video measurement (no tree, no upload, no listing)")
    parser.add_argument("--video-mb", type=int, default=64)
    parser.add_argument("--clips", type=int, default=6, help="clips cut from the one video")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:      # the child: measure only, print JSON
        print(json.dumps(measure(args.measure)))
        return 0
    if args.serve:        # the server's process
        serve(args.serve)
        return 0
    os.environ.update(CREDENTIALS)
    if args.videos_only:
        server, endpoint = start_server()
        try:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            measure_videos(endpoint, args.video_mb, args.clips)
        finally:
            server.terminate()
            server.wait(timeout=30)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp) / f"scale-{args.scale:g}"
        if not (root / "generated.json").exists():
            counts = generate(root, args.scale)
            (root / "generated.json").write_text(json.dumps(counts))
        server, endpoint = start_server()
        try:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            objects, upload_s = upload(root, endpoint)
            print(f"scale {args.scale:g}: {objects} objects uploaded in {upload_s:.0f} s "
                  f"(full-size datasets: {sum(FULL.values())} clips)", flush=True)
            stages = measure_in_child(f"s3://{BUCKET}", dict(os.environ))
            report(stages, args.scale, objects, upload_s)
            if args.videos:
                measure_videos(endpoint, args.video_mb, args.clips)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
