"""ArcFace embeddings through insightface's real loader, with a stand-in ONNX."""

import numpy as np
import pytest
from _faces_helpers import face_image

from mfhq_faces.embedders import ArcFaceEmbedder
from mfhq_faces.stand_ins import write_arcface_stand_in, write_scrfd_stand_in


def test_stand_in_is_routed_to_arcface_and_gives_unit_embeddings(tmp_path):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = write_arcface_stand_in(tmp_path / "w600k_r50.onnx")
    assert isinstance(get_model(str(path), providers=["CPUExecutionProvider"]), ArcFaceONNX)
    embedder = ArcFaceEmbedder(path)
    crops = [face_image("astronaut")[100:612, 250:762], face_image("tom")[200:712, 200:712]]
    embeddings = embedder.embed(crops)
    assert embeddings.shape == (2, 512)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1])
    assert embedder.embed([]).shape == (0, 512)


def test_wrong_or_missing_model(tmp_path):
    with pytest.raises(ValueError, match="not an ArcFace"):
        ArcFaceEmbedder(write_scrfd_stand_in(tmp_path / "det.onnx"))
    with pytest.raises(FileNotFoundError, match="w600k_r50.onnx"):
        ArcFaceEmbedder(tmp_path / "missing.onnx")


# --- the offline recogniser (real dlib weights from face-recognition-models) ----------------

def test_the_dlib_weights_are_found_without_the_pkg_resources_warning_of_their_package():
    import subprocess
    import sys

    code = ("import sys; from mfhq_faces.embedders import dlib_model_paths; "
            "print(all(p.is_file() for p in dlib_model_paths()), 'pkg_resources' in sys.modules)")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.split() == ["True", "False"], done.stderr


@pytest.fixture(scope="module")
def dlib_analyzer():
    from curation.faces.analysis import AnalysisConfig, FaceAnalyzer
    from curation.faces.identity import IdentityConfig

    config = AnalysisConfig(face_detector="mediapipe", min_face_size=64, crop_size=256,
                            sample_fps=10.0)
    with FaceAnalyzer(config, IdentityConfig(model="dlib", embeddings_per_track=4)) as analyzer:
        yield analyzer


def _clip_of(tmp_path, name: str, frames):
    from _faces_helpers import clip_for, write_video

    return clip_for(write_video(tmp_path / f"{name}.mp4", frames))


def _person_frames(name: str, count: int = 8):
    import cv2
    from _faces_helpers import rotate

    base = cv2.resize(face_image(name), (512, 512), interpolation=cv2.INTER_AREA)
    return [rotate(base, 3.0 * i - count) for i in range(count)]


def test_analysis_embeds_a_bounded_sample_of_each_track_with_dlib(dlib_analyzer, tmp_path):
    result = dlib_analyzer.analyze_clip(_clip_of(tmp_path, "astronaut", _person_frames("astronaut")))
    assert result.status == "ok", result.message
    embedded = [c for c in result.usable if c.embedding is not None]
    assert 1 <= len(embedded) <= 4 < len(result.usable)
    vectors = np.stack([c.embedding for c in embedded])
    assert vectors.shape[1] == 128
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert {c.embedding_model for c in embedded} == {"dlib"}
    # evenly spread over the clip: the first and the last usable face are among them
    frames = sorted(c.frame_index for c in result.usable)
    assert {frames[0], frames[-1]} <= {c.frame_index for c in embedded}


def test_dlib_tells_two_real_people_apart_and_recognises_one_across_frames(dlib_analyzer,
                                                                            tmp_path):
    from mfhq_faces.embedders import SAME_PERSON_DISTANCE, IdentityModel, normalise_rows

    people = {}
    for name in ("astronaut", "tom"):
        result = dlib_analyzer.analyze_clip(_clip_of(tmp_path, name, _person_frames(name)))
        people[name] = np.stack([c.embedding for c in result.usable if c.embedding is not None])
    means = {k: normalise_rows(v.mean(axis=0, keepdims=True))[0] for k, v in people.items()}
    limit = SAME_PERSON_DISTANCE[IdentityModel.DLIB]
    for name, vectors in people.items():
        assert (1 - vectors @ means[name]).max() < limit      # one person across frames
    assert 1 - means["astronaut"] @ means["tom"] > 2 * limit  # two people, clearly apart


def test_missing_arcface_names_the_file_and_the_offline_alternative(tmp_path):
    from curation.errors import MissingWeightsError
    from mfhq_faces.embedders import make_embedder

    with pytest.raises(MissingWeightsError) as error:
        make_embedder("arcface", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "models" / "buffalo_l" / "w600k_r50.onnx") in message
    assert "--identity-model dlib" in message


def test_arcface_stand_in_runs_through_the_analyzer_from_the_insightface_root(tmp_path):
    from curation.faces.analysis import AnalysisConfig, FaceAnalyzer
    from curation.faces.identity import IdentityConfig

    root = tmp_path / "insightface"
    write_arcface_stand_in(root / "models" / "buffalo_l" / "w600k_r50.onnx")
    config = AnalysisConfig(face_detector="mediapipe", min_face_size=64, crop_size=256,
                            sample_fps=10.0, insightface_root=str(root))
    with FaceAnalyzer(config, IdentityConfig(model="arcface", embeddings_per_track=0)) as analyzer:
        result = analyzer.analyze_clip(_clip_of(tmp_path, "a", _person_frames("astronaut", 4)))
    assert result.usable and all(c.embedding is not None and len(c.embedding) == 512
                                 and c.embedding_model == "arcface" for c in result.usable)


def test_a_hintless_clip_with_two_similar_people_keeps_both_tracks_for_the_identity_check(
        dlib_analyzer, tmp_path):
    import cv2

    # two real faces at the same size side by side: "largest face" cannot tell who it is about
    astronaut = cv2.resize(face_image("astronaut")[42:442, 240:640], (320, 320),
                           interpolation=cv2.INTER_AREA)
    tom = cv2.resize(face_image("tom")[182:842, 182:842], (320, 320),
                     interpolation=cv2.INTER_AREA)
    frames = [np.hstack([astronaut, tom])] * 6
    result = dlib_analyzer.analyze_clip(_clip_of(tmp_path, "pair", frames))
    assert result.status == "ok", result.message
    tracks = {c.track for c in result.usable}
    assert tracks == {0, 1} and all(c.contested for c in result.usable)
    means = {t: np.mean([c.embedding for c in result.usable
                         if c.track == t and c.embedding is not None], axis=0) for t in tracks}
    assert float(1 - means[0] @ means[1] / np.linalg.norm(means[0]) / np.linalg.norm(means[1])) \
        > 0.1                                                 # two different people
