"""Per-clip face analysis: sampled decoding -> detection -> the clip's own person -> FaceMesh
landmarks -> head pose -> aligned crop + face mask -> cheap sharpness pre-rank -> identity
embeddings (`mfhq_faces.embedders`, when the analyzer is given an `IdentityConfig`).

`FaceAnalyzer.analyze_clip` never raises for bad input: every problem becomes a `ClipAnalysis`
with status "failed" (the file cannot be used) or "skipped" (usable file, nothing to take) and a
`Reason`. Only faces with status "candidate" carry a crop and a mask; memory per clip is bounded
by one chunk of full-resolution frames plus the candidates' crops.

Embeddings: with an identity model, up to `IdentityConfig.embeddings_per_track` usable faces of
the clip's person (0: all), spread evenly over the clip, carry an L2-normalised `embedding`; the
rest of the track is the same person by construction (its boxes are linked frame to frame).
Whether the clip's person is the identity's person is decided per identity, across clips
(`curation.pipeline.identity_check.decide_identity`), not here. So is, with an identity model, the
person of a hint-less clip with two people of similar size: both tracks stay candidates marked
`contested` (track 0 and 1) instead of the whole clip becoming `ambiguous_target`; a consumer of
usable faces must run the identity check before selection.

Threads: an analyzer computes on `AnalysisConfig.threads` CPU threads (default 1, the one CPU a
Ray analysis task holds): the decoder, OpenCV (set for the whole process when the analyzer
loads) and the onnxruntime sessions of SCRFD and ArcFace; mediapipe's graphs keep their own.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from curation.faces.decoding import (
    DecodeError,
    FrameSource,
    VideoInfo,
    frame_range,
    iter_frame_chunks,
    open_frames,
    resize_max_side,
    sample_indices,
)
from curation.faces.identity import IdentityConfig
from curation.faces.tracks import ambiguous_target, ranked_tracks, select_target
from curation.records import ClipRecord, Reason, Status
from curation.storage import local_video, local_weights
from mfhq_faces.align import face_mask
from mfhq_faces.detection import Detection, DetectorKind, make_detector
from mfhq_faces.embedders import make_embedder
from mfhq_faces.geometry import Box, face_size
from mfhq_faces.landmarks import FaceMeshLandmarker, face_oval_indices
from mfhq_faces.measure import measure_face
from mfhq_faces.onnx_runtime import OnnxDevice

CANDIDATE, REJECTED = Status.CANDIDATE, Status.REJECTED
# Source-region side / detector box side: about 1.65 for both detectors (the template's eyes are
# 0.25 of the crop apart, a detector box is about 2.4 eye distances wide; bench/identity.py's
# sibling measurement in tests/test_faces_analysis.py checks the range). Faces rejected before
# landmarks record box side x REGION_PER_BOX; a box whose region could not reach the minimum
# even at MAX_REGION_PER_BOX skips FaceMesh.
REGION_PER_BOX = 1.65
MAX_REGION_PER_BOX = 2.5
SHARPNESS_SIDE = 256
HINT_MIN_INSIDE = 0.5   # a hint with less than half its area inside the frame is unusable


@dataclass
class AnalysisConfig:
    sample_fps: float = 2.0           # frames sampled per second of clip, uniform in time
    max_frames_per_clip: int = 48     # cap (uniform subsample of the sampled set)
    detect_max_side: int = 640        # detection runs on frames resized so max side <= this
    # Face size is the side of the source region that becomes the aligned crop (source px): the
    # crop is upsampled crop_size / face_size times. 320 keeps the faces of 512 px processed
    # CelebV-HQ / VFHQ / TalkingHead clips (detector boxes of about 200-340 px, regions of about
    # 330-560 px) and rejects what a 512 crop would have to blow up more than 1.6x.
    min_face_size: int = 320
    crop_size: int = 512              # aligned crop side S
    face_detector: str = DetectorKind.INSIGHTFACE   # DetectorKind
    # where SCRFD and ArcFace run (OnnxDevice): CUDA where onnxruntime offers it, else the CPU
    onnx_device: str = OnnxDevice.AUTO
    insightface_root: str | None = None   # holds models/buffalo_l/ (default: ~/.insightface)
    clip_time_limit_s: float = 300.0  # per-clip budget; exceeding -> Reason.VIDEO_TIMEOUT
    # CPU threads of everything the analyzer computes with: the decoder, OpenCV and the ONNX
    # sessions (SCRFD, ArcFace). 1 because the build runs one analysis task per CPU Ray gives
    # it (num_cpus=1): a library's own default (a thread per core) puts threads of every
    # worker on every core, where they only contend (issue 22). mediapipe sizes its own.
    threads: int = 1
    frames_per_chunk: int = 8         # full-resolution frames held at once
    max_faces_per_frame: int = 5      # largest faces per frame that get landmarks

    def insightface_dir(self) -> str:
        """The insightface model root, `~` expanded (default ~/.insightface)."""
        return str(Path(self.insightface_root or Path.home() / ".insightface").expanduser())


@dataclass
class FaceCandidate:
    clip_id: str
    frame_index: int
    time_sec: float
    bbox: tuple[float, float, float, float]   # x0,y0,x1,y1 in full-res frame px
    det_score: float
    face_size: float                           # px: side of the source region of the crop
    status: str                                # "candidate" | "rejected"
    reason: str | None                         # Reason value when rejected
    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None
    landmarks5: list[list[float]] | None = None   # in crop px
    sharpness: float | None = None             # cheap pre-rank score, higher = sharper
    crop: np.ndarray | None = field(default=None, repr=False)   # S x S x 3 uint8 RGB
    mask: np.ndarray | None = field(default=None, repr=False)   # S x S uint8 {0,255}
    embedding: np.ndarray | None = field(default=None, repr=False)  # (dim,) unit float32
    track: int = 0                             # the clip's person track (0: the clip's own)
    # Two people of similar size and no hint: both tracks (0, 1) are kept as contested
    # candidates and the identity check picks the one that matches the identity's other clips
    # (`curation.pipeline.identity_check`); only with an identity model, else ambiguous_target.
    contested: bool = False
    embedding_model: str | None = None         # the IdentityModel of `embedding`
    identity_distance: float | None = None     # set by the identity check: to the kept person

    def reject(self, reason: Reason) -> None:
        self.status, self.reason = REJECTED, reason.value
        self.crop = self.mask = None

    @property
    def usable(self) -> bool:
        """A candidate that selection can take: crop, mask and a finite pose."""
        return (self.status == CANDIDATE and self.crop is not None and self.mask is not None
                and all(v is not None and np.isfinite(v)
                        for v in (self.yaw, self.pitch, self.roll)))


@dataclass
class ClipAnalysis:
    clip_id: str
    status: str
    reason: str | None
    message: str
    frames_decoded: int
    width: int
    height: int
    fps: float
    num_frames: int
    candidates: list[FaceCandidate]            # every face considered (incl. rejected)
    codec: str | None = None                   # the video stream's codec (VideoInfo.codec)
    decoder: str | None = None                 # what read it: decord, pyav or pillow

    @property
    def usable(self) -> list[FaceCandidate]:
        return [c for c in self.candidates if c.usable]


class _ClipProblem(Exception):
    def __init__(self, status: str, reason: Reason, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def resolve_hint(clip: ClipRecord, info: VideoInfo) -> Box | None:
    """The clip's face box hint in frame pixels, clipped to the frame; None without a hint."""
    if clip.bbox_hint is not None:
        x0, y0, x1, y1 = (float(v) for v in clip.bbox_hint)
    elif clip.bbox_hint_normalized is not None:
        nx0, ny0, nx1, ny1 = (float(v) for v in clip.bbox_hint_normalized)
        x0, y0, x1, y1 = nx0 * info.width, ny0 * info.height, nx1 * info.width, ny1 * info.height
    else:
        return None
    if not all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
        raise _ClipProblem(Status.SKIPPED, Reason.METADATA_ENTRY_INVALID,
                           f"face box hint is empty or invalid: {(x0, y0, x1, y1)}")
    cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
    cx1, cy1 = min(x1, float(info.width)), min(y1, float(info.height))
    inside = max(0.0, cx1 - cx0) * max(0.0, cy1 - cy0) / ((x1 - x0) * (y1 - y0))
    if inside < HINT_MIN_INSIDE:
        raise _ClipProblem(Status.SKIPPED, Reason.BBOX_OUTSIDE_FRAME,
                           f"face box hint {(x0, y0, x1, y1)} is {inside:.0%} inside the "
                           f"{info.width}x{info.height} frame")
    return cx0, cy0, cx1, cy1


def source_region_side(matrix: np.ndarray, crop_size: int) -> float:
    """Side (source px) of the square source region that `matrix` maps onto the crop."""
    return float(crop_size / np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the crop at a fixed size: a cheap blur measure."""
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    if gray.shape[0] != SHARPNESS_SIDE:
        gray = cv2.resize(gray, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


class FaceAnalyzer:
    """Loads the detector and FaceMesh once; analyses clips one after another."""

    def __init__(self, config: AnalysisConfig, identity: IdentityConfig | None = None):
        self.config = config
        self.identity = identity
        # process-wide: OpenCV's pool serves every task this worker runs after this one too
        cv2.setNumThreads(max(1, config.threads))
        self.detector = make_detector(config.face_detector, config.insightface_dir(),
                                      device=config.onnx_device, threads=config.threads)
        # None: no embeddings (no identity config, or --identity-model none)
        self.embedder = (make_embedder(identity.model, config.insightface_dir(),
                                       local_weights(identity.weights),   # a URL: fetched once
                                       device=config.onnx_device, threads=config.threads)
                         if identity is not None else None)
        self.landmarker = FaceMeshLandmarker()
        self._oval = face_oval_indices()

    def providers(self) -> dict[str, str | None]:
        """Where this analyzer's models really run (`mfhq_faces.onnx_runtime.provider_of`)."""
        return {"detector": getattr(self.detector, "provider", None),
                "embedder": None if self.embedder is None else self.embedder.provider}

    def close(self) -> None:
        self.detector.close()
        self.landmarker.close()
        if self.embedder is not None:
            self.embedder.close()

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def analyze_clip(self, clip: ClipRecord) -> ClipAnalysis:
        result = ClipAnalysis(clip.clip_id, "ok", None, "", 0, 0, 0, 0.0, 0, [])
        try:
            fps_hint = clip.extra.get("fps") if isinstance(clip.extra, dict) else None
            # a stored video comes from the node's video cache, fetched once for all the clips
            # cut from it (decord needs a seekable file); a failed copy is video_missing /
            # video_unreadable
            with local_video(clip.video_path, self.config.clip_time_limit_s) as video, \
                    open_frames(video, fps_hint=fps_hint,
                                num_threads=self.config.threads) as source:
                info = source.info
                result.width, result.height = info.width, info.height
                result.fps, result.num_frames = info.fps, info.num_frames
                result.codec, result.decoder = info.codec, info.decoder
                self._analyze_source(clip, source, result)
        except DecodeError as error:
            status = Status.SKIPPED if error.reason == Reason.RANGE_EMPTY else Status.FAILED
            self._finish(result, status, error.reason, error.message)
        except _ClipProblem as problem:
            self._finish(result, problem.status, problem.reason, problem.message)
        except Exception as error:   # a bug or a library failure: record it, keep the run going
            where = traceback.extract_tb(error.__traceback__)[-1]
            self._finish(result, Status.FAILED, Reason.INTERNAL_ERROR,
                         f"{type(error).__name__}: {error} (at {where.filename}:{where.lineno})")
        return result

    @staticmethod
    def _finish(result: ClipAnalysis, status: str, reason: Reason, message: str) -> None:
        result.status, result.reason, result.message = status, reason.value, message
        if status != "ok":
            for face in result.candidates:
                if face.status == CANDIDATE:
                    face.reject(reason)

    def _analyze_source(self, clip: ClipRecord, source: FrameSource,
                        result: ClipAnalysis) -> None:
        started = time.monotonic()
        info = source.info
        first, last = frame_range(info, clip.start_sec, clip.end_sec, clip.start_frame,
                                  clip.end_frame)
        hint = resolve_hint(clip, info)
        indices = sample_indices(first, last, info.fps, self.config.sample_fps,
                                 self.config.max_frames_per_clip, times=info.frame_times)
        per_frame: list[list[Detection]] = []
        faces: list[list[FaceCandidate]] = []
        failed_frames = 0
        for chunk, frames in self._read_chunks(source, indices):
            for index, frame in zip(chunk, frames, strict=True):
                if frame is None:
                    failed_frames += 1
                    continue
                if time.monotonic() - started > self.config.clip_time_limit_s:
                    raise _ClipProblem(Status.FAILED, Reason.VIDEO_TIMEOUT,
                                       f"analysis exceeded {self.config.clip_time_limit_s:.0f} s "
                                       f"after {result.frames_decoded} frames")
                result.frames_decoded += 1
                detections = self._detect(frame)
                per_frame.append(detections)
                faces.append(self._analyze_frame(clip, index, info.time_of(index), frame,
                                                 detections, hint))
        if result.frames_decoded == 0:
            raise DecodeError(Reason.VIDEO_DECODE_ERROR,
                              f"none of the {len(indices)} sampled frames could be decoded")
        self._keep_target_person(per_frame, faces, hint)
        result.candidates = [face for frame_faces in faces for face in frame_faces]
        self._set_clip_status(result, failed_frames, len(indices))
        self.embed_faces(result.usable)

    def embed_faces(self, usable: list[FaceCandidate]) -> None:
        """Embed up to `embeddings_per_track` faces of each track, evenly spread in time."""
        if self.embedder is None or not usable:
            return
        chosen: list[FaceCandidate] = []
        for track in sorted({face.track for face in usable}):
            faces = sorted((f for f in usable if f.track == track), key=lambda f: f.frame_index)
            limit = self.identity.embeddings_per_track
            if 0 < limit < len(faces):
                faces = [faces[int(i)] for i in np.unique(
                    np.round(np.linspace(0, len(faces) - 1, limit)).astype(int))]
            chosen.extend(faces)
        vectors = self.embedder.embed([f.crop for f in chosen],
                                      [np.asarray(f.landmarks5, np.float32) for f in chosen])
        for face, vector in zip(chosen, vectors, strict=True):
            face.embedding, face.embedding_model = vector, self.embedder.model.value

    def _read_chunks(self, source: FrameSource, indices: list[int]):
        """Chunks of frames; a chunk that fails is retried frame by frame (None = undecodable)."""
        size = max(1, self.config.frames_per_chunk)
        for start in range(0, len(indices), size):
            chunk = indices[start:start + size]
            try:
                yield from iter_frame_chunks(source, chunk, size)
            except DecodeError:
                frames = []
                for index in chunk:
                    try:
                        frames.append(source.read([index])[0])
                    except DecodeError:
                        frames.append(None)
                yield chunk, frames

    def _detect(self, frame: np.ndarray) -> list[Detection]:
        small, scale = resize_max_side(frame, self.config.detect_max_side)
        detections = self.detector.detect(small)
        if scale == 1.0:
            return detections
        return [Detection(tuple(v / scale for v in d.bbox), d.score,
                          None if d.keypoints5 is None else d.keypoints5 / scale)
                for d in detections]

    def _analyze_frame(self, clip: ClipRecord, index: int, time_sec: float, frame: np.ndarray,
                       detections: list[Detection], hint: Box | None) -> list[FaceCandidate]:
        """A FaceCandidate per detection; only plausible target faces get landmarks and crops."""
        hinted = select_target([detections], hint)[0] if hint is not None else None
        by_size = sorted(range(len(detections)), key=lambda i: -face_size(detections[i].bbox))
        worth_landmarks = {hinted} if hint is not None else set(
            by_size[:self.config.max_faces_per_frame])
        faces = []
        for i, det in enumerate(detections):
            face = FaceCandidate(clip.clip_id, index, time_sec, det.bbox, det.score,
                                 REGION_PER_BOX * face_size(det.bbox), CANDIDATE, None)
            if MAX_REGION_PER_BOX * face_size(det.bbox) < self.config.min_face_size:
                face.reject(Reason.FACE_TOO_SMALL)
            elif i not in worth_landmarks:
                face.reject(Reason.NOT_TARGET_PERSON)
            else:
                self._describe_face(face, frame)
            faces.append(face)
        return faces

    def _describe_face(self, face: FaceCandidate, frame: np.ndarray) -> None:
        size = self.config.crop_size
        geometry = measure_face(frame, face.bbox, self.landmarker, size)
        if geometry is None:
            face.reject(Reason.LANDMARKS_FAILED)
            return
        face.yaw, face.pitch, face.roll = geometry.pose
        face.face_size = source_region_side(geometry.matrix, size)
        if face.face_size < self.config.min_face_size:
            face.reject(Reason.FACE_TOO_SMALL)
            return
        face.landmarks5 = geometry.crop_points5().tolist()
        face.crop = geometry.crop(frame)
        face.mask = face_mask(geometry.landmarks, self._oval, geometry.matrix, size)
        face.sharpness = sharpness(face.crop)

    def _keep_target_person(self, per_frame: list[list[Detection]],
                            faces: list[list[FaceCandidate]], hint: Box | None) -> None:
        chosen = select_target(per_frame, hint)
        if hint is None and ambiguous_target(per_frame, chosen):
            if self.embedder is not None:
                self._keep_both_people(per_frame, faces)
                return
            for frame_faces in faces:
                for face in frame_faces:
                    if face.status == CANDIDATE:
                        face.reject(Reason.AMBIGUOUS_TARGET)
            return
        for target, frame_faces in zip(chosen, faces, strict=True):
            for i, face in enumerate(frame_faces):
                if i != target:
                    face.reject(Reason.NOT_TARGET_PERSON)

    @staticmethod
    def _keep_both_people(per_frame: list[list[Detection]],
                          faces: list[list[FaceCandidate]]) -> None:
        """The two heaviest tracks stay candidates (track 0, 1, contested); others are not
        the clip's person."""
        tracks = ranked_tracks(per_frame)[:2]
        for frame, frame_faces in enumerate(faces):
            for i, face in enumerate(frame_faces):
                owner = [k for k, track in enumerate(tracks) if track.get(frame) == i]
                if owner:
                    face.track, face.contested = owner[0], True
                else:
                    face.reject(Reason.NOT_TARGET_PERSON)

    @staticmethod
    def _set_clip_status(result: ClipAnalysis, failed_frames: int, sampled: int) -> None:
        notes = [f"{failed_frames} of {sampled} sampled frames failed to decode"] \
            if failed_frames else []
        if not result.candidates:
            FaceAnalyzer._finish(result, Status.SKIPPED, Reason.NO_FACE,
                                 "; ".join(["no face in any sampled frame", *notes]))
            return
        if not result.usable:
            target_reasons = Counter(c.reason for c in result.candidates
                                     if c.reason != Reason.NOT_TARGET_PERSON)
            reason = Reason(target_reasons.most_common(1)[0][0]) if target_reasons \
                else Reason.NOT_TARGET_PERSON
            FaceAnalyzer._finish(result, Status.SKIPPED, reason,
                                 "; ".join([f"no usable face of the clip's person "
                                            f"({dict(Counter(c.reason for c in result.candidates))})",
                                            *notes]))
            return
        result.message = "; ".join([f"{len(result.usable)} candidate faces in "
                                    f"{result.frames_decoded} frames", *notes])
