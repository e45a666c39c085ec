"""Stage 1 of the build, per clip (CPU): analyse one clip and leave its faces in the work area.

    analyze_clip(config, folder, shard, clip) -> ClipOutcome        (never raises)

runs the face analyzer (decode the sampled frames, detect, the clip's own person, landmarks,
pose, aligned crop + mask, sharpness; models loaded once per worker process) and writes the
result to `OUTPUT/work/<shard part>/<clip hash>.tar`: `meta.json` (the ClipAnalysis and every
candidate's fields) and, per usable candidate, its crop as a lossless PNG and its mask as the
exact PNG the shard will hold. Crops travel between stages as these files (encoded, on the
shared filesystem), never through the driver; the driver receives the small ClipOutcome only.

A work file is a cache with the same atomic-commit rule as everything else: once it exists the
clip's analysis is done, so a killed build restarted later analyses only the clips that have
none. The assembly of a shard deletes its work files after the shard is committed.

While a clip is analysed, `manifests/.inflight/<clip hash>.json` names the clip, the worker's
pid and the start time: the driver's per-clip time limit counts from there, and a worker that
dies is known by the clip it was on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curation import build_folder as bf
from curation.records import ClipRecord, Reason, Status

if TYPE_CHECKING:
    from curation.pipeline.config import BuildConfig
    from curation.faces.analysis import ClipAnalysis, FaceAnalyzer, FaceCandidate

WORK_DIR = "work"
CROP_PNG_LEVEL = 1      # lossless and fast: the shard's JPEG is encoded from the decoded pixels
_META = "meta.json"

# Models loaded once per worker process, keyed by the analysis settings they were made for.
_ANALYZERS: dict[str, FaceAnalyzer] = {}


def clip_key(clip: ClipRecord) -> str:
    return f"{clip.source}:{clip.clip_id}"


def _clip_hash(clip: ClipRecord) -> str:
    return hashlib.sha1(clip_key(clip).encode("utf-8", "surrogatepass")).hexdigest()[:20]


def work_dir(folder: bf.BuildFolder, shard: str) -> Path:
    from curation import manifests

    return Path(folder.output or ".") / WORK_DIR / manifests.part_name(shard).removesuffix(
        ".parquet")


def work_path(folder: bf.BuildFolder, shard: str, clip: ClipRecord) -> Path:
    return work_dir(folder, shard) / f"{_clip_hash(clip)}.tar"


def inflight_marker(folder: bf.BuildFolder, clip: ClipRecord) -> Path:
    return folder.manifests_dir / bf.INFLIGHT_DIR / f"{_clip_hash(clip)}.json"


def read_inflight(folder: bf.BuildFolder, clip: ClipRecord) -> dict[str, Any] | None:
    """The marker of a clip being analysed ({'clip', 'pid', 'started'}), or None."""
    try:
        return json.loads(inflight_marker(folder, clip).read_text())
    except (OSError, ValueError):
        return None


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


def _analyzer(config: BuildConfig) -> FaceAnalyzer:
    from curation.faces.analysis import FaceAnalyzer

    key = json.dumps([dataclasses.asdict(config.analysis), dataclasses.asdict(config.identity)],
                     sort_keys=True, default=str)
    if key not in _ANALYZERS:
        _ANALYZERS.clear()
        _ANALYZERS[key] = FaceAnalyzer(config.analysis, config.identity)   # issue 13: embeddings
    return _ANALYZERS[key]


def load_models(config: BuildConfig) -> None:
    """Load this process's analyzer now (otherwise the first clip loads it)."""
    _analyzer(config)


def analyze_clip(config: BuildConfig, folder: bf.BuildFolder, shard: str,
                 clip: ClipRecord) -> ClipOutcome:
    """Analyse one clip into its work file (reused when it already exists); never raises."""
    path = work_path(folder, shard, clip)
    if path.exists():
        try:
            return read_outcome(path)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is simply redone
            path.unlink(missing_ok=True)
    marker = inflight_marker(folder, clip)
    bf.atomic_write(marker, json.dumps({"shard": shard, "clip": clip_key(clip),
                                        "pid": os.getpid(), "started": time.time()}))
    started = time.monotonic()
    try:
        analysis = _analyzer(config).analyze_clip(clip)
        outcome = _outcome_of(analysis, time.monotonic() - started)
        write_work(path, analysis, outcome)
        outcome.work = str(path)
    except Exception as err:  # noqa: BLE001 - one bad clip must not lose the identity
        _ANALYZERS.clear()      # a fresh analyzer for the next clip
        outcome = ClipOutcome.failed(Reason.INTERNAL_ERROR, describe(err),
                                     time.monotonic() - started)
    finally:
        marker.unlink(missing_ok=True)
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


def _png(array: np.ndarray, mode: str, level: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode).save(
        buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def write_work(path: Path, analysis: ClipAnalysis, outcome: ClipOutcome) -> None:
    """The clip's analysis as one tar: meta.json, then c<i>.png / m<i>.png per usable face."""
    from curation.pipeline.tar_writer import encode_png_mask

    candidates, members = [], []
    for i, cand in enumerate(analysis.candidates):
        fields = {f.name: _jsonable(getattr(cand, f.name)) for f in dataclasses.fields(cand)
                  if f.name not in ("crop", "mask")}
        fields["usable"] = bool(cand.usable)
        candidates.append(fields)
        if cand.usable:
            members.append((f"c{i}.png", _png(cand.crop, "RGB", CROP_PNG_LEVEL)))
            members.append((f"m{i}.png", encode_png_mask(cand.mask)))
    meta = {"outcome": outcome.to_json(), "clip_id": analysis.clip_id,
            "candidates": candidates}
    buffer = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in [(_META, json.dumps(meta, allow_nan=True).encode()), *members]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bf.atomic_write(path, buffer.getvalue())


def read_outcome(path: Path) -> ClipOutcome:
    meta = read_meta(path)
    outcome = ClipOutcome(**meta["outcome"])
    outcome.work = str(path)
    return outcome


def read_meta(path: Path) -> dict[str, Any]:
    for member in bf.iter_tar(path, wanted=lambda name: name == _META):
        if member.data is not None:
            return json.loads(member.data)
    raise ValueError(f"{path} has no {_META}")


def read_candidates(path: str | Path) -> list[FaceCandidate]:
    """The clip's candidates with their fields (crop and mask not loaded: see `read_images`);
    a usable candidate is marked by `cand.usable_in_work`."""
    from curation.faces.analysis import FaceCandidate

    names = {f.name for f in dataclasses.fields(FaceCandidate)}
    out = []
    for i, fields in enumerate(read_meta(Path(path))["candidates"]):
        usable = fields.pop("usable")
        cand = FaceCandidate(**{k: v for k, v in fields.items() if k in names})
        cand.bbox = tuple(cand.bbox) if cand.bbox is not None else None
        cand.work_index = i          # its crop and mask in the work file
        cand.usable_in_work = usable
        out.append(cand)
    return out


def read_images(path: str | Path, indices: set[int]) -> dict[int, tuple[bytes, bytes]]:
    """{candidate index: (crop PNG, mask PNG)} for the wanted usable candidates."""
    wanted = {f"c{i}.png" for i in indices} | {f"m{i}.png" for i in indices}
    crops: dict[int, bytes] = {}
    masks: dict[int, bytes] = {}
    for member in bf.iter_tar(Path(path), wanted=wanted.__contains__):
        if member.data is None:
            continue
        index = int(member.name[1:].split(".")[0])
        (crops if member.name.startswith("c") else masks)[index] = member.data
    return {i: (crops[i], masks[i]) for i in indices if i in crops and i in masks}


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
