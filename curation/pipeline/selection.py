"""Choosing an identity's faces: pose over-clustering, cheap pre-ranking, quality, pick N.

The steps are pure functions over arrays so they are testable without models:

1. `cluster_poses`: k-means on (yaw, pitch, roll), K > N so the clusters over-cover pose space.
2. `prerank`: in each cluster keep the sharpest few candidates; only these go to the (slow)
   quality model, the rest are recorded as not scored.
3. `choose`: N clusters spread over pose (greedy farthest-point over the centroids, from the
   most frontal one), the best-quality candidate of each; if that set's median quality falls
   below the median of all scored candidates, the weakest chosen cluster is swapped for the
   best unchosen one until it does not (quality is the paper's criterion, the clusters only
   guarantee pose differences).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from curation.records import Reason

KMEANS_N_INIT = 4


@dataclass
class PoseClusters:
    labels: np.ndarray      # (n,) int cluster of each candidate
    centroids: np.ndarray   # (k, 3) yaw, pitch, roll


@dataclass
class Choice:
    """The outcome for one identity: chosen candidate indices (in image order) or a reason."""

    selected: list[int]
    reason: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def cluster_poses(poses: np.ndarray, k: int, seed: int) -> PoseClusters:
    """K-means over (yaw, pitch, roll) in degrees, K capped by the number of distinct poses."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
    distinct = len(np.unique(np.round(poses, 6), axis=0))
    k = max(1, min(k, distinct))
    if k == 1:
        return PoseClusters(np.zeros(len(poses), dtype=np.int64), poses.mean(axis=0, keepdims=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters=k, random_state=seed, n_init=KMEANS_N_INIT).fit(poses)
    labels = model.labels_.astype(np.int64)
    return PoseClusters(labels, model.cluster_centers_.astype(np.float64))


def prerank(labels: np.ndarray, sharpness: np.ndarray, per_cluster: int) -> list[int]:
    """Indices of the `per_cluster` sharpest candidates of every cluster (ties: lower index)."""
    chosen: list[int] = []
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        order = sorted(members, key=lambda i: (-float(sharpness[i]), int(i)))
        chosen.extend(int(i) for i in order[:per_cluster])
    return sorted(chosen)


def farthest_point_order(centroids: np.ndarray, candidates: list[int]) -> list[int]:
    """Clusters ordered greedily: the most frontal first, then each farthest from those taken."""
    if not candidates:
        return []
    pts = centroids[:, :3]
    frontal = min(candidates, key=lambda c: (float(np.hypot(pts[c, 0], pts[c, 1])), c))
    order = [frontal]
    remaining = [c for c in candidates if c != frontal]
    min_dist = {c: float(np.linalg.norm(pts[c] - pts[frontal])) for c in remaining}
    while remaining:
        nxt = max(remaining, key=lambda c: (min_dist[c], -c))
        order.append(nxt)
        remaining.remove(nxt)
        for c in remaining:
            min_dist[c] = min(min_dist[c], float(np.linalg.norm(pts[c] - pts[nxt])))
    return order


def choose(labels: np.ndarray, centroids: np.ndarray, quality: dict[int, float],
           n_images: int) -> Choice:
    """Pick `n_images` scored candidates from distinct clusters, spread in pose, best quality.

    `quality` maps candidate index -> score (higher is better) for the scored candidates only.
    """
    best_of: dict[int, int] = {}
    for idx, score in sorted(quality.items()):
        cluster = int(labels[idx])
        if cluster not in best_of or score > quality[best_of[cluster]]:
            best_of[cluster] = idx
    if len(best_of) < n_images:
        return Choice([], Reason.TOO_FEW_POSE_CLUSTERS.value,
                      f"{len(best_of)} pose clusters with a usable face, need {n_images}")
    order = farthest_point_order(centroids, sorted(best_of))
    chosen = order[:n_images]
    chosen = _repair_median(chosen, best_of, quality)
    # Image order: the pose-spread order of the chosen clusters (most frontal first).
    chosen.sort(key=order.index)
    return Choice([best_of[c] for c in chosen])


def _repair_median(chosen: list[int], best_of: dict[int, int], quality: dict[int, float]
                   ) -> list[int]:
    """Swap weak chosen clusters for stronger unchosen ones until the chosen median quality is
    at least the median over all scored candidates."""
    target = float(np.median(list(quality.values())))
    chosen = list(chosen)

    def best_q(cluster: int) -> float:
        return quality[best_of[cluster]]

    while float(np.median([best_q(c) for c in chosen])) < target:
        unchosen = [c for c in best_of if c not in chosen]
        if not unchosen:
            break
        weakest = min(chosen, key=lambda c: (best_q(c), c))
        strongest = max(unchosen, key=lambda c: (best_q(c), -c))
        if best_q(strongest) <= best_q(weakest):
            break
        chosen[chosen.index(weakest)] = strongest
    return chosen


def pose_spread(poses: np.ndarray) -> dict[str, float]:
    """Std and range of yaw and pitch over a set of faces (degrees)."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
    if len(poses) == 0:
        return {"yaw_std": None, "pitch_std": None, "yaw_range": None, "pitch_range": None}
    return {
        "yaw_std": float(poses[:, 0].std()), "pitch_std": float(poses[:, 1].std()),
        "yaw_range": float(np.ptp(poses[:, 0])), "pitch_range": float(np.ptp(poses[:, 1])),
    }


@dataclass
class Selection:
    """Everything the manifests need about one identity's selection."""

    choice: Choice
    clusters: PoseClusters | None
    scored: list[int]
    quality: dict[int, float]


@dataclass
class SelectionConfig:
    """How N faces are chosen per identity (see `select_faces`)."""

    images_per_identity: int = 8    # faces per identity, each from a different pose cluster
    pose_clusters: int = 12         # k-means clusters over (yaw, pitch, roll); >= N
    scored_per_cluster: int = 2     # sharpest candidates per cluster that the quality model scores
    seed: int = 0                   # k-means seed


@dataclass
class PendingSelection:
    """An identity's selection up to the quality model: its pose clusters and the candidates
    (indices) the model must score."""

    clusters: PoseClusters
    scored: list[int]


def plan_selection(poses: np.ndarray, sharpness: np.ndarray, *, n_images: int,
                   pose_clusters: int, scored_per_cluster: int, seed: int
                   ) -> Selection | PendingSelection:
    """Cluster the poses and pre-rank by sharpness: a final Selection when the identity cannot
    be kept (too few faces or clusters), else what the quality model must score."""
    n = len(poses)
    if n < n_images:
        return Selection(Choice([], Reason.TOO_FEW_FACES.value,
                                f"{n} usable faces, need {n_images}"), None, [], {})
    clusters = cluster_poses(poses, pose_clusters, seed)
    n_clusters = len(np.unique(clusters.labels))
    if n_clusters < n_images:
        return Selection(Choice([], Reason.TOO_FEW_POSE_CLUSTERS.value,
                                f"{n} usable faces fall in {n_clusters} distinct pose clusters, "
                                f"need {n_images}"), clusters, [], {})
    scored = prerank(clusters.labels, np.asarray(sharpness, dtype=np.float64), scored_per_cluster)
    return PendingSelection(clusters, scored)


def finish_selection(pending: PendingSelection, scores, n_images: int) -> Selection:
    """The choice of N faces once the quality model has scored `pending.scored`."""
    scores = [float(s) for s in scores]
    quality = {i: s for i, s in zip(pending.scored, scores, strict=True) if np.isfinite(s)}
    choice = choose(pending.clusters.labels, pending.clusters.centroids, quality, n_images)
    return Selection(choice, pending.clusters, pending.scored, quality)


def select_faces(poses: np.ndarray, sharpness: np.ndarray, *, n_images: int, pose_clusters: int,
                 scored_per_cluster: int, seed: int, score_fn) -> Selection:
    """The whole selection for one identity's usable candidates.

    `score_fn(indices) -> sequence of floats` runs the quality model on those candidates.
    """
    pending = plan_selection(poses, sharpness, n_images=n_images, pose_clusters=pose_clusters,
                             scored_per_cluster=scored_per_cluster, seed=seed)
    if isinstance(pending, Selection):
        return pending
    return finish_selection(pending, score_fn(pending.scored), n_images)
