"""Typed records passed between the curation stages, and the reason codes they carry.

A record that could not be used is still a record: it has `status` != "ok" and a reason code
from `Reason`, so every input ends up as a manifest row instead of an exception.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Reason codes for skipped/failed clips, rejected faces and dropped identities.

    Values are stable strings: they are written to the manifests and documented in the README.
    """

    # enumeration (clips)
    METADATA_UNREADABLE = "metadata_unreadable"      # metadata file missing, not JSON/text, wrong shape
    METADATA_ENTRY_INVALID = "metadata_entry_invalid"  # one entry lacks fields or has bad values
    VIDEO_MISSING = "video_missing"                  # metadata names a video that is not on disk
    BBOX_OUTSIDE_FRAME = "bbox_outside_frame"        # face box hint lies (mostly) outside the frame
    TAKEDOWN = "takedown"                            # listed in --takedown
    # decoding (clips)
    VIDEO_EMPTY = "video_empty"                      # zero-byte file
    VIDEO_UNREADABLE = "video_unreadable"            # decoder cannot open it (truncated, not a video)
    VIDEO_DECODE_ERROR = "video_decode_error"        # opened, but frames fail to decode
    VIDEO_TIMEOUT = "video_timeout"                  # decoding/analysis exceeded the per-clip limit
    RANGE_EMPTY = "range_empty"                      # time/frame range has no frames in the video
    NO_FACE = "no_face"                              # no face detected in any sampled frame
    # faces
    FACE_TOO_SMALL = "face_too_small"                # below --min-face-size
    NOT_TARGET_PERSON = "not_target_person"          # another person than the clip's own
    AMBIGUOUS_TARGET = "ambiguous_target"            # no box hint and two similar-size people
    LANDMARKS_FAILED = "landmarks_failed"            # FaceMesh found no landmarks on the face
    NOT_SELECTED = "not_selected"                    # usable, but another face was chosen
    NOT_SCORED = "not_scored"                        # pre-ranking kept it from the quality model
    # identities
    TOO_FEW_FACES = "too_few_faces"                  # fewer usable faces than images-per-identity
    TOO_FEW_POSE_CLUSTERS = "too_few_pose_clusters"  # cannot take faces from enough distinct clusters
    INTERNAL_ERROR = "internal_error"                # a bug or an unexpected library error; message has it
    # clips (appended)
    WORKER_CRASHED = "worker_crashed"                # the worker process died each time it analysed this clip
    # identity checks (appended)
    IDENTITY_MISMATCH = "identity_mismatch"          # faces, clips: another person than the identity's dominant one
    NO_DOMINANT_PERSON = "no_dominant_person"        # identities: its faces show several people, none clearly the most
    DUPLICATE_ACROSS_SPLITS = "duplicate_across_splits"  # identities: the same person as an identity of the other split, removed from the minority split
    # decoding (appended)
    VIDEO_NO_STREAM = "video_no_stream"              # the file holds no video stream (audio only, ...)
    VIDEO_CODEC_UNSUPPORTED = "video_codec_unsupported"  # no decoder here for the video stream's codec
    VIDEO_TRUNCATED = "video_truncated"              # the container's index lists more frames than the file holds


class SourceKind(StrEnum):
    """The datasets a build reads (`--source KIND=DIR`), in the order commands list them."""

    CELEBVHQ = "celebvhq"
    CELEBVTEXT = "celebvtext"
    VFHQ = "vfhq"
    TALKINGHEAD1KH = "talkinghead1kh"
    FOLDER = "folder"         # one subfolder of videos per identity


class Status(StrEnum):
    """The status of a record in the manifests (stable strings, like `Reason`).

    Clips are ok, skipped (usable file, nothing to take) or failed (the file cannot be used);
    faces found by the analysis are candidates or rejected; identities are kept or dropped.
    """

    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANDIDATE = "candidate"
    REJECTED = "rejected"
    KEPT = "kept"
    DROPPED = "dropped"


# Reasons a face is rejected by the analysis, before selection; every other face row of the
# faces manifest is a usable candidate (selected, or not_selected / not_scored, or dropped
# with its identity).
FACE_REJECTIONS = frozenset({Reason.FACE_TOO_SMALL, Reason.NOT_TARGET_PERSON,
                             Reason.AMBIGUOUS_TARGET, Reason.LANDMARKS_FAILED,
                             Reason.IDENTITY_MISMATCH})


_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")
SAFE_ID_MAX = 100


def safe_id(original: str) -> str:
    """A file-name and shard-key safe version of an id from metadata or a file name.

    Keeps ids that are already safe unchanged (so real dataset ids round-trip); otherwise
    transliterates to ASCII, replaces anything outside [A-Za-z0-9._-] with '_', strips leading
    dots (no hidden files, no '..') and appends a short hash of the original so that two
    different unsafe ids never collide.
    """
    if original and len(original) <= SAFE_ID_MAX and not _SAFE_ID.search(original) \
            and not original.startswith("."):
        return original
    ascii_ = unicodedata.normalize("NFKD", original).encode("ascii", "ignore").decode()
    cleaned = _SAFE_ID.sub("_", ascii_).lstrip("._")[: SAFE_ID_MAX - 11] or "id"
    digest = hashlib.sha1(original.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned}_{digest}"


@dataclass(frozen=True, slots=True)
class ClipRecord:
    """One input clip as a source adapter found it.

    Slotted: a planning driver holds one per clip of every dataset (~620k at MFHQ's size), and
    a per-instance __dict__ would double their memory.

    Coordinates and ranges refer to the video file at `video_path` as decoded (for raw videos:
    the raw video, with `start_sec/end_sec` and `bbox_hint` from the metadata).
    """

    source: str                      # a SourceKind value
    clip_id: str                     # safe id (see safe_id), unique within the source
    original_clip_id: str            # as written in the metadata / file name
    identity_id: str                 # global identity id, e.g. "yt:<ytid>", "vfhq:<vid>:P<pid>"
    source_video_id: str             # the split is assigned by a stable hash of this
    video_path: str | None           # absolute path to an mp4, or to a folder of frames (VFHQ)
    status: str = Status.OK          # Status.OK | SKIPPED | FAILED
    reason: str | None = None        # a Reason value when status != ok
    message: str = ""                # human-readable detail
    start_sec: float | None = None   # time range inside the video (None: from the start/to the end)
    end_sec: float | None = None
    start_frame: int | None = None   # frame range inside the video, inclusive (alternative to time)
    end_frame: int | None = None
    bbox_hint: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in video pixels
    bbox_hint_normalized: tuple[float, float, float, float] | None = None  # 0..1, when pixels unknown
    is_raw: bool = False             # a raw (uncropped, untrimmed) download + metadata
    license: str = ""                # licence / terms of the source dataset
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able: texts, attributes, ...

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def to_row(self) -> dict[str, Any]:
        """A flat dict for the `clips` manifest (extra is JSON-encoded by the writer)."""
        return dataclasses.asdict(self)


@dataclass
class SourceProblem:
    """A problem found while enumerating that is not tied to one clip (e.g. unreadable metadata)."""

    source: str
    path: str
    reason: str
    message: str
