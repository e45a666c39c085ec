"""Helpers for the reliability tests: build subprocesses that can be SIGKILLed as a whole, and
comparisons of two builds (shard bytes, manifest rows, leftovers a reader could see)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMING_COLUMNS = ("analysis_seconds",)   # wall time per clip: the only field allowed to differ
# A small build of the demo corpus: 3 identities, one per shard, 2 CPUs.
SMALL_BUILD = ["--no-progress", "--num-cpus", "2", "--limit", "3", "--identities-per-shard", "1"]


def small_build_args(paths, output: Path) -> list[str]:
    """The demo build's arguments (`mfhq.demo`), made small and pointed at `output`."""
    from mfhq.demo import demo_build_args

    args = demo_build_args(paths, SMALL_BUILD)
    args[args.index("--output") + 1] = str(output)
    return args


def start_build(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m curation.build_mfhq ARGS` in its own session (so it can be killed whole)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_DEDUP_LOGS="0")
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "curation.build_mfhq", *args], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env)


def session_pids(sid: int) -> list[int]:
    """Processes of session `sid` (the build driver and every Ray process it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def kill_build(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGKILL the build's process group, then every process left in its session (Ray workers
    run in their own process groups), as a power cut would; wait until all are gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while (left := session_pids(proc.pid)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not session_pids(proc.pid), "processes of the killed build are still running"


def wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 400.0,
             poll: float = 0.02) -> None:
    """Poll until `condition()` is true; fail if the build exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the build exited ({proc.returncode}) before: {what}")
        if time.monotonic() > deadline:
            kill_build(proc)
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(poll)


def planned_shards(output: Path) -> list[str]:
    plan = json.loads((output / "manifests" / "plan.json").read_text())
    return [s["name"] for s in plan["plan"]["shards"]]


def shard_hashes(output: Path) -> dict[str, str]:
    from curation.build_folder import file_sha256

    shards = output / "shards"
    return {str(p.relative_to(shards)): file_sha256(p) for p in sorted(shards.glob("*/*.tar"))}


def manifest_rows(output: Path) -> dict[str, list[str]]:
    """Every manifest table as a sorted list of canonical JSON rows (order-independent)."""
    from curation import build_folder, manifests

    tables = {}
    for name in (*manifests.TABLES, "shards"):
        frame = build_folder.read_manifest(output / "manifests", name)
        frame = frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns])
        rows = [json.dumps(_plain(row), sort_keys=True, default=str)
                for row in frame.to_dict("records")]
        tables[name] = sorted(rows)
    return tables


def _plain(row: dict) -> dict:
    import numpy as np

    out = {}
    for key, value in row.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, float) and value != value:
            value = None
        out[key] = value
    return out


def visible_problems(output: Path) -> list[str]:
    """What a reader could trip over right now: a shard under its final name that is not
    complete (its parts do not record its sha256), or a Parquet part that does not read."""
    import pyarrow.parquet as pq

    from curation import manifests
    from curation.build_folder import file_sha256

    problems = []
    for tar in sorted((output / "shards").glob("*/mfhq-*.tar")):
        shard = str(tar.relative_to(output / "shards"))
        parts = manifests.part_paths(output / "manifests", shard)
        recorded = {manifests.part_shard_sha256(p) for p in parts.values()}
        if recorded != {file_sha256(tar)}:
            problems.append(f"{shard}: visible but its parts record {recorded}")
    for part in sorted((output / "manifests").glob("*/part-*.parquet")):
        try:
            pq.read_table(part)
        except Exception as err:  # noqa: BLE001
            problems.append(f"{part}: unreadable {err}")
    return problems


def temporaries(output: Path) -> list[str]:
    return sorted(str(p) for p in output.rglob(".*.tmp"))


def people_clips(corpus: Path) -> dict[str, list[Path]]:
    """Two real clips of each of three demo-corpus people (alice and carol from the folder
    layout, bob from CelebV-HQ), for small `folder` builds."""
    return {"alice": sorted((corpus / "folder" / "t1_face1").glob("clip_*.mp4"))[:2],
            "bob": sorted((corpus / "celebvhq").rglob("processed/58ZZttnFypV_*.mp4"))[:2],
            "carol": sorted((corpus / "folder").glob("*/clip_*.mp4"))[-2:]}


def write_folder_corpus(root: Path, corpus: Path, people: list[str]) -> Path:
    """A `folder` source at `root` with the clips of `people` (see people_clips)."""
    clips = people_clips(corpus)
    for person in people:
        files = clips[person]
        assert len(files) >= 2, f"demo corpus lacks the clips for {person}"
        (root / person).mkdir(parents=True)
        for i, src in enumerate(files):
            shutil.copyfile(src, root / person / f"clip_{i}.mp4")
    return root
