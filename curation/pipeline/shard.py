"""Stages 3 and 4 of the build, plain Python: an identity's selection, then its shard's tar.

    select_identity(ident, shard, outcomes, score, selection=, identity=, crop_size=,
                    quality_model=) -> IdentityResult       (per identity, once its clips are in)
    write_shard(folder, spec, results) -> ShardResult       (per shard, once its identities are)

`select_identity` runs the moment an identity's last clip is analysed: its clips' candidates
from their work files (stage 1; the fields first, then the pixels of the scored faces only, so
each byte of a work file is read at most once), the identity check, the pose over-clustering
and sharpness pre-rank, the quality model (`score`, the quality actors) on the faces selection
wants scored, in fixed requests of that identity, the choice of N faces, and the sample (crops
as JPEG, masks as PNG, the record as JSON) with the identity's manifest rows. `write_shard`
only writes: the samples in plan order under a hidden name, the parts next, the tar renamed
last (a shard is the unit of commit), then the shard's work files are deleted. The output is a
function of the plan, the settings and the clips alone: the same bytes whatever the number of
workers, nodes or the order in which identities finish. Memory: one identity's candidate
fields and scored crops at a time; a shard's encoded samples.

Fault isolation: a clip that failed is a clips row with its reason and the identity goes on with
its other clips; an identity whose selection raises is dropped with internal_error and the shard
goes on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curation import build_folder as bf
from curation.faces.quality import QualityModel
from curation.pipeline.analyze import (
    ClipOutcome,
    candidates_of,
    clip_key,
    describe,
    read_meta,
    read_work,
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
from curation.pipeline.tar_writer import (
    Sample,
    commit_shard,
    encode_jpeg,
    encode_json,
    encode_png_mask,
    stage_shard,
)
from curation.records import ClipRecord, Reason, Status
from mfhq_contract import FORMAT_VERSION, JSON_EXT, image_ext, mask_ext

if TYPE_CHECKING:
    from curation.faces.analysis import FaceCandidate
    from curation.faces.identity import IdentityConfig
    from curation.pipeline.selection import SelectionConfig

# score(crops, request_index) -> scores: the quality pool's, or a local scorer's.
ScoreFn = Callable[[list[np.ndarray], int], np.ndarray]


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
    pixels: tuple[np.ndarray, np.ndarray] | None = None   # (crop, mask), once read


@dataclass
class IdentityResult:
    """One identity's part of its shard: the sample (None when the identity is dropped) and its
    rows of the clips, faces and identities manifests."""

    key: str
    members: list[tuple[str, bytes]] | None
    rows: dict[str, list[dict]]


@dataclass
class PreparedIdentity:
    """An identity up to the quality model: its clip rows, faces (the scored ones with their
    masks; their crops travel beside, see `prepare_identity`), the identity check's decision
    and its selection so far (a final Selection, a PendingSelection, or None after an error)."""

    ident: IdentityPlan
    shard: str
    clip_rows: list[dict]
    faces: list[_Face]
    rejected: list[_Face]
    decision: IdentityDecision
    pending: Selection | PendingSelection | None
    message: str = ""


def prepare_identity(ident: IdentityPlan, shard: str, outcomes: dict[str, ClipOutcome], *,
                     selection: SelectionConfig, identity: IdentityConfig
                     ) -> tuple[PreparedIdentity, list[np.ndarray]]:
    """An identity's clips (outcomes keyed by `clip_key`, and their work files), the identity
    check, pose clusters and sharpness pre-rank: (the prepared identity, the crops the quality
    model must score, in `pending.scored` order). Reads each work file's fields, then only the
    pixels of the scored faces. Never raises for a bad clip or work file: those become rows
    with their reasons."""
    clip_rows, faces, rejected = [], [], []
    for clip in ident.clips:
        outcome = outcomes.get(clip_key(clip)) or ClipOutcome.failed(
            Reason.INTERNAL_ERROR, "no analysis outcome reached the identity stage")
        cands: list = []
        if outcome.work:
            try:
                cands = candidates_of(read_meta(Path(outcome.work)))
            except Exception as err:  # noqa: BLE001 - an unreadable work file fails the clip
                outcome = ClipOutcome.failed(Reason.INTERNAL_ERROR,
                                             f"work file unreadable: {describe(err)}")
        usable = [c for c in cands if c.usable_in_work]
        faces += [_Face(clip, c, outcome.work) for c in usable]
        rejected += [_Face(clip, c, outcome.work) for c in cands if not c.usable_in_work]
        clip_rows.append(_clip_row(clip, outcome, ident, shard, len(cands), len(usable)))
    # Identity check (issue 13): other people's faces leave before selection; an identity
    # without a dominant person is dropped with that reason.
    faces, rejected, decision = check_identity(faces, rejected, clip_rows, identity)
    prepared = PreparedIdentity(ident, shard, clip_rows, faces, rejected, decision, None)
    crops: list[np.ndarray] = []
    if decision.drop_reason is not None:
        prepared.pending = dropped_selection(decision)
        return prepared, crops
    try:
        s = selection
        poses = np.array([[f.cand.yaw, f.cand.pitch, f.cand.roll] for f in faces],
                         dtype=np.float64).reshape(-1, 3)
        sharpness = np.array([f.cand.sharpness or 0.0 for f in faces], dtype=np.float64)
        pending = plan_selection(poses, sharpness, n_images=s.images_per_identity,
                                 pose_clusters=s.pose_clusters,
                                 scored_per_cluster=s.scored_per_cluster, seed=s.seed)
        if isinstance(pending, PendingSelection):
            scored = [faces[i] for i in pending.scored]
            _load_pixels(scored)
            crops = [face.pixels[0] for face in scored]
            for face in scored:          # the crops travel once, beside the prepared identity
                face.pixels = (None, face.pixels[1])
        prepared.pending = pending
    except Exception as err:  # noqa: BLE001 - one identity must not lose the shard
        prepared.message = describe(err)
    return prepared, crops


def finish_identity(prepared: PreparedIdentity, crops: list[np.ndarray], scores, *,
                    images_per_identity: int, crop_size: int, quality_model: str
                    ) -> IdentityResult:
    """The choice of N faces from the quality model's `scores` of `crops` (as
    `prepare_identity` gave them), the sample (crops as JPEG, masks as PNG, the record as JSON)
    and the identity's manifest rows. `scores` may be an exception (the model failed): the
    identity is then dropped with its message."""
    model_name = QualityModel(quality_model).value
    ident, shard, faces = prepared.ident, prepared.shard, prepared.faces
    chosen, message, members = prepared.pending, prepared.message, None
    if isinstance(chosen, PendingSelection):
        try:
            if isinstance(scores, BaseException):
                raise scores
            for face, crop in zip([faces[i] for i in chosen.scored], crops, strict=True):
                face.pixels = (crop, face.pixels[1])
            chosen = finish_selection(chosen, scores, images_per_identity)
        except Exception as err:  # noqa: BLE001 - one identity must not lose the shard
            chosen, message = None, describe(err)
    if chosen is not None and chosen.choice.ok:
        try:
            members = _sample(ident, faces, chosen, crop_size, model_name)
        except Exception as err:  # noqa: BLE001 - a broken work file loses one identity
            chosen, message = None, describe(err)
    message = message or (chosen.choice.message if chosen is not None else "")
    rows = {"clips": prepared.clip_rows,
            "faces": _face_rows(ident, shard, faces, prepared.rejected, chosen, model_name)}
    row = _identity_row(ident, shard, faces, chosen, prepared.clip_rows, message, model_name)
    rows["identities"] = [{**row, **identity_columns(prepared.decision,
                                                     row["status"] == Status.KEPT,
                                                     rows["faces"])}]
    return IdentityResult(ident.key, members, rows)


def select_identity(ident: IdentityPlan, shard: str, outcomes: dict[str, ClipOutcome],
                    score: ScoreFn, *, selection: SelectionConfig, identity: IdentityConfig,
                    crop_size: int, quality_model: str, first_request: int = 0
                    ) -> IdentityResult:
    """`prepare_identity`, the quality model (`score`, in fixed requests numbered from
    `first_request`), `finish_identity`, in this process: what the build's identity stage
    does with its tasks and actors, for tests and tools."""
    prepared, crops = prepare_identity(ident, shard, outcomes, selection=selection,
                                       identity=identity)
    try:
        scores = score_in_requests(score, crops, first_request) if crops else np.zeros(0)
    except Exception as err:  # noqa: BLE001 - handed to finish_identity: the identity drops
        scores = err
    return finish_identity(prepared, crops, scores,
                           images_per_identity=selection.images_per_identity,
                           crop_size=crop_size, quality_model=quality_model)


def _load_pixels(faces: list[_Face]) -> None:
    """Set `face.pixels` = (crop, mask) for these faces, reading each work file once."""
    by_work: dict[str, dict[int, _Face]] = {}
    for face in faces:
        by_work.setdefault(face.work, {})[face.cand.work_index] = face
    for work, wanted in by_work.items():
        images = read_work(work, lambda cand, w=wanted: cand.work_index in w).images
        for index, face in wanted.items():
            if index not in images:
                raise ValueError(f"{work} lacks the pixels of candidate {index}")
            face.pixels = images[index]


def _sample(ident: IdentityPlan, faces: list[_Face], selection: Selection, crop_size: int,
            model_name: str) -> list[tuple[str, bytes]]:
    """The identity's sample members: the record, then the chosen crops as JPEG and their
    masks as PNG (chosen faces are scored faces, whose pixels `_select` read)."""
    chosen = [faces[i] for i in selection.choice.selected]
    records = [_image_record(index, faces[face_index], selection, face_index, model_name)
               for index, face_index in enumerate(selection.choice.selected)]
    record = {
        "format_version": FORMAT_VERSION, "key": ident.key, "identity_id": ident.identity_id,
        "sources": ident.sources, "source_video_ids": ident.source_video_ids,
        "split": ident.split, "crop_size": crop_size, "images": records,
    }
    members = [(JSON_EXT, encode_json(record))]
    members += [(image_ext(i), encode_jpeg(f.pixels[0])) for i, f in enumerate(chosen)]
    members += [(mask_ext(i), encode_png_mask(f.pixels[1])) for i, f in enumerate(chosen)]
    return members


def write_shard(folder: bf.BuildFolder, spec: ShardSpec, results: list[IdentityResult],
                started: float | None = None) -> ShardResult:
    """Write and commit one shard from its identities' results, in plan order (`results` in
    the order of `spec.identities`); then delete the shard's work files."""
    started = time.monotonic() if started is None else started
    if [r.key for r in results] != [i.key for i in spec.identities]:
        raise ValueError(f"{spec.name}: identity results are not the plan's identities in order")
    samples = [Sample(r.key, r.members) for r in results if r.members is not None]
    rows: dict[str, list[dict]] = {"clips": [], "faces": [], "identities": []}
    for result in results:
        for table, table_rows in result.rows.items():
            rows[table] += table_rows
    staged = stage_shard(folder.tar_path(spec.name), samples)
    # Parts first, tar last: a tar under its final name implies its parts are written.
    bf.write_shard_parts(folder, spec.name, staged.sha256, rows)
    commit_shard(staged)
    bf.remove(work_dir(folder, spec.name), recursive=True)
    clips_ok = sum(1 for r in rows["clips"] if r["status"] == Status.OK)
    return ShardResult(spec.name, spec.split, len(samples), len(spec.identities), staged.bytes,
                       staged.sha256, clips_ok, len(rows["clips"]) - clips_ok,
                       time.monotonic() - started)


def assemble_shard(folder: bf.BuildFolder, spec: ShardSpec, outcomes: dict[str, ClipOutcome],
                   score: ScoreFn, *, selection: SelectionConfig, identity: IdentityConfig,
                   crop_size: int, quality_model: str) -> ShardResult:
    """Both stages in this process, one identity after another (tests, tools): the same bytes
    as the build's per-identity tasks."""
    started = time.monotonic()
    results = [select_identity(ident, spec.name, outcomes, score, selection=selection,
                               identity=identity, crop_size=crop_size,
                               quality_model=quality_model)
               for ident in spec.identities]
    return write_shard(folder, spec, results, started)


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
