"""Two processes under torchrun (CPU, gloo) train together, read disjoint shards, and resume
from rank 0's checkpoint on two 'nodes' that share no disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _shard_helpers import brace_pattern, write_shards

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_processes_see_disjoint_shards_and_evaluate_the_whole_test_set(tmp_path):
    shards = write_shards(tmp_path / "shards", per_shard=2, size=32)  # 4 shards
    test = write_shards(tmp_path / "test", per_shard=2, size=32, split="test", seed=5)  # 4 more
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "training.train", "--preset", "tiny",
           "--shards", brace_pattern(shards), "--out", str(out), "--max-steps", "3",
           "--image-size", "32", "--batch-size", "2", "--n-tgt", "2", "--shuffle-buffer", "2",
           "--ckpt-every", "3", "--no-progress", "--test-shards", brace_pattern(test),
           "--eval-samples", "8", "--ema-decay", "0.9"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((out / f"data-rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["world"] for s in seen] == [2, 2]
    rank0, rank1 = set(seen[0]["shards_seen"]), set(seen[1]["shards_seen"])
    assert rank0 and rank1 and not rank0 & rank1
    assert rank0 | rank1 <= {str(p) for p in shards}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "eval" not in r]
    assert train_rows[-1]["step"] == 3 and train_rows[-1]["loss"] > 0
    # each rank scored its 2 of the 4 test shards; the gathered rows cover all 8 identities,
    # on the EMA weights, as `mfhq eval` scores them
    evals = [r["eval"] for r in rows if "eval" in r]
    assert [e["n_in"] for e in evals] == [1, 3, 5, 7]
    assert all(e["samples"] == 8 and e["weights"] == "ema" for e in evals)
    assert (out / "checkpoint-00000003.pt").is_file()


def torchrun_node(node_rank: int, port: int, cwd: Path, args: list[str]) -> subprocess.Popen:
    """One 'node' of a 2-node job: its own working directory, so a relative --out is a disk
    the other node does not see (no shared filesystem)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
           "1", "--node_rank", str(node_rank), "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "training.train", *args]
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run_two_nodes(tmp_path: Path, name: str, args: list[str]) -> list[Path]:
    from _s3_helpers import free_port

    port = free_port()
    nodes = [torchrun_node(r, port, tmp_path / name / f"node{r}", args) for r in (0, 1)]
    for node in nodes:
        output, _ = node.communicate(timeout=600)
        assert node.returncode == 0, output[-3000:]
    return [tmp_path / name / f"node{r}" / "run" for r in (0, 1)]


@pytest.mark.slow
def test_two_nodes_without_a_shared_disk_resume_to_the_same_next_losses(tmp_path):
    """Rank 0 writes checkpoints on node 0's disk only; on --resume node 1 has no checkpoint,
    yet both ranks continue from rank 0's step 3 (its state broadcast), as if never stopped."""
    shards = write_shards(tmp_path / "shards", per_shard=2, size=32)  # 4 shards
    common = ["--preset", "tiny", "--stage", "joint", "--mtd-warmup-steps", "4",
              "--shards", brace_pattern(shards), "--out", "run", "--image-size", "32",
              "--batch-size", "2", "--n-tgt", "2", "--shuffle-buffer", "2", "--log-every", "1",
              "--ckpt-every", "3", "--no-progress", "--ema-decay", "0.9"]
    full = run_two_nodes(tmp_path, "full", common + ["--max-steps", "6"])
    assert not list(full[1].glob("checkpoint-*.pt"))           # node 1 never got one
    # the interrupted job: node 0 keeps step 3's checkpoint, node 1 has nothing
    resumed_dir = tmp_path / "resumed" / "node0" / "run"
    resumed_dir.mkdir(parents=True)
    shutil.copy(full[0] / "checkpoint-00000003.pt", resumed_dir)
    run_two_nodes(tmp_path, "resumed", common + ["--max-steps", "6", "--resume"])

    def rows(run: Path) -> dict[int, dict]:
        return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text()
                                          .splitlines()) if "eval" not in r}
    expected, got = rows(full[0]), rows(resumed_dir)
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        for key in ("loss", "mtd_loss", "flow_loss"):
            if key in expected[step]:
                assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-6)
    assert [got[s]["phase"] for s in (4, 5, 6)] == ["mtd_warmup", "joint", "joint"]
    final = torch.load(resumed_dir / "checkpoint-00000006.pt", weights_only=True)
    reference = torch.load(full[0] / "checkpoint-00000006.pt", weights_only=True)
    for key, value in reference["model"].items():
        assert torch.allclose(final["model"][key], value, rtol=1e-4, atol=1e-6), key
