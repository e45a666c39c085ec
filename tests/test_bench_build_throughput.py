"""The throughput bench's smoke run (`bench/build_throughput.py --quick`), so that it cannot go
stale beside the pipeline it measures: it runs to its figures line on the demo corpus. It
asserts that every figure is measured, never how fast anything is (speed is for the bench)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow      # a real build, the floor and the naive baseline


@pytest.mark.timeout(900)
def test_the_quick_throughput_bench_runs_to_its_figures_on_the_demo_corpus(demo_corpus,
                                                                          tmp_path):
    paths, _ = demo_corpus
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "bench/build_throughput.py", "--quick", "--corpus", str(paths.corpus),
         "--workdir", str(tmp_path), "--workers", "2", "--floor-once", "--limit", "2",
         "--quality-model", "piqe"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=880)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = dict(item.split("=", 1) for line in result.stdout.splitlines()
                   if line.startswith("FIGURES ") for item in line.split()[1:])
    for name in ("floor_fps", "ours_fps", "startup_s", "whole_over_floor",
                 "analysis_per_frame_over_floor_2w", "idle_2w", "naive_over_ours"):
        assert name in figures and figures[name] != "nan", (name, result.stdout[-3000:])
    assert "build timeline, 2 worker(s): working phase" in result.stdout
