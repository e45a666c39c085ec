"""Stage 3 of the build, per shard (CPU): from the clips' work files to a committed shard.

    assemble_shard(config, folder, spec, outcomes, score) -> ShardResult

For every identity of the shard: its clips' candidates from their work files (stage 1), the
usable ones over-clustered by pose and pre-ranked by sharpness; then the quality model (stage 2,
`score`) on the faces selection wants scored, in fixed requests over the whole shard; then the
choice of N faces, the sample (crops as JPEG, masks as the analysis wrote them) and the manifest
rows. The tar is written under a hidden name, the parts next, the tar renamed last (a shard is
the unit of commit); then the shard's work files are deleted. The output is a function of the
plan, the settings and the clips alone: the same bytes whatever the number of workers, nodes or
the order in which tasks finish. Memory: one identity's candidate fields and one request of
encoded crops at a time, and the shard's encoded samples.

Fault isolation: a clip that failed is a clips row with its reason and the identity goes on with
its other clips; an identity whose selection raises is dropped with internal_error and the shard
goes on.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from curation import build_folder as bf
from curation.pipeline.analyze import (
    ClipOutcome,
    clip_key,
    decode_png,
    describe,
    read_candidates,
    read_images,
    work_dir,
)
from curation.pipeline.identity_check import (
    IdentityDecision,
    check_identity,
    dropped_selection,
    face_columns,
    identity_columns,
)
from curation.pipeline.plan import IdentityPlan, ShardSpec
from curation.pipeline.scoring import score_in_requests
from curation.pipeline.selection import (
    PendingSelection,
    Selection,
    finish_selection,
    plan_selection,
    pose_spread,
)
from curation.pipeline.tar_writer import Sample, commit_shard, encode_jpeg, encode_json, stage_shard
from curation.faces.quality import QualityModel
from curation.records import ClipRecord, Reason, Status
from mfhq_contract import FORMAT_VERSION, JSON_EXT, image_ext, mask_ext

if TYPE_CHECKING:
    from curation.pipeline.config import BuildConfig
    from curation.faces.analysis import FaceCandidate

# score(crops_png, request_index) -> scores: the quality pool's, or a local scorer's.
ScoreFn = Callable[[list[bytes], int], np.ndarray]


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
    """A candidate face with the clip it came from and its work file."""

    clip: ClipRecord
    cand: FaceCandidate
    work: str | None


@dataclass
class _Identity:
    """One identity of the shard between the stages of its assembly."""

    ident: IdentityPlan
    clip_rows: list[dict]
    faces: list[_Face]
    rejected: list[_Face]
    pending: Selection | PendingSelection | None
    message: str = ""
    identity: IdentityDecision | None = None   # the identity check's decision (issue 13)


def assemble_shard(config: BuildConfig, folder: bf.BuildFolder, spec: ShardSpec,
                   outcomes: dict[str, ClipOutcome], score: ScoreFn) -> ShardResult:
    """Select, encode and commit one shard from its clips' outcomes and work files."""
    started = time.monotonic()
    model_name = QualityModel(config.quality.model).value
    idents = [_gather(config, ident, spec.name, outcomes) for ident in spec.identities]
    selections = _score_and_choose(config, idents, score)
    rows: dict[str, list[dict]] = {"clips": [], "faces": [], "identities": []}
    samples: list[Sample] = []
    for item, selection in zip(idents, selections, strict=True):
        message = item.message or (selection.choice.message if selection is not None else "")
        if selection is not None and selection.choice.ok:
            try:
                samples.append(_sample(config, item, selection, model_name))
            except Exception as err:  # noqa: BLE001 - a broken work file loses one identity
                selection, message = None, describe(err)
        rows["clips"] += item.clip_rows
        rows["faces"] += _face_rows(item.ident, spec.name, item.faces, item.rejected, selection,
                                    model_name)
        row = _identity_row(item.ident, spec.name, item.faces, selection, item.clip_rows,
                            message, model_name)
        rows["identities"].append({**row, **identity_columns(item.identity,
                                                             row["status"] == Status.KEPT)})
    staged = stage_shard(folder.tar_path(spec.name), samples)
    # Parts first, tar last: a tar under its final name implies its parts are written.
    bf.write_shard_parts(folder, spec.name, staged.sha256, rows)
    commit_shard(staged)
    shutil.rmtree(work_dir(folder, spec.name), ignore_errors=True)
    clips_ok = sum(1 for r in rows["clips"] if r["status"] == Status.OK)
    return ShardResult(spec.name, spec.split, len(samples), len(spec.identities), staged.bytes,
                       staged.sha256, clips_ok, len(rows["clips"]) - clips_ok,
                       time.monotonic() - started)


def _gather(config: BuildConfig, ident: IdentityPlan, shard: str,
            outcomes: dict[str, ClipOutcome]) -> _Identity:
    """An identity's clip rows and candidates (fields only) and its selection up to scoring."""
    clip_rows, faces, rejected = [], [], []
    for clip in ident.clips:
        outcome = outcomes.get(clip_key(clip)) or ClipOutcome.failed(
            Reason.INTERNAL_ERROR, "no analysis outcome reached the assembly")
        cands: list = []
        if outcome.work:
            try:
                cands = read_candidates(outcome.work)
            except Exception as err:  # noqa: BLE001 - an unreadable work file fails the clip
                outcome = ClipOutcome.failed(Reason.INTERNAL_ERROR,
                                             f"work file unreadable: {describe(err)}")
        usable = [c for c in cands if c.usable_in_work]
        faces += [_Face(clip, c, outcome.work) for c in usable]
        rejected += [_Face(clip, c, outcome.work) for c in cands if not c.usable_in_work]
        clip_rows.append(_clip_row(clip, outcome, ident, shard, len(cands), len(usable)))
    # Identity check (issue 13): other people's faces leave before selection; an identity
    # without a dominant person is dropped with that reason.
    faces, rejected, decision = check_identity(faces, rejected, clip_rows, config.identity)
    item = _Identity(ident, clip_rows, faces, rejected, None, identity=decision)
    if decision.drop_reason is not None:
        item.pending = dropped_selection(decision)
        return item
    s = config.selection
    try:
        poses = np.array([[f.cand.yaw, f.cand.pitch, f.cand.roll] for f in faces],
                         dtype=np.float64).reshape(-1, 3)
        sharpness = np.array([f.cand.sharpness or 0.0 for f in faces], dtype=np.float64)
        item.pending = plan_selection(poses, sharpness, n_images=s.images_per_identity,
                                      pose_clusters=s.pose_clusters,
                                      scored_per_cluster=s.scored_per_cluster, seed=s.seed)
    except Exception as err:  # noqa: BLE001 - one identity must not lose the shard
        item.message = describe(err)
    return item


def _crops_png(faces: list[_Face]) -> list[bytes]:
    """The crops of these faces as PNG bytes, reading each work file once."""
    by_work: dict[str, set[int]] = {}
    for face in faces:
        by_work.setdefault(face.work, set()).add(face.cand.work_index)
    images = {work: read_images(work, indices) for work, indices in by_work.items()}
    return [images[f.work][f.cand.work_index][0] for f in faces]


def _score_and_choose(config: BuildConfig, idents: list[_Identity], score: ScoreFn
                      ) -> list[Selection | None]:
    """Score every face any identity of the shard wants scored, in fixed requests in shard
    order (so the same requests whatever the scheduling), then choose per identity."""
    wanted: list[tuple[int, int]] = []          # (identity position, face index)
    for pos, item in enumerate(idents):
        if isinstance(item.pending, PendingSelection):
            wanted += [(pos, i) for i in item.pending.scored]
    scores: dict[tuple[int, int], float] = {}
    failed: dict[int, str] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        try:
            crops = _crops_png([idents[p].faces[i] for p, i in chunk])
            values = score_in_requests(score, crops)
            scores.update(zip(chunk, (float(v) for v in values), strict=True))
        except Exception as err:  # noqa: BLE001 - those identities are dropped, the rest go on
            for p, _ in chunk:
                failed.setdefault(p, describe(err))
    out: list[Selection | None] = []
    for pos, item in enumerate(idents):
        pending = item.pending
        if pos in failed:
            item.message, pending = failed[pos], None
        if isinstance(pending, PendingSelection):
            try:
                pending = finish_selection(pending, [scores[(pos, i)] for i in pending.scored],
                                           config.selection.images_per_identity)
            except Exception as err:  # noqa: BLE001
                item.message, pending = describe(err), None
        out.append(pending)
    return out


# Faces whose crops are read and scored together (a multiple of the pool's request size, so
# chunking does not change which crops share a request).
_CHUNK = 64 * 8


def _sample(config: BuildConfig, item: _Identity, selection: Selection,
            model_name: str) -> Sample:
    chosen = [item.faces[i] for i in selection.choice.selected]
    by_work: dict[str, set[int]] = {}
    for face in chosen:
        by_work.setdefault(face.work, set()).add(face.cand.work_index)
    images = {work: read_images(work, indices) for work, indices in by_work.items()}
    records = [_image_record(index, item.faces[face_index], selection, face_index, model_name)
               for index, face_index in enumerate(selection.choice.selected)]
    ident = item.ident
    record = {
        "format_version": FORMAT_VERSION, "key": ident.key, "identity_id": ident.identity_id,
        "sources": ident.sources, "source_video_ids": ident.source_video_ids,
        "split": ident.split, "crop_size": config.analysis.crop_size, "images": records,
    }
    members = [(JSON_EXT, encode_json(record))]
    pngs = [images[f.work][f.cand.work_index] for f in chosen]
    members += [(image_ext(i), encode_jpeg(decode_png(crop))) for i, (crop, _) in enumerate(pngs)]
    members += [(mask_ext(i), mask) for i, (_, mask) in enumerate(pngs)]
    return Sample(ident.key, members)


# --- rows -------------------------------------------------------------------------------------

def _float(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _clip_row(clip: ClipRecord, outcome: ClipOutcome, ident: IdentityPlan, shard: str,
              n_faces: int, n_candidates: int) -> dict:
    row = _record_row(clip, stage="analysis")
    row.update(status=outcome.status, reason=outcome.reason, message=outcome.message,
               n_faces=n_faces, n_candidates=n_candidates,
               analysis_seconds=round(outcome.seconds, 3), split=ident.split, shard=shard,
               frames_decoded=outcome.frames_decoded, width=outcome.width,
               height=outcome.height, fps=_float(outcome.fps), num_frames=outcome.num_frames,
               codec=outcome.codec, decoder=outcome.decoder)
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
        **face_columns(c),   # track, embedding, identity_model, identity_distance (issue 13)
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
