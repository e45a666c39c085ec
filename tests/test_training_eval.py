"""The paper's evaluation: 5-point ArcFace alignment, FaceMesh head pose, the ArcFace ONNX, and
generation from the target's pose without its pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training import face_metrics as fm
from training.blocks import patchify
from training.config import Stage, tiny
from training.eval import Evaluator
from training.model import OmniID
from training.stand_ins import write_arcface_stand_in

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A real face (skimage's astronaut), cropped and scaled as a build crop is."""
    from skimage import data
    return np.asarray(Image.fromarray(data.astronaut()[10:230, 120:340]).resize((128, 128)))


@pytest.fixture(scope="module")
def mesh():
    pytest.importorskip("mediapipe")
    found = fm.FaceMesh()
    yield found
    found.close()


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = np.radians(20), 1.7, np.array([5.0, -3.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = fm.similarity_transform(src, src @ rot.T + shift)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_alignment_puts_the_landmarks_on_the_arcface_template(face, mesh):
    points = fm.five_points(mesh.landmarks(face))
    aligned = fm.align(face, points)
    assert aligned.shape == (112, 112, 3)
    again = fm.five_points(mesh.landmarks(aligned))
    # the warp moves every landmark where the fitted similarity sends it ...
    forward = fm.similarity_transform(points, fm.ARCFACE_TEMPLATE)
    np.testing.assert_allclose(again, points @ forward[:, :2].T + forward[:, 2], atol=2.5)
    # ... which is the template up to this face's own proportions (a least-squares fit)
    assert np.linalg.norm(again - fm.ARCFACE_TEMPLATE, axis=1).mean() < 6.0


def test_pose_error_is_zero_for_a_face_and_follows_an_in_plane_rotation(face, mesh):
    side = face.shape[0]
    pose = fm.head_pose(mesh.landmarks(face), side, side)
    assert fm.pose_error(pose, pose) == 0.0
    turned = np.asarray(Image.fromarray(face).rotate(15, resample=Image.BILINEAR,
                                                     fillcolor=(128, 128, 128)))
    turned_pose = fm.head_pose(mesh.landmarks(turned), side, side)
    assert turned_pose[2] - pose[2] == pytest.approx(15.0, abs=4.0)   # counter-clockwise roll
    assert 11.0 < fm.pose_error(pose, turned_pose) < 22.0
    mirrored_pose = fm.head_pose(mesh.landmarks(face[:, ::-1].copy()), side, side)
    # mirroring negates yaw and roll (up to the estimator's noise) and keeps pitch
    assert abs(mirrored_pose[0] + pose[0]) < 6.0 and abs(mirrored_pose[2] + pose[2]) < 6.0
    assert abs(mirrored_pose[1] - pose[1]) < 6.0


def test_arcface_onnx_loads_with_onnxruntime_and_embeds_aligned_faces(face, mesh, tmp_path):
    arcface = fm.ArcFace(write_arcface_stand_in(tmp_path / "w600k_r50.onnx"))
    aligned = fm.align(face, fm.five_points(mesh.landmarks(face)))
    other = fm.align(face[:, ::-1].copy(), fm.five_points(mesh.landmarks(face[:, ::-1].copy())))
    embeddings = arcface.embed(np.stack([aligned, aligned, other]))
    assert embeddings.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    assert embeddings[0] @ embeddings[1] == pytest.approx(1.0, abs=1e-6)
    assert embeddings[0] @ embeddings[2] < 0.9999
    with pytest.raises(FileNotFoundError, match="w600k_r50.onnx"):
        fm.ArcFace(tmp_path / "missing" / "w600k_r50.onnx")


def eval_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(0, 256, (2, 3, 3, 32, 32), generator=g, dtype=torch.uint8),
            "targets": torch.randint(0, 256, (2, 1, 3, 32, 32), generator=g, dtype=torch.uint8),
            "masks": torch.full((2, 1, 1, 32, 32), 255, dtype=torch.uint8),
            "landmarks": torch.rand(2, 1, 5, 2, generator=g)}


def joint_model() -> OmniID:
    torch.manual_seed(0)
    config = tiny()
    config.stage, config.data.image_size = Stage.JOINT, 32
    model = OmniID(config).eval()
    for p in model.flow.parameters():  # open the zero-initialised gates and pose path
        torch.nn.init.normal_(p, std=0.05)
    return model


def generate(model: OmniID, batch: dict) -> dict[str, torch.Tensor]:
    evaluator = Evaluator(model_config(model), pose=False, sample_steps=3)
    with torch.no_grad():
        return evaluator.batch_values(model, batch, torch.Generator().manual_seed(0))[1]


def model_config(model: OmniID):
    config = tiny()
    config.stage, config.data.image_size = model.stage, 32
    return config


def test_flow_generation_follows_the_pose_and_never_sees_the_target():
    model = joint_model()
    batch = eval_batch()
    faces = generate(model, batch)
    repainted = dict(batch, targets=255 - batch["targets"])
    torch.testing.assert_close(generate(model, repainted)["flow"], faces["flow"])
    moved = dict(batch, landmarks=batch["landmarks"].flip(-1))
    assert not torch.allclose(generate(model, moved)["flow"], faces["flow"])


def test_mtd_generation_sees_only_the_visible_patches():
    model = joint_model()
    batch = eval_batch()
    faces = generate(model, batch)["mtd"]
    hidden = patchify(faces, 8) != patchify(batch["targets"][:, 0].float() / 127.5 - 1, 8)
    hidden = hidden.all(-1)                          # predicted patches differ from the target
    visible_share = 1 - hidden.float().mean().item()
    assert visible_share == pytest.approx(0.05, abs=0.04)   # 5 % of 16 patches: 1 visible
    # repaint every pixel of the target: the prediction of the hidden patches follows only the
    # visible ones, so changing the hidden patches alone changes nothing in them
    target = batch["targets"].clone()
    flat_hidden = hidden.view(2, 16)
    pixels = patchify(target[:, 0].float(), 8)
    pixels[flat_hidden] = 255 - pixels[flat_hidden]
    from training.blocks import unpatchify
    repainted = dict(batch, targets=unpatchify(pixels, 8, 3, 32, 32).to(torch.uint8)[:, None])
    again = generate(model, repainted)["mtd"]
    torch.testing.assert_close(patchify(again, 8)[flat_hidden], patchify(faces, 8)[flat_hidden])
