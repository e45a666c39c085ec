"""The WebDataset pipeline over MFHQ-format shards: examples, URLs, corrupt data, eval pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _shard_helpers import brace_pattern, corrupt_samples, write_shards, write_tar

from training.config import DataConfig
from training.data import EvalStream, IdentityStream

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_shards(tmp_path_factory.mktemp("shards"), per_shard=2, size=48)


def small_config(**kw) -> DataConfig:
    values = dict(image_size=32, shuffle_buffer=4, samples_per_epoch=8, workers=0)
    values.update(kw)
    return DataConfig(**values)


def test_training_stream_yields_few_to_many_batches(shards):
    stream = IdentityStream(brace_pattern(shards), small_config(), batch_size=3, seed=0)
    batches = list(stream)
    assert len(batches) == stream.batches_per_epoch() == 3  # ceil(8 / 3): with_epoch sizing
    batch = batches[0]
    assert batch["inputs"].shape == (3, 3, 3, 32, 32) and batch["inputs"].dtype == torch.uint8
    assert batch["targets"].shape == (3, 8, 3, 32, 32)
    assert batch["masks"].shape == (3, 8, 1, 32, 32)
    assert set(batch["masks"].unique().tolist()) <= {0, 255}
    # with n_tgt = 8 the targets are the identity's 8 views, inputs among them
    for inputs, targets in zip(batch["inputs"], batch["targets"], strict=True):
        for image in inputs:
            assert any(torch.equal(image, t) for t in targets)


def test_stream_is_deterministic_and_resumable(shards):
    urls = [str(p) for p in shards]
    full = list(IdentityStream(urls, small_config(), 2, seed=5))
    again = list(IdentityStream(urls, small_config(), 2, seed=5))
    assert [b["keys"] for b in full] == [b["keys"] for b in again]
    resumed = IdentityStream(urls, small_config(), 2, seed=5)
    resumed.set_epoch(0, positions=[full[1]["position"]], batches=2)
    rest = list(resumed)
    assert [b["keys"] for b in rest] == [b["keys"] for b in full[2:]]
    torch.testing.assert_close(rest[0]["inputs"], full[2]["inputs"])


@pytest.mark.parametrize("form", ["path", "file", "pipe", "brace"])
def test_url_forms(shards, form):
    urls = {"path": str(shards[0]), "file": f"file:{shards[0]}",
            "pipe": f"pipe:cat {shards[0]}", "brace": brace_pattern(shards[:2])}[form]
    rows = list(EvalStream(urls, small_config(), batch_size=8))
    expected = 2 if form != "brace" else 4
    assert sum(len(b["keys"]) for b in rows) == expected


def test_corrupt_members_and_samples_are_skipped_and_counted(tmp_path, shards):
    bad = write_tar(tmp_path / "mfhq-train-000009.tar", corrupt_samples(size=48))
    truncated = tmp_path / "mfhq-train-000010.tar"
    truncated.write_bytes(shards[0].read_bytes()[:3000])
    stream = EvalStream([str(bad), str(truncated), str(shards[1])], small_config(), 16)
    batches = list(stream)
    keys = [k for b in batches for k in b["keys"]]
    assert "broken_jpeg-0" in keys          # one bad view dropped, the identity kept
    assert "bad_json-0" not in keys and "few_views-0" not in keys
    assert len([k for k in keys if k.startswith("test_")]) == 2  # the good shard is intact
    stats = stream.stats
    assert stats.members_skipped == 1
    # bad_json and few_views, plus the truncated shard: a read error or a partial sample
    assert stats.samples_skipped >= 2
    assert stats.samples_skipped + stats.shards_failed >= 3


def test_eval_stream_is_one_deterministic_pass(shards):
    urls = brace_pattern(shards)
    first = list(EvalStream(urls, small_config(), 3, n_in=5))
    second = list(EvalStream(urls, small_config(), 3, n_in=5))
    assert sum(len(b["keys"]) for b in first) == 8
    assert first[0]["inputs"].shape[1] == 5
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["targets"], b["targets"])


def test_eval_target_is_unseen_and_inputs_are_nested_over_k(shards):
    urls = brace_pattern(shards)
    by_k = {k: [b for b in EvalStream(urls, small_config(), 8, n_in=k)] for k in (1, 3, 7)}
    for k, batches in by_k.items():
        (batch,) = batches
        assert batch["targets"].shape[1] == 1 and batch["inputs"].shape[1] == k
        for inputs, target in zip(batch["inputs"], batch["targets"][:, 0], strict=True):
            assert not any(torch.equal(view, target) for view in inputs), "target is an input"
    # the same target for every k, and the inputs for k=1 and k=3 among those for k=7
    assert torch.equal(by_k[1][0]["targets"], by_k[7][0]["targets"])
    for small in (1, 3):
        for inputs, bigger in zip(by_k[small][0]["inputs"], by_k[7][0]["inputs"], strict=True):
            assert all(any(torch.equal(v, w) for w in bigger) for v in inputs)
