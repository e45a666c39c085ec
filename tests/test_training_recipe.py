"""The paper's recipe end to end on CPU: MTD warm-up, then the joint MTD + flow objective, for the
pixel DiT and for FLUX + IP-Adapter (tiny random weights written here), with the evaluation
(ArcFace ID similarity, head-pose error, k = 1, 3, 5, 7) during and after training. Shards come
from training's own synthetic generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mfhq_faces.stand_ins import write_arcface_stand_in
from training import synthetic
from training.eval import main as eval_main
from training.stand_ins import (
    TINY_FLUX,
    write_prompt_stand_in,
    write_tiny_flux,
)
from training.train import main as train_main

torch.set_num_threads(1)
K = [1, 3, 5, 7]
WARMUP, STEPS = 20, 60


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe")
    synthetic.write_shards(synthetic.SyntheticConfig(
        out=root / "shards", identities=8, test_identities=4, size=32, per_shard=4,
        progress=False))
    flux = write_tiny_flux(root / "flux", text_encoders=False)
    write_prompt_stand_in(flux / "prompt.safetensors", TINY_FLUX, tokens=8)
    return {"root": root, "flux": flux, "arcface": write_arcface_stand_in(root / "arcface.onnx"),
            "train": root / "shards" / "train" / "mfhq-train-{000000..000001}.tar",
            "test": root / "shards" / "test" / "mfhq-test-000000.tar"}


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def check_eval_rows(eval_rows: list[dict]) -> None:
    assert [r["n_in"] for r in eval_rows] == K
    for row in eval_rows:
        assert row["samples"] == 4 and row["stage"] == "joint"
        for decoder in ("mtd", "flow"):
            assert -1.0 <= row[f"{decoder}_id_similarity"] <= 1.0
            # FaceMesh finds few faces in barely trained generations of synthetic heads: the
            # error is over the pairs it found both faces in, and null with none
            pairs = row[f"{decoder}_pose_pairs"]
            assert (row[f"{decoder}_pose_error"] is None) == (pairs == 0)


@pytest.mark.parametrize("decoder", ["dit", "flux"])
def test_mtd_warm_up_then_joint_training_lowers_both_losses_and_evaluates(assets, tmp_path,
                                                                          decoder, capsys):
    out = tmp_path / decoder
    args = ["--preset", "tiny", "--stage", "joint", "--shards", str(assets["train"]),
            "--out", str(out), "--image-size", "32", "--batch-size", "4", "--n-tgt", "4",
            "--shuffle-buffer", "4", "--max-steps", str(STEPS), "--mtd-warmup-steps",
            str(WARMUP), "--lr", "3e-3", "--warmup-steps", "5", "--log-every", "1",
            "--ckpt-every", "1000", "--no-progress", "--test-shards", str(assets["test"]),
            "--eval-every", "30", "--eval-samples", "4", "--eval-arcface", str(assets["arcface"]),
            "--ema-decay", "0.9"]
    if decoder == "flux":
        args += ["--decoder", "flux", "--flux", str(assets["flux"]),
                 "--prompt-embeds", str(assets["flux"] / "prompt.safetensors")]
    assert train_main(args) == 0
    logged = rows(out)
    steps = [r for r in logged if "eval" not in r]
    assert [r["phase"] for r in steps] == ["mtd_warmup"] * WARMUP + ["joint"] * (STEPS - WARMUP)
    assert all("flow_loss" not in r for r in steps[:WARMUP])
    mtd = [r["mtd_loss"] for r in steps]
    flow = [r["flow_loss"] for r in steps[WARMUP:]]
    assert np.mean(mtd[-10:]) < 0.8 * np.mean(mtd[:10]), mtd
    assert np.mean(flow[-10:]) < np.mean(flow[:10]), flow
    evals = [r for r in logged if "eval" in r]
    assert [r["step"] for r in evals] == [30] * 4 + [STEPS] * 4      # eval_every and the end
    check_eval_rows([r["eval"] for r in evals[-4:]])
    capsys.readouterr()

    checkpoint = out / f"checkpoint-{STEPS:08d}.pt"
    common = ["--checkpoint", str(checkpoint), "--shards", str(assets["test"]),
              "--arcface", str(assets["arcface"]), "--max-samples", "4"]
    assert eval_main(common + ["--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    check_eval_rows(printed)
    # one evaluation: `mfhq eval` of the final checkpoint gives the final in-training numbers,
    # both on the EMA encoder
    for row, during in zip(printed, [r["eval"] for r in evals[-4:]], strict=True):
        assert row["weights"] == during["weights"] == "ema"
        for key in ("loss", "mtd_l1_face", "flow_l1_face", "flow_id_similarity"):
            assert row[key] == pytest.approx(during[key], rel=1e-4, abs=1e-5), key
    assert eval_main(common) == 0
    table = capsys.readouterr().out
    assert "ID similarity" in table and "pose error" in table and "reconstruction" in table
    assert "encoder weights:" in table


def test_a_flux_run_resumes_after_its_flux_folder_moved_when_told_the_new_place(assets, tmp_path,
                                                                                capsys):
    import shutil

    flux = shutil.copytree(assets["flux"], tmp_path / "flux")
    out = tmp_path / "run"

    def args(steps: int, flux_dir: Path | None) -> list[str]:
        given = ([] if flux_dir is None else
                 ["--flux", str(flux_dir), "--prompt-embeds", str(flux_dir / "prompt.safetensors")])
        return ["--preset", "tiny", "--stage", "joint", "--shards", str(assets["train"]),
                "--out", str(out), "--image-size", "32", "--batch-size", "2", "--n-tgt", "2",
                "--shuffle-buffer", "4", "--max-steps", str(steps), "--mtd-warmup-steps", "0",
                "--ckpt-every", "1", "--log-every", "1", "--no-progress", "--decoder", "flux",
                "--resume", *given]
    assert train_main(args(2, flux)) == 0
    moved = flux.rename(tmp_path / "elsewhere")
    capsys.readouterr()
    assert train_main(args(3, None)) == 2            # the checkpoint's own paths are gone
    assert "FLUX weights not found" in capsys.readouterr().err
    capsys.readouterr()
    assert train_main(args(3, moved)) == 0
    assert f"flow.flux_path = {moved}" in capsys.readouterr().out
    assert [r["step"] for r in rows(out)] == [1, 2, 3]
    # the resumed run saved the new place; after one more move, eval is told it as train was
    again = moved.rename(tmp_path / "again")
    assert eval_main(["--checkpoint", str(out / "checkpoint-00000003.pt"), "--shards",
                      str(assets["test"]), "--max-samples", "2", "--no-pose", "--sample-steps",
                      "2", "--flux", str(again), "--prompt-embeds",
                      str(again / "prompt.safetensors")]) == 0
