"""The build with its sources and output on an S3 store against the same build on local disk.

    python bench/store_output.py                 # the demo corpus, 2 CPUs, 2 rounds
    python bench/store_output.py --rounds 3 --corpus /tmp/demo/corpus

One local S3 server (moto's, on 127.0.0.1, in this process) holds a copy of the corpus. Each
round runs, back to back and as the user would (`python -m curation.build_mfhq`, embedded Ray,
fresh output and scratch each time):

  local   --source KIND=<local folder> ... --output <local folder>
  store   --source KIND=s3://bench/corpus/KIND ... --output s3://bench/out-N

and prints both wall times, the store/local ratio per round and the median ratio (goal of
issue 24: <= 1.15), plus the objects and bytes the store build left. The store adds a listing
per source, one copy of each video per node (the node's video cache), the uploads of work
files, parts and tars and the reads of the work files. moto on the same 2 CPUs is slower per
request than S3 and competes with the build for the CPUs, so the ratio here is an upper bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

BUCKET = "bench"
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
          "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(args: list[str], env: dict, log: Path) -> float:
    started = time.monotonic()
    with open(log, "ab") as out:
        code = subprocess.run([sys.executable, "-m", "curation.build_mfhq", *args], cwd=REPO,
                              env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=3600).returncode
    if code != 0:
        raise SystemExit(f"build failed ({code}); see {log}")
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=None,
                        help="a demo corpus folder (default: generated in a temporary folder)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=2)
    ns = parser.parse_args(argv)

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)     # one line per request otherwise
    from mfhq.demo import DEMO_BUILD_FLAGS, build_corpus, demo_paths

    work = Path(tempfile.mkdtemp(prefix="mfhq-store-bench-"))
    if ns.corpus:
        corpus = Path(ns.corpus)
    else:
        paths = demo_paths(work / "demo")
        build_corpus(paths, seed=0)
        corpus = paths.corpus
    from curation.sources import SOURCE_KINDS

    kinds = sorted(p.name for p in corpus.iterdir() if p.is_dir() and p.name in SOURCE_KINDS)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, **S3_ENV, AWS_ENDPOINT_URL=endpoint, PYTHONPATH=str(REPO))
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(corpus.rglob("*")):
        if path.is_file() and not path.is_symlink():
            client.upload_file(str(path), BUCKET, f"corpus/{path.relative_to(corpus).as_posix()}")
    flags = [*DEMO_BUILD_FLAGS, "--no-progress", "--num-cpus", str(ns.num_cpus)]
    ratios = []
    try:
        for n in range(ns.rounds):
            local_args = [a for k in kinds for a in ("--source", f"{k}={corpus / k}")]
            store_args = [a for k in kinds for a in ("--source", f"{k}=s3://{BUCKET}/corpus/{k}")]
            local_s = _build([*local_args, "--output", str(work / f"local-{n}"), *flags],
                             dict(env, MFHQ_SCRATCH=str(work / f"scratch-l{n}")),
                             work / "local.log")
            store_s = _build([*store_args, "--output", f"s3://{BUCKET}/out-{n}", *flags],
                             dict(env, MFHQ_SCRATCH=str(work / f"scratch-s{n}")),
                             work / "store.log")
            objects = client.list_objects_v2(Bucket=BUCKET, Prefix=f"out-{n}/")
            stored = sum(o["Size"] for o in objects.get("Contents", []))
            ratios.append(store_s / local_s)
            print(f"round {n + 1}: local {local_s:6.1f} s   store {store_s:6.1f} s   "
                  f"store/local {store_s / local_s:.2f}   ({objects.get('KeyCount', 0)} objects, "
                  f"{stored / 1e6:.1f} MB written to the store)", flush=True)
    finally:
        server.stop()
    print(f"store/local median {statistics.median(ratios):.2f} over {len(ratios)} rounds "
          f"(goal <= 1.15; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}); logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
