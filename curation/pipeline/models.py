"""The build's models, checked on the driver before any Ray work, and described for run.json.

A missing weight file fails here with one `MissingWeightsError` that names the file, where to
put it and the offline alternative; nothing is substituted silently.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from curation.build_folder import file_sha256
from curation.pipeline.config import BuildConfig
from mfhq_faces.detection import DetectorKind

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
    from mfhq_faces.embedders import identity_model_file

    ident = config.identity
    path = identity_model_file(ident.model, config.analysis.insightface_dir(), ident.weights)
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
