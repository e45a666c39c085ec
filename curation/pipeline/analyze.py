"""Stage 1 of the build, per clip (CPU): analyse one clip and leave its faces in the work area.

    analyze_clip(analysis, identity, folder, shard, clip) -> ClipOutcome   (never raises)

runs the face analyzer (decode the sampled frames, detect, the clip's own person, landmarks,
pose, aligned crop + mask, sharpness; models loaded once per worker process) and writes the
result to `OUTPUT/work/<shard part>/<clip hash>.tar`: `meta.json` (the ClipAnalysis and every
candidate's fields, `WORK_FORMAT`) and, per usable candidate, its crop as raw RGB bytes
(`c<i>.rgb`, S x S x 3) and its mask as packed bits (`m<i>.bits`, the mask is 0/255 only).
Crops travel between stages as these files (on the shared filesystem, or as objects of an
output on a store: uploaded whole, read in ranges by the identity stage on any node; see
`curation.build_folder.store`), never through the driver; the driver receives the small
ClipOutcome only. Why the store rather than Ray's object store when the output is a store:
a work file outlives a killed driver, so a resumed build analyses only the clips that have
none, exactly as on a disk.

Why raw pixels: most faces of a clip are never used (selection scores about 3 per pose cluster
and keeps 8 per identity), so the work file must cost next to nothing to write. Measured on
this 2-CPU machine per 512 px face: a level-1 PNG of the crop costs 21 ms to encode and 8 ms to
decode, raw bytes + packed mask 0.14 ms and 0.02 ms, for 0.8 MB instead of 0.47 MB on disk; the
output bytes are the same (the shard's JPEG and mask PNG are encoded from the same pixels, by
the identity stage, only for the chosen faces). Which faces selection will want cannot be known
per clip (the pose clusters span all of an identity's clips), and re-cutting from re-decoded
frames would decode the scored frames twice.

A work file is a cache with the same atomic-commit rule as everything else: once it exists the
clip's analysis is done, so a killed build restarted later analyses only the clips that have
none; a work file of another format (an older build) is analysed again. It is read once, by its
identity's stage; the shard deletes its work files after the shard is committed.

Nothing is written while a clip is analysed: the driver learns when a worker started a clip
from the executor's clip clock (`curation.executor.pool`), not from files, so worker nodes
need share no filesystem with the driver. An output that refuses the work file
(`bf.is_output_full`) is the output's failure, not the clip's: `analyze_clip` raises it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curation import build_folder as bf
from curation.records import ClipRecord, Reason, Status

if TYPE_CHECKING:
    from curation.faces.analysis import AnalysisConfig, ClipAnalysis, FaceAnalyzer, FaceCandidate
    from curation.faces.identity import IdentityConfig

WORK_DIR = "work"
WORK_FORMAT = 2         # 1: PNG crops and masks; 2: raw crops, packed masks
_META = "meta.json"

# Models loaded once per worker process, keyed by the analysis settings they were made for.
_ANALYZERS: dict[str, FaceAnalyzer] = {}


def clip_key(clip: ClipRecord) -> str:
    return f"{clip.source}:{clip.clip_id}"


def _clip_hash(clip: ClipRecord) -> str:
    return hashlib.sha1(clip_key(clip).encode("utf-8", "surrogatepass")).hexdigest()[:20]


def work_dir(folder: bf.BuildFolder, shard: str) -> Path:
    from curation import manifests

    return folder.output_root / WORK_DIR / manifests.part_name(shard).removesuffix(
        ".parquet")


def work_path(folder: bf.BuildFolder, shard: str, clip: ClipRecord) -> Path:
    return work_dir(folder, shard) / f"{_clip_hash(clip)}.tar"


@dataclass
class ClipOutcome:
    """What became of one clip: the clips-manifest fields of its outcome, its analysis summary
    and where its faces are (None when it failed before any face was recorded)."""

    status: str
    reason: str | None
    message: str
    seconds: float
    work: str | None = None                 # the work file
    frames_decoded: int | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    num_frames: int | None = None
    node: str | None = None                 # the Ray node that analysed it
    # The task's wall-clock span (time.time()), set by whoever ran it: the build's timeline.
    started_at: float | None = None
    ended_at: float | None = None
    codec: str | None = None                # the video stream's codec, as ffmpeg names it
    decoder: str | None = None              # decord, pyav or pillow (frame folders)

    @classmethod
    def failed(cls, reason: Reason, message: str, seconds: float = 0.0) -> ClipOutcome:
        return cls(Status.FAILED, reason.value, message, seconds)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(err).__name__}: {err}{where}"[:2000]


def _analyzer(analysis: AnalysisConfig, identity: IdentityConfig) -> FaceAnalyzer:
    from curation.faces.analysis import FaceAnalyzer

    key = json.dumps([dataclasses.asdict(analysis), dataclasses.asdict(identity)],
                     sort_keys=True, default=str)
    if key not in _ANALYZERS:
        _ANALYZERS.clear()
        _ANALYZERS[key] = FaceAnalyzer(analysis, identity)   # issue 13: embeddings
    return _ANALYZERS[key]


def load_models(analysis: AnalysisConfig, identity: IdentityConfig) -> dict[str, str | None]:
    """Load this process's analyzer now (otherwise the first clip loads it); returns where its
    models run (`FaceAnalyzer.providers`: onnxruntime's CUDA or CPU provider, or mediapipe)."""
    return _analyzer(analysis, identity).providers()


def analyze_clip(analysis: AnalysisConfig, identity: IdentityConfig, folder: bf.BuildFolder,
                 shard: str, clip: ClipRecord) -> ClipOutcome:
    """Analyse one clip into its work file (reused when it exists and has this version's
    format). Raises only the OSError of an output that refuses writes (`bf.is_output_full`);
    any other failure is the clip's outcome. `analysis` and `identity` are the build's
    sections of those names."""
    path = work_path(folder, shard, clip)
    if bf.exists(path):
        try:
            return read_outcome(path)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is simply redone
            bf.remove(path)
    started = time.monotonic()
    try:
        result = _analyzer(analysis, identity).analyze_clip(clip)
        outcome = _outcome_of(result, time.monotonic() - started)
    except Exception as err:  # noqa: BLE001 - one bad clip must not lose the identity
        _ANALYZERS.clear()      # a fresh analyzer for the next clip
        return ClipOutcome.failed(Reason.INTERNAL_ERROR, describe(err),
                                  time.monotonic() - started)
    try:
        write_work(path, result, outcome)
    except Exception as err:  # noqa: BLE001 - the output's failure is raised, not recorded
        if bf.is_output_full(err):
            raise               # the build stops (exit 3); a rerun analyses the clip again
        return ClipOutcome.failed(Reason.INTERNAL_ERROR, describe(err),
                                  time.monotonic() - started)
    outcome.work = str(path)
    return outcome


def _outcome_of(analysis: ClipAnalysis, seconds: float) -> ClipOutcome:
    def number(value, kind):
        return None if value is None else kind(value)

    return ClipOutcome(str(analysis.status), analysis.reason, analysis.message or "", seconds,
                       frames_decoded=number(analysis.frames_decoded, int),
                       width=number(analysis.width, int), height=number(analysis.height, int),
                       fps=number(analysis.fps, float), num_frames=number(analysis.num_frames, int),
                       codec=analysis.codec, decoder=analysis.decoder)


# --- the work file ------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def write_work(path: Path, analysis: ClipAnalysis, outcome: ClipOutcome) -> None:
    """The clip's analysis as one tar: meta.json, then c<i>.rgb / m<i>.bits per usable face."""
    import tarfile

    candidates, members = [], []
    for i, cand in enumerate(analysis.candidates):
        fields = {f.name: _jsonable(getattr(cand, f.name)) for f in dataclasses.fields(cand)
                  if f.name not in ("crop", "mask")}
        fields["usable"] = bool(cand.usable)
        candidates.append(fields)
        if cand.usable:
            crop = np.ascontiguousarray(cand.crop, dtype=np.uint8)
            members.append((f"c{i}.rgb", crop.tobytes()))
            members.append((f"m{i}.bits", np.packbits(np.asarray(cand.mask) > 0).tobytes()))
            fields["crop_shape"] = list(crop.shape)
    meta = {"work_format": WORK_FORMAT, "outcome": outcome.to_json(),
            "clip_id": analysis.clip_id, "candidates": candidates}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in [(_META, json.dumps(meta, allow_nan=True).encode()), *members]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bf.atomic_write(path, buffer.getvalue())


def read_outcome(path: Path) -> ClipOutcome:
    """The outcome recorded in a work file; raises ValueError for a work file of another
    format (the clip is then analysed again)."""
    meta = read_meta(path)
    if meta.get("work_format") != WORK_FORMAT:
        raise ValueError(f"{path} has work format {meta.get('work_format')}, not {WORK_FORMAT}")
    outcome = ClipOutcome(**meta["outcome"])
    outcome.work = str(path)
    return outcome


META_READ_BYTES = 1 << 20     # meta.json is the work file's first member: read its head only


def read_meta(path: Path) -> dict[str, Any]:
    for member in bf.iter_tar(path, wanted=lambda name: name == _META,
                              block_size=META_READ_BYTES):
        if member.data is not None:
            return json.loads(member.data)
    raise ValueError(f"{path} has no {_META}")


@dataclass
class WorkFile:
    """One work file read once: its candidates (fields) and the pixels of the wanted ones."""

    candidates: list[FaceCandidate]
    images: dict[int, tuple[np.ndarray, np.ndarray]]   # index -> (crop S x S x 3, mask S x S)


def candidates_of(meta: dict[str, Any]) -> list[FaceCandidate]:
    """The clip's candidates with their fields (no pixels); a usable candidate is marked by
    `cand.usable_in_work`, its position in the file by `cand.work_index`."""
    from curation.faces.analysis import FaceCandidate

    names = {f.name for f in dataclasses.fields(FaceCandidate)}
    out = []
    for i, fields in enumerate(meta["candidates"]):
        usable = fields.get("usable", False)
        cand = FaceCandidate(**{k: v for k, v in fields.items() if k in names})
        cand.bbox = tuple(cand.bbox) if cand.bbox is not None else None
        cand.work_index = i
        cand.usable_in_work = usable
        out.append(cand)
    return out


def read_work(path: str | Path, wanted) -> WorkFile:
    """Read a work file in one pass: its candidates, and the crop and mask of every usable
    candidate for which `wanted(candidate)` is true (the rest of the pixels are skipped)."""
    path = Path(path)
    meta: dict[str, Any] | None = None
    cands: list = []
    shapes: dict[int, tuple[int, ...]] = {}
    want: set[int] = set()
    crops: dict[int, np.ndarray] = {}
    masks: dict[int, np.ndarray] = {}

    def interesting(name: str) -> bool:
        if name == _META:
            return True
        index = int(name[1:].split(".")[0]) if name[1:].split(".")[0].isdigit() else -1
        return index in want

    for member in bf.iter_tar(path, wanted=interesting):
        if member.data is None:
            continue
        if member.name == _META:        # written first: the members after it are decided here
            meta = json.loads(member.data)
            if meta.get("work_format") != WORK_FORMAT:
                raise ValueError(f"{path} has work format {meta.get('work_format')}")
            cands = candidates_of(meta)
            for cand, fields in zip(cands, meta["candidates"], strict=True):
                if cand.usable_in_work and wanted(cand):
                    want.add(cand.work_index)
                    shapes[cand.work_index] = tuple(fields["crop_shape"])
            continue
        index = int(member.name[1:].split(".")[0])
        shape = shapes[index]
        if member.name.endswith(".rgb"):
            crops[index] = np.frombuffer(member.data, np.uint8).reshape(shape)
        else:
            bits = np.unpackbits(np.frombuffer(member.data, np.uint8))[:shape[0] * shape[1]]
            masks[index] = bits.reshape(shape[:2]) * np.uint8(255)
    if meta is None:
        raise ValueError(f"{path} has no {_META}")
    return WorkFile(cands, {i: (crops[i], masks[i]) for i in want if i in crops and i in masks})
