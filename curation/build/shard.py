"""Building one shard: analyse every clip of its identities, select faces, write tar + parts.

`ShardBuilder` holds the models (a FaceAnalyzer and a QualityScorer, loaded once) and turns a
`ShardSpec` into a finished shard. It is plain Python; `curation.build.pool` wraps it in Ray
actors. It is handed the build's config tree whole and the build folder with absolute paths.

Fault isolation: one clip that raises is recorded failed (internal_error, with the message) and
the identity goes on with its other clips; a clip that runs past its time limit is recorded as
video_timeout and the analyzer is replaced (the stuck call is abandoned on its thread); one
identity whose selection raises is dropped with internal_error and the shard goes on.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curation import build_folder as bf
from curation.build.plan import IdentityPlan, ShardSpec
from curation.build.selection import Selection, pose_spread, select_faces
from curation.build.tar_writer import (
    Sample,
    commit_shard,
    encode_jpeg,
    encode_json,
    encode_png_mask,
    stage_shard,
)
from curation.records import ClipRecord, Reason, Status
from mfhq_contract import FORMAT_VERSION, JSON_EXT, image_ext, mask_ext

# Extra time over the analyzer's own per-clip limit before the builder gives up on a call.
TIMEOUT_GRACE_S = 30.0
if TYPE_CHECKING:
    from curation.build.config import BuildConfig
    from curation.faces.analysis import ClipAnalysis, FaceCandidate


def clip_key(clip: ClipRecord) -> str:
    return f"{clip.source}:{clip.clip_id}"


def read_inflight(folder: bf.BuildFolder, shard: str) -> str | None:
    """The clip key a builder of `shard` was analysing when it last wrote its marker (each
    builder names its clip there, so that the pool can tell which clip a dead worker was on)."""
    try:
        return json.loads(folder.inflight_marker(shard).read_text())["clip"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class ClipOutcome:
    """What became of one clip in a builder: its analysis (None when it failed outright) and the
    clips-manifest fields that describe the outcome."""

    analysis: ClipAnalysis | None
    status: str
    reason: str | None
    message: str
    seconds: float

    @classmethod
    def failed(cls, reason: Reason, message: str, seconds: float = 0.0) -> ClipOutcome:
        return cls(None, Status.FAILED, reason.value, message, seconds)

    @classmethod
    def of(cls, analysis: ClipAnalysis, seconds: float) -> ClipOutcome:
        return cls(analysis, analysis.status, analysis.reason, analysis.message or "", seconds)


@dataclass
class ShardResult:
    name: str
    split: str
    samples: int
    identities: int
    bytes: int
    sha256: str
    clips_ok: int
    clips_failed: int
    seconds: float


@dataclass
class _Face:
    """A candidate face with the clip it came from."""

    clip: ClipRecord
    cand: FaceCandidate


class ShardBuilder:
    """Loads the models once; `build(spec)` writes one shard and its manifest parts."""

    def __init__(self, config: BuildConfig, folder: bf.BuildFolder, device: str = "cpu"):
        from curation.faces.quality import QualityScorer

        self.config = config
        self.folder = folder
        self._analyzer = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._marker: Path | None = None
        self._poisoned: dict[str, str] = {}
        self.scorer = QualityScorer.from_config(config.quality, device=device)

    # -- models ------------------------------------------------------------------------------
    def load_models(self) -> None:
        """Load the face analyzer now (it is otherwise loaded by the first clip)."""
        if self._analyzer is None:
            self._fresh_analyzer()

    def _fresh_analyzer(self) -> None:
        from curation.faces.analysis import FaceAnalyzer

        # A dedicated thread runs every analyzer call, so a stuck call can be abandoned.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="analyze")
        self._analyzer = self._executor.submit(FaceAnalyzer, self.config.analysis).result()

    def _abandon_analyzer(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._analyzer = None
        self._executor = None

    def close(self) -> None:
        if self._analyzer is not None and self._executor is not None:
            try:
                self._executor.submit(self._analyzer.close).result(timeout=10)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._abandon_analyzer()

    def analyze(self, clip: ClipRecord) -> ClipOutcome:
        """Analyse one clip; never raises."""
        self.load_models()
        started = time.monotonic()
        limit = self.config.analysis.clip_time_limit_s + TIMEOUT_GRACE_S
        future = self._executor.submit(self._analyzer.analyze_clip, clip)
        try:
            analysis = future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            self._abandon_analyzer()
            return ClipOutcome.failed(Reason.VIDEO_TIMEOUT,
                                      f"analysis did not return within {limit:.0f} s",
                                      time.monotonic() - started)
        except Exception as err:  # noqa: BLE001 - one bad clip must not lose the identity
            return ClipOutcome.failed(Reason.INTERNAL_ERROR, _describe(err),
                                      time.monotonic() - started)
        return ClipOutcome.of(analysis, time.monotonic() - started)

    # -- one shard ---------------------------------------------------------------------------
    def build(self, spec: ShardSpec) -> ShardResult:
        started = time.monotonic()
        rows: dict[str, list[dict]] = {"clips": [], "faces": [], "identities": []}
        samples: list[Sample] = []
        clips_ok = clips_failed = 0
        self._marker = self.folder.inflight_marker(spec.name)
        self._poisoned = dict(spec.poisoned)
        for ident in spec.identities:
            sample, ident_rows = self.build_identity(ident, spec.name)
            for table, table_rows in ident_rows.items():
                rows[table].extend(table_rows)
            if sample is not None:
                samples.append(sample)
            clips_ok += sum(1 for r in ident_rows["clips"] if r["status"] == Status.OK)
            clips_failed += sum(1 for r in ident_rows["clips"] if r["status"] != Status.OK)
        staged = stage_shard(self.folder.tar_path(spec.name), samples)
        # Parts first, tar last: a tar under its final name implies its parts are written.
        bf.write_shard_parts(self.folder, spec.name, staged.sha256, rows)
        commit_shard(staged)
        self._marker.unlink(missing_ok=True)
        return ShardResult(spec.name, spec.split, len(samples), len(spec.identities),
                           staged.bytes, staged.sha256, clips_ok, clips_failed,
                           time.monotonic() - started)

    def build_identity(self, ident: IdentityPlan, shard: str
                       ) -> tuple[Sample | None, dict[str, list[dict]]]:
        """Analyse, select and encode one identity; its sample (or None) and manifest rows."""
        clip_rows: list[dict] = []
        faces: list[_Face] = []
        rejected: list[_Face] = []
        for clip in ident.clips:
            if clip_key(clip) in self._poisoned:
                outcome = ClipOutcome.failed(Reason.WORKER_CRASHED, self._poisoned[clip_key(clip)])
            else:
                self._mark_inflight(shard, clip)
                outcome = self.analyze(clip)
            analysis = outcome.analysis
            cands = list(analysis.candidates) if analysis is not None else []
            usable = [c for c in cands if c.usable]
            faces.extend(_Face(clip, c) for c in usable)
            rejected.extend(_Face(clip, c) for c in cands if not c.usable)
            clip_rows.append(_clip_row(clip, outcome, ident, shard, len(cands), len(usable)))
        try:
            selection = self._select(faces)
            message = selection.choice.message
        except Exception as err:  # noqa: BLE001 - one identity must not lose the shard
            selection = None
            message = _describe(err)
        sample = None
        if selection is not None and selection.choice.ok:
            sample = self._sample(ident, faces, selection)
        face_rows = _face_rows(ident, shard, faces, rejected, selection, self.scorer.model_name)
        ident_row = _identity_row(ident, shard, faces, selection, clip_rows, message,
                                  self.scorer.model_name)
        for face in faces + rejected:   # the crops are in the sample now; free them
            face.cand.crop = face.cand.mask = None
        return sample, {"clips": clip_rows, "faces": face_rows, "identities": [ident_row]}

    def _mark_inflight(self, shard: str, clip: ClipRecord) -> None:
        if self._marker is not None:
            bf.atomic_write(self._marker, json.dumps(
                {"shard": shard, "clip": clip_key(clip), "pid": os.getpid()}))

    def _select(self, faces: list[_Face]) -> Selection:
        s = self.config.selection
        poses = np.array([[f.cand.yaw, f.cand.pitch, f.cand.roll] for f in faces],
                         dtype=np.float64).reshape(-1, 3)
        sharpness = np.array([f.cand.sharpness or 0.0 for f in faces], dtype=np.float64)

        def score(indices: list[int]) -> np.ndarray:
            if not indices:
                return np.zeros(0)
            return np.asarray(self.scorer.score([faces[i].cand.crop for i in indices]),
                              dtype=np.float64).reshape(-1)

        return select_faces(poses, sharpness, n_images=s.images_per_identity,
                            pose_clusters=s.pose_clusters, scored_per_cluster=s.scored_per_cluster,
                            seed=s.seed, score_fn=score)

    def _sample(self, ident: IdentityPlan, faces: list[_Face], selection: Selection) -> Sample:
        images, members = [], []
        for index, face_index in enumerate(selection.choice.selected):
            face = faces[face_index]
            images.append(_image_record(index, face, selection, face_index,
                                        self.scorer.model_name))
        record = {
            "format_version": FORMAT_VERSION, "key": ident.key, "identity_id": ident.identity_id,
            "sources": ident.sources, "source_video_ids": ident.source_video_ids,
            "split": ident.split, "crop_size": self.config.analysis.crop_size, "images": images,
        }
        members.append((JSON_EXT, encode_json(record)))
        for index, face_index in enumerate(selection.choice.selected):
            members.append((image_ext(index), encode_jpeg(faces[face_index].cand.crop)))
        for index, face_index in enumerate(selection.choice.selected):
            members.append((mask_ext(index), encode_png_mask(faces[face_index].cand.mask)))
        return Sample(ident.key, members)


# --- rows -------------------------------------------------------------------------------------

def _describe(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(err).__name__}: {err}{where}"[:2000]


def _float(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _clip_row(clip: ClipRecord, outcome: ClipOutcome, ident: IdentityPlan, shard: str,
              n_faces: int, n_candidates: int) -> dict:
    analysis = outcome.analysis
    row = _record_row(clip, stage="analysis")
    row.update(status=outcome.status, reason=outcome.reason, message=outcome.message,
               n_faces=n_faces, n_candidates=n_candidates,
               analysis_seconds=round(outcome.seconds, 3), split=ident.split, shard=shard)
    if analysis is not None:
        row.update(frames_decoded=analysis.frames_decoded, width=analysis.width,
                   height=analysis.height, fps=_float(analysis.fps),
                   num_frames=analysis.num_frames)
    return row


def _record_row(clip: ClipRecord, stage: str) -> dict:
    """The ClipRecord part of a clips-manifest row."""
    return {
        "source": clip.source, "clip_id": clip.clip_id, "original_clip_id": clip.original_clip_id,
        "identity_id": clip.identity_id, "source_video_id": clip.source_video_id,
        "video_path": clip.video_path, "is_raw": clip.is_raw, "status": clip.status,
        "reason": clip.reason, "message": clip.message, "stage": stage,
        "start_sec": clip.start_sec, "end_sec": clip.end_sec, "start_frame": clip.start_frame,
        "end_frame": clip.end_frame, "license": clip.license,
        "extra_json": json.dumps(clip.extra, sort_keys=True, default=str) if clip.extra else None,
    }


def enumeration_rows(clips: list[ClipRecord]) -> list[dict]:
    """Clips-manifest rows for clips rejected before analysis (driver side)."""
    return [_record_row(clip, stage="enumeration") for clip in clips]


def _face_rows(ident: IdentityPlan, shard: str, faces: list[_Face], rejected: list[_Face],
               selection: Selection | None, model_name: str) -> list[dict]:
    rows = []
    image_of = {}
    labels = None
    quality: dict[int, float] = {}
    scored: set[int] = set()
    drop_reason = Reason.INTERNAL_ERROR.value
    if selection is not None:
        image_of = {face: i for i, face in enumerate(selection.choice.selected)}
        labels = selection.clusters.labels if selection.clusters is not None else None
        quality, scored = selection.quality, set(selection.scored)
        drop_reason = selection.choice.reason
    for i, face in enumerate(faces):
        if i in image_of:
            reason = None
        elif drop_reason is not None:
            reason = drop_reason
        elif i in scored:
            reason = Reason.NOT_SELECTED.value
        else:
            reason = Reason.NOT_SCORED.value
        rows.append(_face_row(ident, shard, face, reason, image_of.get(i),
                              int(labels[i]) if labels is not None else None,
                              quality.get(i), model_name if i in quality else None))
    for face in rejected:
        rows.append(_face_row(ident, shard, face, face.cand.reason or Reason.INTERNAL_ERROR.value,
                              None, None, None, None))
    return rows


def _face_row(ident: IdentityPlan, shard: str, face: _Face, reason: str | None,
              image_index: int | None, cluster: int | None, quality: float | None,
              model_name: str | None) -> dict:
    c = face.cand
    return {
        "identity_id": ident.identity_id, "source": face.clip.source, "clip_id": face.clip.clip_id,
        "frame_index": c.frame_index, "time_sec": _float(c.time_sec),
        "bbox": [float(v) for v in c.bbox] if c.bbox is not None else None,
        "det_score": _float(c.det_score), "face_size": _float(c.face_size),
        "yaw": _float(c.yaw), "pitch": _float(c.pitch), "roll": _float(c.roll),
        "sharpness": _float(c.sharpness), "pose_cluster": cluster, "quality": _float(quality),
        "quality_model": model_name, "selected": image_index is not None,
        "image_index": image_index, "reason": reason, "split": ident.split, "shard": shard,
    }


def _image_record(index: int, face: _Face, selection: Selection, face_index: int,
                  model_name: str) -> dict:
    c = face.cand
    return {
        "index": index, "clip_id": face.clip.clip_id, "source": face.clip.source,
        "frame_index": c.frame_index, "yaw": c.yaw, "pitch": c.pitch, "roll": c.roll,
        "quality": selection.quality[face_index], "quality_model": model_name,
        "face_size": c.face_size, "bbox": [float(v) for v in c.bbox],
        "landmarks5": np.asarray(c.landmarks5, dtype=np.float64).reshape(5, 2).tolist()
        if c.landmarks5 is not None else None,
        "pose_cluster": int(selection.clusters.labels[face_index]),
    }


def _identity_row(ident: IdentityPlan, shard: str, faces: list[_Face],
                  selection: Selection | None, clip_rows: list[dict], message: str,
                  model_name: str) -> dict:
    kept = selection is not None and selection.choice.ok
    reason = None if kept else (selection.choice.reason if selection is not None
                                else Reason.INTERNAL_ERROR.value)
    chosen = selection.choice.selected if kept else []
    poses = np.array([[faces[i].cand.yaw, faces[i].cand.pitch, faces[i].cand.roll]
                      for i in chosen], dtype=np.float64).reshape(-1, 3)
    selected_q = [selection.quality[i] for i in chosen] if kept else []
    scored_q = list(selection.quality.values()) if selection is not None else []
    n_clusters = (len(np.unique(selection.clusters.labels))
                  if selection is not None and selection.clusters is not None else 0)
    row = {
        "identity_id": ident.identity_id, "key": ident.key, "split": ident.split, "shard": shard,
        "sources": ident.sources, "source_video_ids": ident.source_video_ids,
        "n_clips": len(ident.clips), "n_clips_ok": sum(r["status"] == Status.OK for r in clip_rows),
        "n_candidates": len(faces), "n_pose_clusters": n_clusters, "n_scored": len(scored_q),
        "mean_quality": float(np.mean(selected_q)) if selected_q else None,
        "median_quality_selected": float(np.median(selected_q)) if selected_q else None,
        "median_quality_scored": float(np.median(scored_q)) if scored_q else None,
        "quality_model": model_name, "status": Status.KEPT if kept else Status.DROPPED,
        "reason": reason, "message": "" if kept else message,
    }
    row.update(pose_spread(poses) if kept else pose_spread(np.zeros((0, 3))))
    return row
