"""The paper's evaluation: faces measured and embedded by the build's own face toolkit
(`mfhq_faces`), the ArcFace ONNX, and generation from the target's pose without its pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mfhq_faces.stand_ins import write_arcface_stand_in
from training.blocks import patchify
from training.config import Stage, tiny
from training.eval import Evaluator, FaceScorer
from training.model import OmniID

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A real face (skimage's astronaut), cropped and scaled as a build crop is."""
    from skimage import data
    return np.asarray(Image.fromarray(data.astronaut()[10:230, 120:340]).resize((128, 128)))


@pytest.fixture(scope="module")
def face_frame() -> np.ndarray:
    """The same real face as a video frame shows it: upright in a wider picture, tilted."""
    from skimage import data
    frame = Image.fromarray(data.astronaut()).rotate(12, resample=Image.BILINEAR)
    return np.asarray(frame)


@pytest.fixture(scope="module")
def scorer():
    pytest.importorskip("mediapipe")
    from mfhq_faces.embedders import DlibEmbedder

    return FaceScorer(pose=True, embedder=DlibEmbedder())


def test_the_eval_measures_a_real_face_as_the_build_does(face_frame, scorer):
    """One real face through the build's path (detector box on the frame -> landmarks, pose,
    aligned crop, embedding) and the eval's (the crop alone, its template face box): the same
    person and the same pose, because both are the same `mfhq_faces` functions."""
    from mfhq_faces.detection import MediapipeFaceDetector
    from mfhq_faces.measure import measure_face

    detector = MediapipeFaceDetector()
    box = max(detector.detect(face_frame), key=lambda d: d.score).bbox
    detector.close()
    built = measure_face(face_frame, box, scorer.landmarker, 256)       # the build's call
    crop, crop_points = built.crop(face_frame), built.crop_points5()
    build_embedding = scorer.embedder.embed([crop], [crop_points])[0]
    seen = scorer.measure(crop)                                          # the eval's call
    eval_embedding = scorer.embedder.embed([crop], [seen.points5])[0]
    assert float(build_embedding @ eval_embedding) > 0.999
    np.testing.assert_allclose(seen.points5, crop_points, atol=4.0)
    # On one image the two paths differ only in where the face box comes from (a detector, or
    # the template): the same pose. (A frame's pose also holds the angle under which the camera
    # sees an off-centre face, so the crop's pose is compared with the crop's.)
    detected = MediapipeFaceDetector()
    crop_box = max(detected.detect(crop), key=lambda d: d.score).bbox
    detected.close()
    on_crop = measure_face(crop, crop_box, scorer.landmarker, 256)
    # (FaceMesh itself moves a few tenths of a pixel with the window it is given: ~3 degrees)
    assert max(abs(a - b) for a, b in zip(seen.pose, on_crop.pose, strict=True)) < 4.0
    assert abs(seen.pose[2]) < 4.0      # alignment turned the tilted face upright
    # the eval's full score of the crop against itself: one person, no pose error
    scores = scorer.score(crop[None], crop[None], (crop_points / 256)[None])
    assert scores["sims"][0] == pytest.approx(1.0, abs=1e-6) and scores["errors"] == [0.0]


def test_the_eval_tells_two_real_people_apart_with_the_builds_embedder(face, scorer):
    from skimage import data

    other = np.asarray(Image.fromarray(data.astronaut()[10:230, 120:340][:, ::-1]).resize(
        (128, 128)))
    person = _demo_person_crop(128)
    same = scorer.score(face[None], other[None], np.full((1, 5, 2), np.nan))["sims"][0]
    different = scorer.score(face[None], person[None], np.full((1, 5, 2), np.nan))["sims"][0]
    assert same > different


def test_arcface_onnx_loads_through_insightface_and_embeds_eval_faces(face, tmp_path):
    arcface = FaceScorer(write_arcface_stand_in(tmp_path / "w600k_r50.onnx"), pose=False)
    scores = arcface.score(np.stack([face, face]), np.stack([face, face[:, ::-1].copy()]),
                           np.full((2, 5, 2), np.nan))
    assert scores["sims"][0] == pytest.approx(1.0, abs=1e-5) and scores["sims"][1] < 0.9999
    with pytest.raises(FileNotFoundError, match="w600k_r50.onnx"):
        FaceScorer(str(tmp_path / "missing" / "w600k_r50.onnx"))


def _demo_person_crop(side: int) -> np.ndarray:
    """Another real person: insightface's Tom Hanks portrait, cut round the face."""
    from pathlib import Path

    import insightface

    path = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"
    image = np.asarray(Image.open(path).convert("RGB"))
    h, w = image.shape[:2]
    s = min(h, w)
    return np.asarray(Image.fromarray(image[:s, (w - s) // 2:(w + s) // 2]).resize((side, side)))


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
