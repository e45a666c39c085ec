"""Pose over-clustering, pre-ranking and the choice of 8 faces (curation/pipeline/selection.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.pipeline.selection import (
    choose,
    cluster_poses,
    farthest_point_order,
    prerank,
    select_faces,
)
from curation.records import Reason


def _poses_grid(n_per: int, rng: np.random.Generator) -> np.ndarray:
    """Candidates around 12 well separated head poses."""
    centres = [(y, p, 0.0) for y in (-60, -30, 0, 30, 60, 80) for p in (-20, 20)]
    return np.concatenate([np.array(c) + rng.normal(0, 1.5, (n_per, 3)) for c in centres])


def test_cluster_poses_is_seeded_and_capped_by_distinct_poses():
    rng = np.random.default_rng(0)
    poses = _poses_grid(5, rng)
    a = cluster_poses(poses, 12, seed=3)
    b = cluster_poses(poses, 12, seed=3)
    assert np.array_equal(a.labels, b.labels)
    assert len(np.unique(a.labels)) == 12
    # Each true pose group lands in one cluster.
    for g in range(12):
        assert len(set(a.labels[g * 5:(g + 1) * 5])) == 1
    # Only 3 distinct poses: K is capped at 3, no empty clusters.
    few = np.repeat(np.array([[0, 0, 0], [40, 0, 0], [-40, 10, 0]], float), 4, axis=0)
    c = cluster_poses(few, 12, seed=0)
    assert c.centroids.shape == (3, 3)
    assert len(np.unique(c.labels)) == 3


def test_prerank_keeps_the_sharpest_per_cluster():
    labels = np.array([0, 0, 0, 1, 1, 2])
    sharp = np.array([1.0, 5.0, 3.0, 2.0, 9.0, 0.5])
    assert prerank(labels, sharp, 2) == [1, 2, 3, 4, 5]
    assert prerank(labels, sharp, 1) == [1, 4, 5]


def test_farthest_point_starts_frontal_and_spreads():
    centroids = np.array([[60, 0, 0], [1, 2, 0], [-60, 0, 0], [55, 5, 0]], float)
    order = farthest_point_order(centroids, [0, 1, 2, 3])
    assert order[0] == 1                   # most frontal
    assert set(order[1:3]) == {0, 2}        # then the two extremes, not the near-duplicate 3
    assert order[3] == 3


def test_select_faces_picks_distinct_clusters_and_high_quality():
    rng = np.random.default_rng(1)
    poses = _poses_grid(6, rng)
    sharp = rng.uniform(0, 1, len(poses))
    true_quality = rng.uniform(0, 1, len(poses))
    calls: list[list[int]] = []

    def score(indices):
        calls.append(list(indices))
        return true_quality[indices]

    sel = select_faces(poses, sharp, n_images=8, pose_clusters=12, scored_per_cluster=2, seed=0,
                       score_fn=score)
    assert sel.choice.ok, sel.choice.message
    chosen = sel.choice.selected
    assert len(chosen) == 8
    assert len({int(sel.clusters.labels[i]) for i in chosen}) == 8
    # The quality model ran once, on at most 2 per cluster, never on every frame.
    assert len(calls) == 1 and len(calls[0]) == 24 < len(poses)
    scored_q = [sel.quality[i] for i in sel.scored]
    assert np.median([sel.quality[i] for i in chosen]) >= np.median(scored_q)
    # Within each chosen cluster the best scored face was taken.
    for i in chosen:
        same = [j for j in sel.scored if sel.clusters.labels[j] == sel.clusters.labels[i]]
        assert sel.quality[i] == max(sel.quality[j] for j in same)


def test_too_few_faces_and_too_few_clusters_are_reasons():
    score = lambda idx: np.ones(len(idx))  # noqa: E731
    few = select_faces(np.zeros((5, 3)), np.ones(5), n_images=8, pose_clusters=12,
                       scored_per_cluster=2, seed=0, score_fn=score)
    assert few.choice.reason == Reason.TOO_FEW_FACES
    same_pose = np.repeat(np.array([[0, 0, 0], [30, 0, 0], [-30, 0, 0]], float), 10, axis=0)
    narrow = select_faces(same_pose, np.ones(30), n_images=8, pose_clusters=12,
                          scored_per_cluster=2, seed=0, score_fn=score)
    assert narrow.choice.reason == Reason.TOO_FEW_POSE_CLUSTERS
    assert not narrow.choice.selected


def test_unscorable_faces_do_not_count_as_clusters():
    labels = np.arange(9)
    centroids = np.stack([np.arange(9) * 10.0, np.zeros(9), np.zeros(9)], axis=1)
    quality = {i: 1.0 for i in range(7)}   # two clusters have no finite score
    assert choose(labels, centroids, quality, 8).reason == Reason.TOO_FEW_POSE_CLUSTERS


@settings(max_examples=60, deadline=None)
@given(st.integers(8, 14), st.integers(1, 3), st.integers(0, 10_000))
def test_median_of_selected_never_below_median_of_scored(k, per_cluster, seed):
    rng = np.random.default_rng(seed)
    n = k * per_cluster + int(rng.integers(0, 10))
    labels = np.concatenate([np.arange(k).repeat(per_cluster),
                             rng.integers(0, k, n - k * per_cluster)])
    centroids = rng.uniform(-60, 60, (k, 3))
    scored = prerank(labels, rng.uniform(0, 1, n), per_cluster)
    # Adversarial quality: frontal clusters (chosen first by pose) score worst.
    q = {i: float(rng.uniform(0, 1) + np.abs(centroids[labels[i], 0]) / 30) for i in scored}
    choice = choose(labels, centroids, q, 8)
    assert choice.ok
    assert len({int(labels[i]) for i in choice.selected}) == 8
    assert np.median([q[i] for i in choice.selected]) >= np.median(list(q.values()))
