"""Kill and resume: builds SIGKILLed (driver and every Ray process) at watched moments and
restarted with the same arguments end byte-identical to an undisturbed build.

Moments are found by watching the output folder, never by sleeping: before any output, right
after the plan is written (enumeration rows being written), when the first shard appears while
others are being built, and when every shard is there (finalize). The demo corpus is cut to
three identities, one per shard, so the whole file stays a few minutes on 2 CPUs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from _reliability_helpers import (
    kill_build,
    manifest_rows,
    planned_shards,
    shard_hashes,
    small_build_args,
    start_build,
    temporaries,
    visible_problems,
    wait_for,
)

# whole builds (and, for clusters, Ray nodes started here): the full suite only
pytestmark = pytest.mark.slow



def _run_to_end(args: list[str], log: Path) -> None:
    proc = start_build(args, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


def _tars(output: Path) -> list[Path]:
    return sorted((output / "shards").glob("*/mfhq-*.tar"))


@pytest.fixture(scope="module")
def baseline(small_build):
    output, _, _ = small_build
    assert len(planned_shards(output)) >= 3, "the kill moments need at least 3 shards"
    return small_build


def _assert_same_as_baseline(output: Path, baseline) -> None:
    from curation.audit.verify import VerifyConfig, verify_build

    _, hashes, rows = baseline
    assert shard_hashes(output) == hashes
    resumed = manifest_rows(output)
    for table, expected in rows.items():
        assert resumed[table] == expected, f"manifest {table} differs after resume"
    assert not temporaries(output)
    assert verify_build(VerifyConfig(output=str(output), progress=False)) == []


@pytest.mark.timeout(1200)
def test_killed_at_startup_after_planning_and_mid_shard_then_resumed(demo_corpus, baseline,
                                                                      tmp_path):
    paths, _ = demo_corpus
    output = tmp_path / "build"
    args = small_build_args(paths, output)
    log = tmp_path / "build.log"

    # 1. Before any output: nothing may be left behind.
    proc = start_build(args, log)
    time.sleep(1.0)   # only to let the interpreter start; nothing is observed here
    kill_build(proc)
    assert not output.exists() or not any(output.rglob("*.parquet"))

    # 2. Right after planning: plan.json is written, the enumeration part may be in flight.
    plan = output / "manifests" / "plan.json"
    proc = start_build(args, log)
    wait_for(proc, plan.exists, "plan.json")
    kill_build(proc)
    assert visible_problems(output) == []
    assert not _tars(output)

    # 3. Mid-shard: the first shard is in place, the others are being built or queued.
    proc = start_build(args, log)
    wait_for(proc, lambda: len(_tars(output)) >= 1, "the first shard")
    kill_build(proc)
    assert visible_problems(output) == []
    assert 1 <= len(_tars(output)) < len(planned_shards(output)), "not a mid-build moment"

    _run_to_end(args, log)
    _assert_same_as_baseline(output, baseline)
    run = json.loads((output / "manifests" / "run.json").read_text())
    assert run["shards"]["skipped_finished"] >= 1, "the resumed run rebuilt finished shards"


@pytest.mark.timeout(900)
def test_killed_during_finalize_then_resumed(demo_corpus, baseline, tmp_path):
    paths, _ = demo_corpus
    output = tmp_path / "build"
    args = small_build_args(paths, output)
    log = tmp_path / "build.log"
    proc = start_build(args, log)
    wait_for(proc, lambda: (output / "manifests" / "plan.json").exists()
             and len(_tars(output)) == len(planned_shards(output)), "every shard written")
    kill_build(proc)
    assert visible_problems(output) == []

    _run_to_end(args, log)
    _assert_same_as_baseline(output, baseline)
    run = json.loads((output / "manifests" / "run.json").read_text())
    assert run["shards"]["built_this_run"] == 0
