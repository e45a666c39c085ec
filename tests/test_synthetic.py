"""The procedural multi-view identity generator and its shards."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mfhq_contract import IMAGES_PER_IDENTITY, image_ext, mask_ext, sample_key
from training import synthetic
from training.synthetic import Part, ViewParams

SIZE = 32


def _frontal(yaw: float) -> ViewParams:
    return ViewParams(yaw=yaw, pitch=0.0, roll=0.0, light_azimuth=0.0, light_elevation=0.0)


def test_identity_is_a_function_of_its_id():
    first = synthetic.render_identity("synthetic:test:1", SIZE)
    again = synthetic.render_identity("synthetic:test:1", SIZE)
    other = synthetic.render_identity("synthetic:test:2", SIZE)
    assert synthetic.identity_params("synthetic:test:1") == synthetic.identity_params(
        "synthetic:test:1")
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(first, other, strict=True))


def test_views_spread_over_yaw():
    views = synthetic.spread_views("synthetic:test:spread")
    yaws = [v.yaw for v in views]
    assert len(views) == IMAGES_PER_IDENTITY
    assert yaws == sorted(yaws)
    assert yaws[0] < -synthetic.MAX_YAW / 2 and yaws[-1] > synthetic.MAX_YAW / 2


@pytest.mark.parametrize("identity", [f"synthetic:test:mark{i}" for i in range(6)])
def test_side_mark_is_seen_only_when_its_side_turns_to_the_camera(identity):
    params = synthetic.identity_params(identity)
    sign = params.mark_visible_yaw_sign

    def mark_pixels(yaw: float) -> int:
        return int((synthetic.render(params, _frontal(yaw), 48).parts == Part.MARK).sum())

    assert mark_pixels(sign * 65.0) > 0
    assert mark_pixels(-sign * 65.0) == 0
    assert mark_pixels(0.0) == 0


def test_masks_are_face_pixels_inside_the_image():
    for view in synthetic.render_identity("synthetic:test:mask", SIZE):
        assert view.mask.shape == (SIZE, SIZE) and view.image.shape == (SIZE, SIZE, 3)
        area = view.mask.mean()
        assert 0.15 < area < 0.8
        # the border rows/columns are background, so the whole face lies inside the frame
        assert not view.mask[0].any() and not view.mask[-1].any()
        assert not view.mask[:, 0].any() and not view.mask[:, -1].any()
        # hair and background are outside the mask (labels and mask may differ on edge pixels)
        outside = (view.parts == Part.BACKGROUND) | (view.parts == Part.HAIR)
        assert view.mask[outside].sum() <= 0.1 * view.mask.sum()
        assert view.mask[view.parts == Part.SKIN].mean() > 0.9


def test_landmarks_follow_yaw():
    params = synthetic.identity_params("synthetic:test:landmarks")
    left = synthetic.render(params, _frontal(-40.0), 64).landmarks5
    right = synthetic.render(params, _frontal(40.0), 64).landmarks5
    nose_left, nose_right = left[2][0], right[2][0]
    assert nose_right > 32 > nose_left  # yaw > 0 moves the nose to image right


def test_expression_changes_the_mouth_only_with_the_same_pose():
    params = synthetic.identity_params("synthetic:test:expr")
    closed = synthetic.render(params, _frontal(0.0), 64)
    opened = synthetic.render(params, dataclasses.replace(_frontal(0.0), mouth_open=1.0), 64)
    assert (opened.parts == Part.MOUTH).sum() > (closed.parts == Part.MOUTH).sum()
    np.testing.assert_array_equal(closed.mask, opened.mask)


def _write(tmp_path, seed=3, workers=1):
    config = synthetic.SyntheticConfig(out=tmp_path, identities=3, test_identities=2, size=SIZE,
                                       seed=seed, per_shard=2, workers=workers, progress=False)
    return synthetic.write_shards(config)


def test_shards_are_byte_identical_for_a_seed(tmp_path):
    first = _write(tmp_path / "a")
    second = _write(tmp_path / "b", workers=2)  # parallel rendering gives the same bytes
    assert [p.name for p in first["train"]] == ["mfhq-train-000000.tar", "mfhq-train-000001.tar"]
    assert len(first["test"]) == 1
    for a, b in zip(first["train"] + first["test"], second["train"] + second["test"],
                    strict=True):
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with tarfile.open(first["train"][0]) as tar:
        assert all(m.mtime == 0 for m in tar.getmembers())


def test_shards_parse_with_webdataset(tmp_path):
    paths = _write(tmp_path)
    urls = [str(p) for p in paths["train"] + paths["test"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == 5
    ids = set()
    for sample in samples:
        record = json.loads(sample["json"])
        ids.add(record["identity_id"])
        assert sample["__key__"] == sample_key(record["identity_id"]) == record["key"]
        assert record["crop_size"] == SIZE and len(record["images"]) == IMAGES_PER_IDENTITY
        assert {"yaw", "pitch", "roll", "quality", "quality_model"} <= set(record["images"][0])
        for i in range(IMAGES_PER_IDENTITY):
            image = Image.open(io.BytesIO(sample[image_ext(i)]))
            mask = np.asarray(Image.open(io.BytesIO(sample[mask_ext(i)])))
            assert image.size == (SIZE, SIZE) and image.mode == "RGB"
            assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 255}
    splits = [json.loads(s["json"])["split"] for s in samples]
    assert splits == ["train"] * 3 + ["test"] * 2
    assert len(ids) == 5


def test_cli_writes_shards(tmp_path):
    assert synthetic.main([str(tmp_path), "--identities", "1", "--test-identities", "1",
                           "--size", "16", "--quiet"]) == 0
    assert (tmp_path / "train" / "mfhq-train-000000.tar").is_file()
    assert (tmp_path / "test" / "mfhq-test-000000.tar").is_file()


def test_shards_round_trip_through_the_trainer_loader(tmp_path):
    from torch.utils.data import DataLoader

    from training.config import DataConfig
    from training.data import IdentityStream

    paths = _write(tmp_path)
    config = DataConfig(image_size=SIZE, n_in=3, n_tgt=8, shuffle_buffer=2, samples_per_epoch=4)
    stream = IdentityStream([str(p) for p in paths["train"]], config, batch_size=2, seed=0)
    batches = list(DataLoader(stream, batch_size=None))
    assert len(batches) == 2
    batch = batches[0]
    assert tuple(batch["inputs"].shape) == (2, 3, 3, SIZE, SIZE)
    assert tuple(batch["targets"].shape) == (2, 8, 3, SIZE, SIZE)
    assert tuple(batch["masks"].shape) == (2, 8, 1, SIZE, SIZE)
    face_fraction = (batch["masks"] > 127).float().mean().item()
    assert 0.15 < face_fraction < 0.8
    assert int(batch["stats"][0]) > 0  # samples_ok


def _bench_module():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "few_to_many.py"
    spec = importlib.util.spec_from_file_location("few_to_many_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def test_benchmark_probes_never_show_the_target_and_nest(tmp_path):
    bench = _bench_module()
    paths = _write(tmp_path)
    identities = bench.load_test_identities("::".join(str(p) for p in paths["test"]), SIZE)
    assert len(identities) == 2
    probes = bench.fixed_probes(identities, draws=3, num_patches=64, mask_ratio=0.95)
    again = bench.fixed_probes(identities, draws=3, num_patches=64, mask_ratio=0.95)
    for k in bench.K_VALUES:
        for probe, same in zip(probes[f"k={k}"], again[f"k={k}"], strict=True):
            assert probe.target_view not in probe.input_views and len(probe.input_views) == k
            assert probe.input_views == same.input_views
            assert int(probe.hidden.sum()) == round(0.95 * 64)
    for small, large in zip(probes["k=1"], probes["k=7"], strict=True):
        assert set(small.input_views) <= set(large.input_views)
    for probe in probes["wrong identity k=3"]:
        assert probe.input_identity != probe.target_identity
    for without, with_ in zip(probes["mark: inputs without it"], probes["mark: inputs with it"],
                              strict=True):
        marks = identities[without.target_identity].marks.flatten(1).sum(1)
        assert all(marks[v] == 0 for v in without.input_views)
        assert sum(marks[v] > 0 for v in with_.input_views) == 1
        assert marks[without.target_view] > 0
