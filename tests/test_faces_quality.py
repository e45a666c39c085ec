"""Quality scores through pyiqa: TOPIQ-face via its real loader with stand-in weights, PIQE."""

import cv2
import numpy as np
import pytest
from _faces_helpers import face_image

from curation.build_folder import file_sha256
from curation.faces.quality import (
    TOPIQ_FACE,
    TOPIQ_FACE_FILE,
    MissingWeightsError,
    QualityScorer,
    default_topiq_weights,
)
from curation.stand_in_models import write_topiq_stand_in


def face_crops(count=3, side=128):
    face = cv2.resize(face_image("astronaut")[150:650, 250:750], (side, side),
                      interpolation=cv2.INTER_AREA)
    return [np.roll(face, 3 * i, axis=1) for i in range(count)]


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_missing_weights_error_names_file_place_and_alternative(torch_home):
    with pytest.raises(MissingWeightsError) as error:
        QualityScorer(TOPIQ_FACE)
    message = str(error.value)
    assert TOPIQ_FACE_FILE in message and str(torch_home / "hub" / "pyiqa") in message
    assert "--quality-model piqe" in message


def test_topiq_loads_stand_in_from_pyiqa_cache_and_scores_batches(torch_home):
    path = write_topiq_stand_in(default_topiq_weights().parent)
    assert path == torch_home / "hub" / "pyiqa" / TOPIQ_FACE_FILE
    scorer = QualityScorer(TOPIQ_FACE, batch_size=2)
    assert scorer.model_name == TOPIQ_FACE
    assert scorer.weights_sha256 == file_sha256(path)
    crops = face_crops(2)
    scores = scorer.score(crops)
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    assert not scorer.lower_better and np.allclose(scorer.normalise(scores), scores)
    # batching does not change a crop's score
    assert scorer.score(crops[:1])[0] == pytest.approx(scores[0], rel=1e-4, abs=1e-5)


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    import torch

    wrong = tmp_path / "other.pth"
    torch.save({"params": {"fc.weight": torch.zeros(2, 2)}}, str(wrong))
    with pytest.raises(MissingWeightsError, match="not a TOPIQ-face checkpoint"):
        QualityScorer(TOPIQ_FACE, weights=str(wrong))


def test_piqe_is_normalised_to_higher_is_better():
    scorer = QualityScorer("piqe")
    clean = face_crops(1)[0]
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 40, clean.shape), 0, 255)
    raw = scorer.raw_score([clean, noisy.astype(np.uint8)])
    scores = scorer.normalise(raw)
    assert raw[0] < raw[1]              # PIQE itself: lower = better
    assert scores[0] > scores[1]        # ours: higher = better
    assert np.allclose(scores, (100 - raw) / 100)
    assert scorer.weights_path is None and scorer.model_name == "piqe"
