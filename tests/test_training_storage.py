"""The trainer on an object store (moto's real S3 API on 127.0.0.1): shards streamed from
`s3://` brace patterns through fsspec, checkpoints written to and resumed from an `s3://` --out,
and `mfhq eval|encode --checkpoint s3://...`."""

from __future__ import annotations

import json

import pytest
import torch
from _s3_helpers import s3_server  # noqa: F401  (fixture)
from _shard_helpers import write_shards

from training import checkpoint as ckpt
from training import storage
from training.config import tiny
from training.train import train

torch.set_num_threads(1)
pytest.importorskip("s3fs")


def test_checkpoints_on_s3_are_listed_loaded_and_pruned_like_local_ones(s3_server, tmp_path):  # noqa: F811 (the fixture)
    bucket = s3_server.bucket("ckpt-unit")
    out = f"s3://{bucket}/run"
    assert ckpt.list_checkpoints(out) == [] and ckpt.load_latest(out) is None
    for step in (1, 2, 3):
        ckpt.atomic_save({"format": ckpt.CHECKPOINT_FORMAT, "step": step,
                          "w": torch.full((4,), float(step))}, ckpt.checkpoint_path(out, step))
    assert [str(p).rsplit("/", 1)[-1] for p in ckpt.list_checkpoints(out)] == [
        "checkpoint-00000001.pt", "checkpoint-00000002.pt", "checkpoint-00000003.pt"]
    latest = ckpt.load_latest(out)
    assert latest["step"] == 3 and torch.equal(latest["w"], torch.full((4,), 3.0))
    ckpt.prune(out, keep=1)
    assert len(ckpt.list_checkpoints(out)) == 1
    with pytest.raises(ckpt.MissingCheckpointError, match="checkpoint not found"):
        ckpt.load(f"s3://{bucket}/run/checkpoint-00000009.pt")


def test_a_killed_upload_leaves_no_object_and_the_previous_checkpoint(s3_server):  # noqa: F811 (the fixture)
    bucket = s3_server.bucket("ckpt-kill")
    run = storage.RunDir(f"s3://{bucket}/run")
    run.write_bytes("checkpoint-00000001.pt", b"first")

    def dies_halfway(f):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("killed during save")

    with pytest.raises(KeyboardInterrupt):
        run.write("checkpoint-00000002.pt", dies_halfway)
    assert run.names() == ["checkpoint-00000001.pt"]


@pytest.mark.slow
def test_trainer_streams_s3_brace_shards_and_resumes_from_an_s3_checkpoint(s3_server, tmp_path):  # noqa: F811 (the fixture)
    bucket = s3_server.bucket("mfhq")
    local = write_shards(tmp_path / "shards", per_shard=2, size=32)   # 4 shards
    for path in local:
        s3_server.upload(path, bucket, f"shards/train/{path.name}")
    urls = f"s3://{bucket}/shards/train/mfhq-train-{{000000..000003}}.tar"

    def config(out: str):
        c = tiny()
        c.shards, c.out, c.max_steps, c.ckpt_every = urls, out, 6, 3
        c.data.image_size, c.data.shuffle_buffer, c.data.n_tgt = 32, 4, 2
        c.log_every, c.batch_size = 1, 2
        return c

    first = train(config(f"s3://{bucket}/runs/a"), progress=False)
    assert first["checkpoint"] == f"s3://{bucket}/runs/a/checkpoint-00000006.pt"
    a = storage.RunDir(f"s3://{bucket}/runs/a")
    seen = json.loads(a.read_bytes("data-rank0.json"))
    assert set(seen["shards_seen"]) <= {u.replace("{000000..000003}", f"{i:06d}")
                                        for u in [urls] for i in range(4)}
    assert seen["shards_seen"] and all(u.startswith("s3://") for u in seen["shards_seen"])
    # a second run continues from a copy of step 3's checkpoint, all on the store
    s3_server.client().copy_object(
        Bucket=bucket, Key="runs/b/checkpoint-00000003.pt",
        CopySource={"Bucket": bucket, "Key": "runs/a/checkpoint-00000003.pt"})
    resumed = config(f"s3://{bucket}/runs/b")
    resumed.resume = True
    train(resumed, progress=False)

    def rows(run: storage.RunDir) -> dict[int, dict]:
        lines = run.read_bytes("metrics.jsonl").decode().splitlines()
        return {r["step"]: r for r in map(json.loads, lines)}
    expected, got = rows(a), rows(storage.RunDir(f"s3://{bucket}/runs/b"))
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_eval_and_encode_read_a_checkpoint_and_test_shards_at_s3_urls(s3_server, tmp_path,  # noqa: F811
                                                                      capsys):
    from PIL import Image

    from training.encode import main as encode_main
    from training.eval import main as eval_main

    bucket = s3_server.bucket("mfhq-eval")
    shard = write_shards(tmp_path / "shards", per_shard=2, size=32)[0]
    test = write_shards(tmp_path / "test", per_shard=4, size=32, split="test", seed=2)[0]
    s3_server.upload(test, bucket, "shards/test/mfhq-test-000000.tar")
    config = tiny()
    config.shards, config.out, config.max_steps = str(shard), f"s3://{bucket}/run", 1
    config.data.image_size, config.data.n_tgt = 32, 2
    checkpoint = train(config, progress=False)["checkpoint"]
    capsys.readouterr()
    assert eval_main(["--checkpoint", checkpoint, "--shards",
                      f"s3://{bucket}/shards/test/mfhq-test-{{000000..000000}}.tar",
                      "--n-inputs", "3", "--no-pose", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert row["samples"] == 4 and row["weights"] == "raw"
    face = tmp_path / "face.png"
    Image.new("RGB", (40, 40), (120, 90, 80)).save(face)
    assert encode_main([str(face), "--checkpoint", checkpoint,
                        "--out", str(tmp_path / "ids.pt")]) == 0
    assert torch.load(tmp_path / "ids.pt", weights_only=True)["tokens"].shape == (16, 64)
