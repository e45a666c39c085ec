"""The build's identity-check settings (`--identity-*`); the embedders are `mfhq_faces.embedders`."""

from __future__ import annotations

from dataclasses import dataclass

from mfhq_faces.embedders import DUPLICATE_DISTANCE, SAME_PERSON_DISTANCE, IdentityModel


@dataclass
class IdentityConfig:
    """The identity checks (`curation.pipeline.identity_check`) and the embeddings they use."""

    model: str = IdentityModel.ARCFACE    # IdentityModel
    weights: str | None = None            # ArcFace ONNX (default: under --insightface-root)
    # Faces embedded per track of a clip, spread evenly over it (0: every usable face). A track
    # is one person by construction (boxes linked frame to frame), so a sample of it tells who
    # it is; the faces between two embedded ones belong to the same track.
    embeddings_per_track: int = 16
    same_person_distance: float | None = None   # cosine distance; None: the model's default
    # A person dominates an identity when they have at least this many times the faces of the
    # next person; otherwise the identity is dropped as no_dominant_person.
    dominant_ratio: float = 1.5
    duplicate_distance: float | None = None     # between identity means; None: model default
    # keep cross-split duplicates (record their group only) instead of removing the minority
    keep_cross_split_duplicates: bool = False

    @property
    def enabled(self) -> bool:
        return self.model != IdentityModel.NONE

    def same_person(self) -> float:
        if self.same_person_distance is not None:
            return float(self.same_person_distance)
        return SAME_PERSON_DISTANCE[IdentityModel(self.model)]

    def duplicate(self) -> float:
        if self.duplicate_distance is not None:
            return float(self.duplicate_distance)
        return DUPLICATE_DISTANCE[IdentityModel(self.model)]
