"""The audit report's plots: matplotlib figures (Agg canvas, no pyplot state) as PNG bytes.

Every function takes plain pandas frames from the manifests and returns PNG bytes; empty inputs
give a figure that says "no data" instead of raising, so a report of a failed build still renders.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 80
POSE_LIMIT = 90.0          # degrees shown on the pose axes
POSE_BIN = 5.0
CANDIDATE_COLOR = "#8c8c8c"
SELECTED_COLOR = "#d9480f"


def figure_png(fig: Figure) -> bytes:
    """A figure rendered with the Agg canvas as PNG bytes."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    return array[np.isfinite(array)]


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")


def _pose_points(faces: pd.DataFrame) -> np.ndarray:
    pose = faces[["yaw", "pitch"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    return pose[np.isfinite(pose).all(axis=1)] if len(pose) else np.zeros((0, 2))


def _pose_heatmap(fig: Figure, ax, faces: pd.DataFrame, title: str) -> None:
    points = _pose_points(faces)
    edges = np.arange(-POSE_LIMIT, POSE_LIMIT + POSE_BIN, POSE_BIN)
    ax.set_title(f"{title} (n={len(points)})")
    ax.set_xlabel("yaw (deg)")
    ax.set_ylabel("pitch (deg)")
    ax.set_xlim(-POSE_LIMIT, POSE_LIMIT)
    ax.set_ylim(-POSE_LIMIT, POSE_LIMIT)
    if not len(points):
        _no_data(ax)
        return
    clipped = np.clip(points, -POSE_LIMIT, POSE_LIMIT - 1e-6)
    counts, _, _ = np.histogram2d(clipped[:, 0], clipped[:, 1], bins=[edges, edges])
    shown = np.ma.masked_equal(counts.T, 0)
    mesh = ax.pcolormesh(edges, edges, shown, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label="faces")
    ax.grid(True, alpha=0.3)


def pose_coverage_png(candidates: pd.DataFrame, selected: pd.DataFrame) -> bytes:
    """Yaw/pitch 2-D histograms of all candidates and of the selected faces, and roll."""
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_cand, ax_sel, ax_roll = fig.subplots(1, 3)
    _pose_heatmap(fig, ax_cand, candidates, "candidates")
    _pose_heatmap(fig, ax_sel, selected, "selected")
    roll_cand, roll_sel = _finite(candidates["roll"]), _finite(selected["roll"])
    ax_roll.set_title("roll")
    ax_roll.set_xlabel("roll (deg)")
    ax_roll.set_ylabel("faces")
    if len(roll_cand) or len(roll_sel):
        bins = np.arange(-POSE_LIMIT, POSE_LIMIT + POSE_BIN, POSE_BIN)
        ax_roll.hist(np.clip(roll_cand, -POSE_LIMIT, POSE_LIMIT), bins=bins,
                     color=CANDIDATE_COLOR, label=f"candidates (n={len(roll_cand)})")
        ax_roll.hist(np.clip(roll_sel, -POSE_LIMIT, POSE_LIMIT), bins=bins,
                     color=SELECTED_COLOR, alpha=0.8, label=f"selected (n={len(roll_sel)})")
        ax_roll.legend(loc="upper right")
    else:
        _no_data(ax_roll)
    return figure_png(fig)


def pose_spread_png(kept: pd.DataFrame) -> bytes:
    """Distribution over kept identities of the pose spread of their selected faces."""
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    ax_std, ax_range = fig.subplots(1, 2)
    for ax, (yaw_col, pitch_col), what in ((ax_std, ("yaw_std", "pitch_std"), "std"),
                                           (ax_range, ("yaw_range", "pitch_range"), "range")):
        yaw, pitch = _finite(kept[yaw_col]), _finite(kept[pitch_col])
        ax.set_title(f"per-identity pose {what} of the selected faces (n={len(yaw)} identities)")
        ax.set_xlabel(f"{what} (deg)")
        ax.set_ylabel("identities")
        if not (len(yaw) or len(pitch)):
            _no_data(ax)
            continue
        top = max(float(np.max(yaw, initial=0.0)), float(np.max(pitch, initial=0.0)), 1.0)
        bins = np.linspace(0.0, top * 1.05, 25)
        ax.hist(yaw, bins=bins, histtype="step", linewidth=2, label="yaw")
        ax.hist(pitch, bins=bins, histtype="step", linewidth=2, label="pitch")
        ax.legend()
    return figure_png(fig)


def quality_png(scored: pd.DataFrame, selected: pd.DataFrame, models: dict[str, str]) -> bytes:
    """Quality-score histograms of the scored candidates vs the selected faces, per source.

    `models` maps each source to the quality model(s) that scored its faces (named in titles).
    """
    sources = sorted(set(scored["source"].dropna()) | set(selected["source"].dropna()))
    columns = min(3, max(1, len(sources)))
    rows = max(1, -(-len(sources) // columns))
    fig = Figure(figsize=(5 * columns, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    all_scores = np.concatenate([_finite(scored["quality"]), _finite(selected["quality"])])
    if not sources or not len(all_scores):
        _no_data(axes[0], "no quality scores")
        for ax in axes[1:]:
            ax.set_axis_off()
        return figure_png(fig)
    low, high = float(all_scores.min()), float(all_scores.max())
    bins = np.linspace(low, high if high > low else low + 1.0, 30)
    for ax, source in zip(axes, sources, strict=False):
        cand = _finite(scored.loc[scored["source"] == source, "quality"])
        sel = _finite(selected.loc[selected["source"] == source, "quality"])
        ax.set_title(f"{source}  [model: {models.get(source, 'unknown')}]")
        ax.set_xlabel("quality score")
        ax.set_ylabel("faces")
        ax.hist(cand, bins=bins, color=CANDIDATE_COLOR, label=f"scored candidates (n={len(cand)})")
        ax.hist(sel, bins=bins, color=SELECTED_COLOR, alpha=0.8, label=f"selected (n={len(sel)})")
        ax.legend(loc="upper left", fontsize="small")
    for ax in axes[len(sources):]:
        ax.set_axis_off()
    return figure_png(fig)


def face_size_png(considered: pd.DataFrame, selected: pd.DataFrame,
                  min_face_size: float | None) -> bytes:
    """Face-size distribution of every considered face and of the selected ones, with the
    minimum size of the build drawn as a line."""
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    ax = fig.subplots()
    sizes, sel = _finite(considered["face_size"]), _finite(selected["face_size"])
    ax.set_title(f"face size (n={len(sizes)} considered faces with a size)")
    ax.set_xlabel("face size (px, side of the source region that becomes the crop)")
    ax.set_ylabel("faces")
    if not len(sizes):
        _no_data(ax)
        return figure_png(fig)
    top = float(sizes.max())
    if min_face_size is not None:
        top = max(top, float(min_face_size))
    bins = np.linspace(0.0, top * 1.05, 40)
    ax.hist(sizes, bins=bins, color=CANDIDATE_COLOR, label="considered")
    ax.hist(sel, bins=bins, color=SELECTED_COLOR, alpha=0.8, label=f"selected (n={len(sel)})")
    if min_face_size is not None:
        below = int((sizes < min_face_size).sum())
        ax.axvline(min_face_size, color="black", linestyle="--",
                   label=f"--min-face-size {min_face_size:g} ({below} below)")
    ax.legend(loc="upper left")
    return figure_png(fig)


def consistency_png(kept: pd.DataFrame) -> bytes:
    """Distribution over kept identities of their identity consistency (the largest cosine
    distance of their embedded faces to their mean): one person gives small values."""
    fig = Figure(figsize=(12, 3.2), layout="constrained")
    ax = fig.subplots()
    values = _finite(kept["identity_consistency"]) if "identity_consistency" in kept else \
        np.zeros(0)
    ax.set_title(f"identity consistency of kept identities (n={len(values)})")
    ax.set_xlabel("largest cosine distance of a face to its identity's mean embedding")
    ax.set_ylabel("identities")
    if not len(values):
        _no_data(ax, "no embeddings (identity model none, or nothing kept)")
        return figure_png(fig)
    ax.hist(values, bins=30, color=SELECTED_COLOR)
    return figure_png(fig)
