"""The GPU face bench's smoke run (`bench/gpu_faces.py --quick`), so that it cannot go stale
beside the wrappers it measures: on this CPU machine (the CPU onnxruntime wheel, no CUDA
provider) it prints the CPU rows of both models, says that no GPU provider is available and
exits 0. It asserts what the bench prints, never how fast anything is (speed is for the bench)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_quick_gpu_faces_bench_prints_the_cpu_rows_and_says_there_is_no_gpu_provider():
    import onnxruntime

    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers(), \
        "this test describes a machine without onnxruntime's CUDA provider"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "bench/gpu_faces.py", "--quick"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # The stand-ins are said to be what was measured.
    assert any("STAND-IN weights" in line for line in lines), result.stdout
    rows = [line.split() for line in lines if line.startswith(("scrfd ", "arcface "))]
    for where in (["cpu", "1", "thread"], ["cpu", "default", "threads"]):
        found = [r for r in rows if r[1:4] == where]
        # one SCRFD row and the ArcFace rows of the quick batches (1 and 8), each measured on
        # onnxruntime's CPU provider with a rate
        assert sorted((r[0], r[5]) for r in found) == [("arcface", "1"), ("arcface", "8"),
                                                      ("scrfd", "1")], result.stdout
        assert all(r[4] == "CPUExecutionProvider" for r in found), result.stdout
        assert all(float(r[6]) > 0 for r in found), result.stdout
    assert not any(r[1] == "gpu" for r in rows), result.stdout
    assert any(line.startswith("# no GPU provider:") for line in lines), result.stdout
    assert lines[-1].startswith("RESULT ") and "gpu=none" in lines[-1], result.stdout
