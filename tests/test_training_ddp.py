"""Two processes under torchrun (CPU, gloo) train together and read disjoint shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _shard_helpers import brace_pattern, write_shards

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_processes_see_disjoint_shards(tmp_path):
    shards = write_shards(tmp_path / "shards", per_shard=2, size=32)  # 4 shards
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "training.train", "--preset", "tiny",
           "--shards", brace_pattern(shards), "--out", str(out), "--max-steps", "3",
           "--image-size", "32", "--batch-size", "2", "--n-tgt", "2", "--shuffle-buffer", "2",
           "--ckpt-every", "3", "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((out / f"data-rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["world"] for s in seen] == [2, 2]
    rank0, rank1 = set(seen[0]["shards_seen"]), set(seen[1]["shards_seen"])
    assert rank0 and rank1 and not rank0 & rank1
    assert rank0 | rank1 <= {str(p) for p in shards}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and rows[-1]["loss"] > 0
    assert (out / "checkpoint-00000003.pt").is_file()
