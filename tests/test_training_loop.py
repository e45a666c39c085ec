"""The trainer end to end on CPU: overfitting, exact resume, reliability, CLIs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _shard_helpers import write_shards

from training import checkpoint as ckpt
from training.config import Stage, tiny
from training.encode import main as encode_main
from training.engine import StepRunner
from training.eval import main as eval_main
from training.train import build_parser, train
from training.train import main as train_main

torch.set_num_threads(1)
FOUR = ["astronaut", "tom_hanks", "t1_ross", "t1_phoebe"]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_shards")
    write_shards(root / "train", per_shard=2, size=32)
    write_shards(root / "test", names=FOUR, per_shard=4, size=32, split="test", seed=9)
    # identical views: a pure memorisation check of the whole encoder -> decoder path
    write_shards(root / "overfit", names=FOUR, per_shard=4, size=32, strength=0.0)
    return root


def small_config(shards: str, out: Path, steps: int):
    config = tiny()
    config.shards, config.out, config.max_steps = shards, str(out), steps
    config.data.image_size, config.data.shuffle_buffer = 32, 4
    config.log_every, config.ckpt_every = 1, 1000
    return config


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_overfits_four_identities(shard_dir, tmp_path):
    config = small_config(str(shard_dir / "overfit" / "mfhq-train-000000.tar"), tmp_path, 250)
    config.data.n_tgt, config.mtd.loss = 4, "l2"   # the paper's 95 % masking
    config.optim.lr, config.optim.warmup_steps, config.optim.min_lr_ratio = 5e-3, 5, 0.01
    train(config, progress=False)
    losses = [r["loss"] for r in rows(tmp_path) if r.get("loss") is not None]
    first, last = losses[0], float(np.mean(losses[-10:]))
    assert last < first / 10, (first, last)


@pytest.mark.parametrize("stage", [Stage.MTD, Stage.JOINT])
def test_resume_gives_the_same_next_steps(shard_dir, tmp_path, stage):
    """Also across the joint stage's switch from the MTD warm-up to both losses (step 5)."""
    urls = str(shard_dir / "train" / "mfhq-train-{000000..000003}.tar")

    def config(out: Path):
        c = small_config(urls, out, 6)
        c.stage, c.ckpt_every, c.data.n_tgt = stage, 3, 4
        c.objective.mtd_warmup_steps = 4
        return c
    train(config(tmp_path / "a"), progress=False)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "checkpoint-00000003.pt", tmp_path / "b")
    resumed = config(tmp_path / "b")
    resumed.resume = True
    train(resumed, progress=False)
    expected = {r["step"]: r for r in rows(tmp_path / "a") if r["step"] > 3}
    got = {r["step"]: r for r in rows(tmp_path / "b")}
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        assert got[step].keys() == expected[step].keys()
        for key in {"loss", "mtd_loss", "flow_loss"} & expected[step].keys():
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-6)
    if stage == Stage.JOINT:
        assert [got[s]["phase"] for s in (4, 5, 6)] == ["mtd_warmup", "joint", "joint"]


def test_checkpoints_load_with_weights_only(shard_dir, tmp_path):
    config = small_config(str(shard_dir / "train" / "mfhq-train-000000.tar"), tmp_path, 2)
    config.data.n_tgt = 2
    config.optim.ema_decay = 0.9
    train(config, progress=False)
    state = torch.load(tmp_path / "checkpoint-00000002.pt", weights_only=True)
    assert state["step"] == 2 and state["config"]["preset"] == "tiny"
    assert isinstance(state["rng"][0]["torch"], torch.Tensor)
    assert state["ema"] is not None


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "step": 1}, ckpt.checkpoint_path(tmp_path, 1))
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "step": 2,
                          "w": torch.zeros(1000)}, ckpt.checkpoint_path(tmp_path, 2))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000001.pt"]
    assert ckpt.load_latest(tmp_path)["step"] == 1
    # a torn file (e.g. a crashed disk) is passed over for the previous good one
    ckpt.checkpoint_path(tmp_path, 3).write_bytes(b"PK\x03\x04 torn")
    assert ckpt.load_latest(tmp_path)["step"] == 1


class NanOnCommand(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, inputs, targets, masks, landmarks=None, phase=None):
        return {"loss": self.w * inputs.float().mean() * (float("nan") if masks.any() else 1.0)}


def test_non_finite_steps_are_skipped_then_stop_training():
    model = NanOnCommand()
    config = tiny()
    runner = StepRunner(model, torch.optim.AdamW(model.parameters(), lr=0.1), config.optim,
                        max_nonfinite=3, device=torch.device("cpu"))
    for g in runner.optimizer.param_groups:
        g["base_lr"] = 0.1

    def batch(bad: bool) -> dict:
        return {"inputs": torch.ones(1, 1), "targets": torch.ones(1, 1),
                "masks": torch.full((1, 1), bad)}
    assert runner(batch(False), 1.0).applied
    before = model.w.detach().clone()
    result = runner(batch(True), 1.0)
    assert not result.applied and torch.equal(model.w.detach(), before)
    assert runner(batch(False), 1.0).applied      # a good step resets the count
    runner(batch(True), 1.0)
    runner(batch(True), 1.0)
    with pytest.raises(RuntimeError, match="3 steps in a row"):
        runner(batch(True), 1.0)


def test_cli_flow_stage_eval_and_encode(shard_dir, tmp_path, capsys):
    urls = str(shard_dir / "train" / "mfhq-train-{000000..000003}.tar")
    test_urls = str(shard_dir / "test" / "mfhq-test-000000.tar")
    common = ["--preset", "tiny", "--shards", urls, "--image-size", "32", "--batch-size", "2",
              "--n-tgt", "2", "--no-progress", "--shuffle-buffer", "2"]
    assert train_main(common + ["--out", str(tmp_path / "mtd"), "--max-steps", "2",
                                "--mask-ratio", "0.9"]) == 0
    mtd_ckpt = tmp_path / "mtd" / "checkpoint-00000002.pt"
    assert train_main(common + ["--stage", "flow", "--out", str(tmp_path / "flow"),
                                "--init", str(mtd_ckpt), "--max-steps", "2",
                                "--test-shards", test_urls]) == 0
    flow_state = ckpt.load(tmp_path / "flow" / "checkpoint-00000002.pt")
    mtd_state = ckpt.load(mtd_ckpt)
    assert flow_state["stage"] == "flow" and "mtd.head.weight" not in flow_state["model"]
    assert "flow.head.weight" in flow_state["model"]
    assert any("eval" in r for r in rows(tmp_path / "flow"))
    capsys.readouterr()

    assert eval_main(["--checkpoint", str(mtd_ckpt), "--shards", test_urls,
                      "--n-inputs", "1", "3", "5", "7", "--max-samples", "2", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["n_in"] for r in lines] == [1, 3, 5, 7]
    assert all(r["samples"] == 2 and r["loss"] > 0 for r in lines)
    assert eval_main(["--checkpoint", str(tmp_path / "flow" / "checkpoint-00000002.pt"),
                      "--shards", test_urls, "--n-inputs", "3", "--max-samples", "2",
                      "--json"]) == 0
    flow_row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert flow_row["stage"] == "flow" and flow_row["flow_l1_face"] > 0

    images = tmp_path / "faces"
    images.mkdir()
    from PIL import Image
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    assert encode_main([str(images), "--checkpoint", str(mtd_ckpt),
                        "--out", str(tmp_path / "ids.pt")]) == 0
    saved = torch.load(tmp_path / "ids.pt", weights_only=True)
    assert saved["tokens"].shape == (16, 64) and len(saved["images"]) == 3
    assert encode_main([str(images / "0.png"), "--checkpoint", str(mtd_ckpt),
                        "--out", str(tmp_path / "ids.npy")]) == 0
    assert np.load(tmp_path / "ids.npy").shape == (16, 64)
    del mtd_state


def test_help_lists_the_contract_flags():
    text = build_parser().format_help()
    for flag in ("--preset", "--stage", "--shards", "--test-shards", "--out", "--init",
                 "--resume", "--max-steps", "--batch-size", "--n-in", "--n-tgt", "--mask-ratio"):
        assert flag in text
