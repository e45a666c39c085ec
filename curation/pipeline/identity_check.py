"""One person per identity: the identity checks on face embeddings (`mfhq_faces.embedders`).

Within an identity (`decide_identity`, pure; `check_identity` applies it to an identity's faces
in the shard assembly). An identity is a source id (`yt:<ytb_id>` merged over CelebV-HQ,
CelebV-Text and every TalkingHead-1KH tube of that video; `vfhq:<vid>:P<n>`; `folder:<name>`),
and an interview puts host and guest under one id. Each clip track (one person by construction:
its boxes are linked frame to frame, or fit the metadata's box) is a *unit*; its embedded faces
give it a mean embedding. Units are grouped into people by average-linkage clustering of their
means at the model's same-person distance (`IdentityConfig.same_person`). The person with the
most faces is kept when they have at least `dominant_ratio` times the faces of the next one;
the other people's faces are rejected as `identity_mismatch`, and a clip left without usable
faces is skipped with that reason. When no person dominates, the identity is dropped as
`no_dominant_person` (the build will not guess who it is about). Faces carry their cosine
distance to the kept person's mean (`identity_distance`), and the identity its consistency: the
largest such distance over the kept person's embedded faces (`identity_consistency`).

Across identities (`resolve_duplicates`, after every shard is written): celebrities appear under
several ids, and a VFHQ `vfhq:<vid>:P<n>` can be a `yt:<vid>`. Each kept identity's mean
embedding is compared with every other's (`duplicate_pairs`: exact cosine search in blocks, see
bench/identity.py for its cost at 134k identities); pairs closer than the model's duplicate
distance are joined into groups, recorded in the identities' `duplicate_group` column so that
trainers can de-duplicate. Splits are drawn per source video before any face is seen, so one
person can sit in both; a group that spans both splits keeps its members of the split that has
more of them (train on a tie) and the others leave the build with the shared shard rewrite
(`curation.pipeline.removal.rewrite_without`, the one `mfhq takedown` uses), each recorded in
`manifests/takedowns.parquet` with reason `duplicate_across_splits` (salted like every removal,
so a resume never brings it back and `mfhq verify` checks it is gone).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from curation import build_folder as bf
from curation import manifests
from curation.faces.identity import IdentityConfig
from curation.records import Reason, Status
from mfhq_faces.embedders import normalise_rows

# --- within one identity -----------------------------------------------------------------------


@dataclass(frozen=True)
class FaceInput:
    """What the decision needs of one usable face: its clip, track and embedding (or None)."""

    clip: str                            # clip key, e.g. "celebvhq:<clip_id>"
    track: int = 0
    embedding: Any = None                # (dim,) unit vector, or None when not embedded
    contested: bool = False              # a track of a hint-less clip with two people


@dataclass
class IdentityDecision:
    """Which usable faces of an identity are its person's; the others with their reason."""

    rejected: dict[int, Reason] = field(default_factory=dict)   # face index -> reason
    drop_reason: Reason | None = None
    message: str = ""
    n_persons: int = 0
    centroid: np.ndarray | None = None   # the kept person's unit mean embedding
    distances: dict[int, float] = field(default_factory=dict)   # face index -> to centroid
    clip_reasons: dict[str, tuple[Reason, str]] = field(default_factory=dict)

    @property
    def consistency(self) -> float | None:
        """Max cosine distance of the kept person's embedded faces to their mean."""
        kept = [d for i, d in self.distances.items() if i not in self.rejected]
        return float(max(kept)) if kept and self.drop_reason is None else None


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1.0 - np.clip(np.asarray(a, np.float64) @ np.asarray(b, np.float64).T, -1.0, 1.0)


def group_units(means: np.ndarray, threshold: float) -> np.ndarray:
    """Person label per unit: average-linkage clusters of unit means cut at `threshold`
    (cosine distance). Labels are 0.. in order of first appearance."""
    n = len(means)
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    distances = np.clip(cosine_distances(means, means), 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    tree = linkage(squareform(distances, checks=False), method="average")
    raw = fcluster(tree, t=threshold, criterion="distance")
    order = {label: i for i, label in enumerate(dict.fromkeys(raw.tolist()))}
    return np.array([order[label] for label in raw.tolist()], dtype=np.int64)


def decide_identity(faces: Sequence[FaceInput], config: IdentityConfig) -> IdentityDecision:
    """The identity check of one identity's usable faces (see the module docstring).

    Faces without embeddings follow their unit (clip, track); a unit with no embedded face, or
    an identity without any (identity model `none`), is kept as it is."""
    decision = IdentityDecision()
    units: dict[tuple[str, int], list[int]] = {}
    for i, face in enumerate(faces):
        units.setdefault((face.clip, face.track), []).append(i)
    embedded = {key: [i for i in members if faces[i].embedding is not None]
                for key, members in units.items()}
    contested = {key for key, members in units.items() if faces[members[0]].contested}
    keys = [key for key in units if embedded[key] and key not in contested]
    if not keys:
        for key in contested:   # nothing else tells who the identity is
            for i in units[key]:
                decision.rejected[i] = Reason.AMBIGUOUS_TARGET
        return decision
    vectors = {i: np.asarray(faces[i].embedding, np.float32).reshape(-1)
               for key in keys for i in embedded[key]}
    means = normalise_rows(np.stack([np.mean([vectors[i] for i in embedded[key]], axis=0)
                                     for key in keys]))
    labels = group_units(means, config.same_person())
    weight = np.zeros(labels.max() + 1)
    for key, label in zip(keys, labels, strict=True):
        weight[label] += len(units[key])
    order = np.argsort(-weight, kind="stable")
    decision.n_persons = int(len(weight))
    dominant = int(order[0])
    kept_keys = [key for key, label in zip(keys, labels, strict=True) if label == dominant]
    kept_vectors = np.stack([vectors[i] for key in kept_keys for i in embedded[key]])
    decision.centroid = normalise_rows(kept_vectors.mean(axis=0, keepdims=True))[0]
    for i, vector in vectors.items():
        decision.distances[i] = float(cosine_distances(vector[None], decision.centroid[None])[0, 0])
    if len(weight) > 1 and weight[dominant] < config.dominant_ratio * weight[order[1]]:
        decision.drop_reason = Reason.NO_DOMINANT_PERSON
        decision.message = (f"{len(weight)} people among its faces; the most frequent has "
                            f"{int(weight[dominant])} faces, the next {int(weight[order[1]])} "
                            f"(needs {config.dominant_ratio:g}x to be taken for the identity)")
        return decision
    for key, label in zip(keys, labels, strict=True):
        if label != dominant:
            for i in units[key]:
                decision.rejected[i] = Reason.IDENTITY_MISMATCH
    _resolve_contested(faces, units, embedded, contested, vectors, decision,
                       config.same_person())
    # The kept person is every face not rejected (a contested clip's winner included): its mean
    # and each embedded face's distance to it are what the manifests record and verify checks.
    kept = np.stack([v for i, v in vectors.items() if i not in decision.rejected])
    decision.centroid = normalise_rows(kept.mean(axis=0, keepdims=True))[0]
    decision.distances = {i: float(cosine_distances(v[None], decision.centroid[None])[0, 0])
                          for i, v in vectors.items()}
    if decision.rejected:
        decision.message = (f"{len(weight)} people among its faces; kept the one with "
                            f"{int(weight[dominant])} of {int(weight.sum())} faces")
    return decision


def _resolve_contested(faces, units, embedded, contested, vectors, decision, threshold) -> None:
    """Per hint-less two-people clip: the track whose mean matches the kept person (within
    `threshold`) while the other does not is the clip's person; otherwise the clip stays
    ambiguous_target."""
    for i, face in enumerate(faces):
        if face.contested and face.embedding is not None:
            vectors[i] = np.asarray(face.embedding, np.float32).reshape(-1)
    by_clip: dict[str, list[tuple[str, int]]] = {}
    for key in sorted(contested):
        by_clip.setdefault(key[0], []).append(key)
    for keys in by_clip.values():
        distance = {}
        for key in keys:
            if embedded[key]:
                mean = normalise_rows(np.mean([vectors[i] for i in embedded[key]], axis=0)[None])
                distance[key] = float(cosine_distances(mean, decision.centroid[None])[0, 0])
        matching = [key for key, d in distance.items() if d <= threshold]
        for key in keys:
            reason = None if matching == [key] else (
                Reason.NOT_TARGET_PERSON if len(matching) == 1 else Reason.AMBIGUOUS_TARGET)
            for i in units[key]:
                if reason is not None:
                    decision.rejected[i] = reason


def check_identity(faces: list, rejected: list, clip_rows: list[dict], config: IdentityConfig
                   ) -> tuple[list, list, IdentityDecision]:
    """`decide_identity` applied to an identity's usable faces (objects with `.clip`, a
    ClipRecord, and `.cand`, a FaceCandidate): returns (faces kept for selection, rejected faces
    with their `cand.reason` set, the decision); clip rows (dicts of the clips manifest) whose
    usable faces all left become `skipped` with the reason. Sets `cand.identity_distance`."""
    keys = [f"{face.clip.source}:{face.clip.clip_id}" for face in faces]
    decision = decide_identity([FaceInput(key, face.cand.track, face.cand.embedding,
                                          bool(getattr(face.cand, "contested", False)))
                                for key, face in zip(keys, faces, strict=True)], config)
    for i, face in enumerate(faces):
        face.cand.identity_distance = decision.distances.get(i)
    if not decision.rejected:
        return faces, rejected, decision
    kept = []
    for i, face in enumerate(faces):
        reason = decision.rejected.get(i)
        if reason is None:
            kept.append(face)
        else:
            face.cand.status, face.cand.reason = Status.REJECTED, reason.value
            rejected.append(face)
    left = {key for i, key in enumerate(keys) if i not in decision.rejected}
    reasons: dict[str, list[Reason]] = {}
    for i, key in enumerate(keys):
        if i in decision.rejected and key not in left:
            reasons.setdefault(key, []).append(decision.rejected[i])
    for row in clip_rows:
        key = f"{row['source']}:{row['clip_id']}"
        if key in reasons and row["status"] == Status.OK:
            reason = max(set(reasons[key]), key=lambda r: (reasons[key].count(r), r.value))
            row["status"], row["reason"] = Status.SKIPPED, reason.value
            row["message"] = CLIP_MESSAGES[reason].format(detail=decision.message)
            row["n_candidates"] = 0
            decision.clip_reasons[key] = (reason, row["message"])
    return kept, rejected, decision


CLIP_MESSAGES = {
    Reason.IDENTITY_MISMATCH: "its faces are another person than the identity's own ({detail})",
    Reason.AMBIGUOUS_TARGET: "two people of similar size and no box hint, and neither (or both) "
                             "matches the identity's other clips",
    Reason.NOT_TARGET_PERSON: "two people of similar size; the identity's person is not in it",
}


def dropped_selection(decision: IdentityDecision):
    """A finished, failed `Selection` for an identity the check dropped (the assembly then
    records it like any other dropped identity: its faces and row carry the reason)."""
    from curation.pipeline.selection import Choice, Selection

    return Selection(Choice([], decision.drop_reason.value, decision.message), None, [], {})


def face_columns(cand) -> dict[str, Any]:
    """The identity columns of a faces-manifest row of one FaceCandidate."""
    embedding = getattr(cand, "embedding", None)
    distance = getattr(cand, "identity_distance", None)
    return {
        "track": int(getattr(cand, "track", 0) or 0),
        "embedding": None if embedding is None
        else np.asarray(embedding, np.float32).reshape(-1).tolist(),
        "identity_model": getattr(cand, "embedding_model", None) if embedding is not None
        else None,
        "identity_distance": None if distance is None else float(distance),
    }


def identity_columns(decision: IdentityDecision | None, kept: bool,
                     face_rows: Sequence[dict] = ()) -> dict[str, Any]:
    """The identity columns of an identities-manifest row; `face_rows` are the identity's rows
    of the faces manifest, whose person mean a kept identity records (`person_mean`)."""
    if decision is None or decision.centroid is None:    # nothing embedded: not checked
        return {"n_persons": None, "identity_consistency": None, "mean_embedding": None}
    mean = person_mean(face_rows) if kept else None
    return {"n_persons": decision.n_persons,
            "identity_consistency": decision.consistency if kept else None,
            "mean_embedding": None if mean is None else mean.tolist()}


# --- across identities -------------------------------------------------------------------------

# Faces of a kept identity whose embeddings describe its person: usable and not rejected.
PERSON_FACE_REASONS = (None, Reason.NOT_SELECTED.value, Reason.NOT_SCORED.value)


def person_mean(face_rows: Sequence[dict]) -> np.ndarray | None:
    """The unit mean embedding of an identity's person faces (`PERSON_FACE_REASONS`, with an
    embedding) from its faces-manifest rows; None when none is embedded. Recorded once per kept
    identity (`mean_embedding`), so the pass across identities reads one vector per identity."""
    vectors = [np.asarray(row["embedding"], np.float32) for row in face_rows
               if row.get("embedding") is not None and _reason(row) in PERSON_FACE_REASONS]
    if not vectors:
        return None
    return normalise_rows(np.stack(vectors).mean(axis=0, keepdims=True))[0]


def _reason(row: dict) -> str | None:
    reason = row.get("reason")
    return reason if isinstance(reason, str) else None    # pandas may hold a null as NaN


def identity_means(faces) -> tuple[list[str], np.ndarray]:
    """(identity ids, unit mean embeddings) from a faces frame (identity_id, embedding, reason):
    `person_mean` per identity, for builds whose identities manifest predates `mean_embedding`."""
    ids, means = [], []
    for identity_id, group in faces.groupby("identity_id", sort=True):
        mean = person_mean(group[["embedding", "reason"]].to_dict("records"))
        if mean is not None:
            ids.append(str(identity_id))
            means.append(mean)
    if not means:
        return [], np.zeros((0, 0), np.float32)
    return ids, np.stack(means)


def kept_identity_means(manifests_dir) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """(kept identities' rows, their ids sorted, (n, dim) unit means in that order) from the
    identities manifest: one vector per identity, read batch by batch straight from Arrow into
    one preallocated float32 array (no Python floats, no second copy), so the driver's memory is
    O(identities) and about one array of means. Kept identities of an older build without
    `mean_embedding` get theirs from their faces (`identity_means`)."""
    columns = ["identity_id", "split", "shard", "status", "duplicate_group"]
    idents = bf.read_manifest(manifests_dir, "identities", columns)
    kept = idents[idents["status"] == Status.KEPT]
    ids = sorted(str(i) for i in kept["identity_id"])
    position = {identity_id: i for i, identity_id in enumerate(ids)}
    means: np.ndarray | None = None
    filled = np.zeros(len(ids), bool)
    for batch in bf.iter_manifest_batches(manifests_dir, "identities",
                                          ["identity_id", "status", "mean_embedding"]):
        recorded = batch.column("mean_embedding")
        mask = pc.and_(pc.equal(batch.column("status"), Status.KEPT.value), recorded.is_valid())
        if not pc.any(mask).as_py():
            continue
        vectors = recorded.filter(mask)
        rows = [position[str(i)] for i in batch.column("identity_id").filter(mask).to_pylist()]
        values = vectors.flatten().to_numpy(zero_copy_only=False)
        if means is None:
            means = np.empty((len(ids), len(values) // len(rows)), np.float32)
        means[rows] = values.reshape(len(rows), -1)
        filled[rows] = True
    missing = {ids[i] for i in np.flatnonzero(~filled)}
    if missing:
        faces = bf.read_manifest(manifests_dir, "faces", ["identity_id", "embedding", "reason"])
        old_ids, old_means = identity_means(faces[faces["identity_id"].isin(missing)])
        if len(old_ids):
            if means is None:
                means = np.empty((len(ids), old_means.shape[1]), np.float32)
            rows = [position[i] for i in old_ids]
            means[rows] = old_means
            filled[rows] = True
    if means is None:
        return kept, [], np.zeros((0, 0), np.float32)
    if not filled.all():                  # identities with nothing embedded take no part
        ids = [i for i, ok in zip(ids, filled, strict=True) if ok]
        means = means[filled]
    return kept, ids, means


# Bytes of one block of the similarity search: at 134,000 identities a block is ~250 rows
# (bench/duplicates_scale.py measures the driver's peak).
SIMILARITY_BLOCK_BYTES = 64 << 20


def duplicate_pairs(means: np.ndarray, threshold: float, block: int | None = None
                    ) -> list[tuple[int, int, float]]:
    """Every pair (i < j) of unit vectors closer than `threshold` in cosine distance: exact,
    one (block x n) matrix product at a time, so memory stays at block * n floats (by default
    `SIMILARITY_BLOCK_BYTES`)."""
    means = np.ascontiguousarray(means, dtype=np.float32)
    n = len(means)
    if block is None:
        block = max(1, SIMILARITY_BLOCK_BYTES // (4 * max(n, 1)))
    pairs: list[tuple[int, int, float]] = []
    min_similarity = np.float32(1.0 - threshold)
    for start in range(0, n, block):
        stop = min(n, start + block)
        similarity = means[start:stop] @ means[start:].T
        rows, cols = np.nonzero(similarity > min_similarity)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i, j = start + r, start + c
            if j > i:
                pairs.append((i, j, float(1.0 - similarity[r, c])))
    return pairs


def group_pairs(n: int, pairs: Sequence[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components (size >= 2) of the pairs, each sorted, in order of smallest member."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def group_id(members: Sequence[str]) -> str:
    """A stable id of a group (a hash: the id of a member taken down later is not in it)."""
    digest = hashlib.sha1("\n".join(sorted(members)).encode("utf-8", "surrogatepass"))
    return "dup-" + digest.hexdigest()[:12]


@dataclass
class DuplicateResult:
    identities: int = 0                        # kept identities compared
    groups: list[list[str]] = field(default_factory=list)   # identity ids, per group
    removed: dict[str, str] = field(default_factory=dict)   # identity id -> its shard
    shards_rewritten: list[str] = field(default_factory=list)
    seconds: float = 0.0


def resolve_duplicates(folder: bf.BuildFolder, config) -> DuplicateResult:
    """The cross-identity pass over a finished build (see the module docstring). `config` is
    the BuildConfig (its `identity` section is used). Idempotent: a rerun finds the groups
    again, keeps their ids, and has nothing left to remove."""
    from curation import takedowns
    from curation.pipeline.removal import refresh_plan_and_shard_table, rewrite_without

    started = time.monotonic()
    identity: IdentityConfig = config.identity
    result = DuplicateResult()
    if not identity.enabled:
        return result
    kept, ids, means = kept_identity_means(folder.manifests_dir)
    result.identities = len(ids)
    pairs = duplicate_pairs(means, identity.duplicate()) if len(ids) > 1 else []
    info = kept.set_index("identity_id")
    assignment: dict[str, str | None] = {}
    for members in group_pairs(len(ids), pairs):
        names = [ids[i] for i in members]
        splits = {name: info.at[name, "split"] for name in names}
        by_split: dict[str, int] = {}
        for split in splits.values():
            by_split[split] = by_split.get(split, 0) + 1
        keep_split = max(sorted(by_split), key=lambda s: (by_split[s], s == "train"))
        removed = [] if identity.keep_cross_split_duplicates else \
            [name for name in names if splits[name] != keep_split]
        for name in removed:
            result.removed[name] = info.at[name, "shard"]
        remaining = [name for name in names if name not in removed]
        result.groups.append(names)
        existing = sorted({info.at[name, "duplicate_group"] for name in remaining
                           if isinstance(info.at[name, "duplicate_group"], str)})
        gid = existing[0] if existing else group_id(remaining)
        for name in remaining:
            assignment[name] = gid
    for shard in sorted(set(result.removed.values())):
        gone = {name for name, where in result.removed.items() if where == shard}
        rewrite_without(folder, shard, lambda rows, gone=gone: set(gone), full_hash=False)
        takedowns.append_record(folder.manifests_dir, [("identity", name) for name in gone],
                                Reason.DUPLICATE_ACROSS_SPLITS.value, "after_build", shard)
        result.shards_rewritten.append(shard)
    if result.removed:
        refresh_plan_and_shard_table(folder)
    _record_groups(folder, kept, assignment, result)
    result.seconds = time.monotonic() - started
    return result


def _record_groups(folder: bf.BuildFolder, kept, assignment: dict[str, str | None],
                   result: DuplicateResult) -> None:
    """Write `duplicate_group` into the identities parts whose values change (the part alone,
    with its metadata: the tar and the other parts are untouched)."""
    changed_shards = set()
    for name, shard, old in zip(kept["identity_id"], kept["shard"], kept["duplicate_group"],
                                strict=True):
        old = old if isinstance(old, str) else None
        if name not in result.removed and assignment.get(name) != old:
            changed_shards.add(shard)
    for shard in sorted(changed_shards):
        path = folder.part_paths(shard)["identities"]
        table = bf.read_part(path, "identities")
        rows = table.to_pylist()
        for row in rows:
            if row["status"] == Status.KEPT:
                row["duplicate_group"] = assignment.get(row["identity_id"])
        meta = {k: v for k, v in (table.schema.metadata or {}).items()
                if k.startswith(b"mfhq.shard")}
        bf.write_parquet_atomic(manifests.to_table("identities", rows, meta), Path(path))

