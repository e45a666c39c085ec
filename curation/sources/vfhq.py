"""VFHQ: one metadata text file per clip, `Clip+<videoid>+P<pid>+C<clip_idx>+F<start>-<end>.txt`.

Header lines `H <h>`, `W <w>`, `FPS <fps>` and `CROP x0 y0 x1 y1` (pixels in the source video)
are read; per-frame lines (starting with a frame index) and anything else are ignored. The clip
is served by `<clip name>.mp4`, or by a folder `<clip name>/` of frame images, used whole; else
by the raw source video `<videoid>.*` (`.mp4`, `.webm`, `.mkv`, ...) with the frames the official extraction uses
(start+1 .. end-1) and the crop box. Identity: (videoid, pid) names one person exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from curation.records import ClipRecord, SourceKind, safe_id
from curation.sources.common import (
    UNREADABLE_ERRORS,
    EntryProblem,
    FileIndex,
    float_text,
    integer_text,
    invalid,
    is_utf8,
    pixel_box,
    processed_or_raw,
    read_texts,
    run_entry,
    scaled_box,
    unreadable_metadata,
)

SOURCE = SourceKind.VFHQ.value
LICENSE = "VFHQ (research use, see dataset terms)"
NAME_PREFIX = "Clip+"
NAME_SUFFIX = ".txt"


@dataclass(frozen=True)
class ClipName:
    video_id: str
    pid: str
    clip_index: str
    start: int
    end: int


def is_metadata_name(file_name: str) -> bool:
    return file_name.startswith(NAME_PREFIX) and file_name.endswith(NAME_SUFFIX)


def parse_clip_name(stem: str) -> ClipName:
    """Split `Clip+<videoid>+P<pid>+C<idx>+F<start>-<end>` from the right (lenient on videoid)."""
    parts = stem[len(NAME_PREFIX):].rsplit("+", 3)
    if len(parts) != 4:
        raise invalid(f"file name {stem!r} is not Clip+<videoid>+P<pid>+C<idx>+F<start>-<end>")
    video_id, person, clip, frames = parts
    if not video_id or not person.startswith("P") or len(person) < 2 \
            or not clip.startswith("C") or len(clip) < 2 \
            or not frames.startswith("F") or frames.count("-") != 1:
        raise invalid(f"file name {stem!r} is not Clip+<videoid>+P<pid>+C<idx>+F<start>-<end>")
    start_text, end_text = frames[1:].split("-")
    start = integer_text(start_text, "start frame in the file name")
    end = integer_text(end_text, "end frame in the file name")
    if start < 0 or end <= start:
        raise invalid(f"frame range F{start}-{end} in the file name is not a forward range")
    return ClipName(video_id=video_id, pid=person[1:], clip_index=clip[1:], start=start, end=end)


@dataclass
class Header:
    height: float | None = None
    width: float | None = None
    fps: float | None = None
    crop: tuple[float, float, float, float] | None = None

    def empty(self) -> bool:
        return self.height is None and self.width is None and self.fps is None \
            and self.crop is None


class NotVfhqMetadata(ValueError):
    """The file holds no VFHQ header at all: the whole file is unreadable as metadata."""


def looks_like_text(text: str) -> bool:
    return "\x00" not in text


def parse_header(text: str) -> Header:
    """Read H/W/FPS/CROP lines (`KEY value`, `KEY: value` alike); ignore every other line."""
    header = Header()
    for line in text.splitlines():
        tokens = line.replace(":", " ").split()
        if not tokens:
            continue
        key = tokens[0].upper()
        if key in ("H", "W", "FPS"):
            if len(tokens) != 2:
                raise invalid(f"header line {line.strip()!r:.80} needs exactly one value")
            value = float_text(tokens[1], f"header {key}")
            if value <= 0:
                raise invalid(f"header {key} {value:g} is not positive")
            setattr(header, {"H": "height", "W": "width", "FPS": "fps"}[key], value)
        elif key == "CROP":
            if len(tokens) != 5:
                raise invalid(f"CROP line {line.strip()!r:.80} needs four values x0 y0 x1 y1")
            x0, y0, x1, y1 = (float_text(token, "CROP value") for token in tokens[1:])
            header.crop = (x0, y0, x1, y1)
    return header


def enumerate_clips(index: FileIndex) -> Iterator[ClipRecord]:
    names = [name for name in index.file_names() if is_metadata_name(name)]
    if not names:
        yield unreadable_metadata(SOURCE, index.root, "Clip+*.txt",
                                  "no VFHQ metadata files (Clip+...txt) under the source root",
                                  LICENSE)
        return
    keyed = sorted((safe_id(name[:-len(NAME_SUFFIX)]), name) for name in names)
    # read ahead in order (concurrently on a store); names that are not UTF-8 are never read
    texts = read_texts([index.file(name) for _clip_id, name in keyed if is_utf8(name)])
    for clip_id, file_name in keyed:
        path = index.file(file_name)
        stem = file_name[:-len(NAME_SUFFIX)]
        if not is_utf8(file_name):
            yield run_entry(SOURCE, stem, LICENSE, _clip_record, index, clip_id, stem, Header())
            continue
        try:
            _path, text = next(texts)
            if isinstance(text, Exception):
                raise text
            if not looks_like_text(text):
                raise NotVfhqMetadata("holds NUL bytes: not a text file")
            header = parse_header(text)
            if header.empty():
                raise NotVfhqMetadata("no H/W/FPS/CROP header line: not VFHQ clip metadata")
        except UNREADABLE_ERRORS as error:
            yield unreadable_metadata(SOURCE, index.relpath(path), file_name, error, LICENSE)
            continue
        except EntryProblem as problem:   # a header line with a bad value: this clip only
            yield run_entry(SOURCE, stem, LICENSE, _raise, problem)
            continue
        yield run_entry(SOURCE, stem, LICENSE, _clip_record, index, clip_id, stem, header)


def _raise(problem: EntryProblem) -> ClipRecord:
    raise problem


def _clip_record(index: FileIndex, clip_id: str, stem: str, header: Header) -> ClipRecord:
    name = parse_clip_name(stem)
    identity_id = f"vfhq:{name.video_id}:P{name.pid}"
    try:
        box_normalized = box_pixels = None
        if header.crop is not None:
            if header.width is not None and header.height is not None:
                box_normalized = scaled_box(*header.crop, header.width, header.height, "CROP")
            else:
                box_pixels = pixel_box(*header.crop, "CROP")
        video = processed_or_raw(index, stem, name.video_id, processed_folder=True)
    except EntryProblem as problem:
        problem.identity_id, problem.source_video_id = identity_id, name.video_id
        raise
    extra = {"clip_index": name.clip_index, "source_frames": [name.start, name.end],
             "source_size": [header.width, header.height], "fps": header.fps}
    common = dict(source=SOURCE, clip_id=clip_id, original_clip_id=stem,
                  identity_id=identity_id, source_video_id=name.video_id, license=LICENSE,
                  extra=extra)
    if not video.is_raw:
        return ClipRecord(video_path=video.path, **common)
    return ClipRecord(video_path=video.path, is_raw=True,
                      start_frame=name.start + 1, end_frame=name.end - 1,
                      bbox_hint_normalized=box_normalized, bbox_hint=box_pixels, **common)
