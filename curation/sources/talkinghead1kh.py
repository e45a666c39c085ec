"""TalkingHead-1KH: `*_video_tubes.txt` lists (in a `data_list/` folder or `data_list.zip`).

Each tube line is `video_name,H,W,S,E,L,T,R,B`: a 1-minute chunk `<ytid>_%04d`, the chunk's
size when annotated, an inclusive frame range and a pixel box. A tube is served by its
processed clip `{video_name}_S{S}_E{E}_L{L}_T{T}_R{R}_B{B}.mp4` (used whole) or else by the raw
chunk `<video_name>.*` (`.mp4`, or another container it was saved in) with the frame range and the box divided by W, H. The same tube listed
in several split files (or in both the folder and the zip) is one clip. Identity proxy: one
person per YouTube video (`yt:<ytid>`); the zip is read in place, never extracted.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from curation.records import ClipRecord, SourceKind, safe_id
from curation.sources.common import (
    MAX_METADATA_BYTES,
    UNREADABLE_ERRORS,
    EntryProblem,
    FileIndex,
    integer_text,
    invalid,
    open_binary,
    problem_record,
    processed_or_raw,
    run_entry,
    scaled_box,
    unreadable_metadata,
)

SOURCE = SourceKind.TALKINGHEAD1KH.value
LICENSE = "TalkingHead-1KH (CC-BY source videos)"
TUBES_SUFFIX = "_video_tubes.txt"
ARCHIVE_NAME = "data_list.zip"
MAX_BAD_LINE_ID = 200
_CHUNK_SUFFIX = re.compile(r"^(?P<ytid>.+)_(?P<chunk>\d{4,})$")


@dataclass(frozen=True)
class Tube:
    video_name: str
    height: int
    width: int
    start: int
    end: int
    left: int
    top: int
    right: int
    bottom: int
    clip_name: str   # {video_name}_S{S}_E{E}_L{L}_T{T}_R{R}_B{B}, the processed clip's stem


def youtube_id(video_name: str) -> str:
    """`<ytid>_0003` -> `<ytid>`; a name without a chunk suffix is taken as the id itself."""
    match = _CHUNK_SUFFIX.match(video_name)
    return match.group("ytid") if match else video_name


def parse_tube(line: str) -> Tube:
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 9:
        raise invalid(f"tube line has {len(fields)} fields, expected 9 "
                      f"(video_name,H,W,S,E,L,T,R,B): {line.strip()!r:.100}")
    video_name = fields[0]
    if not video_name:
        raise invalid(f"tube line has an empty video name: {line.strip()!r:.100}")
    names = ("H", "W", "S", "E", "L", "T", "R", "B")
    height, width, start, end, left, top, right, bottom = (
        integer_text(value, name) for value, name in zip(fields[1:], names, strict=True))
    if height <= 0 or width <= 0:
        raise invalid(f"tube frame size {width}x{height} is not positive")
    if start < 0 or end < start:
        raise invalid(f"tube frame range {start}..{end} is not a forward range")
    clip_name = f"{video_name}_S{start}_E{end}_L{left}_T{top}_R{right}_B{bottom}"
    return Tube(video_name, height, width, start, end, left, top, right, bottom, clip_name)


@dataclass
class _Listing:
    """One tubes file: where it was found, its file name and its text (or the read error)."""

    where: str
    file_name: str
    text: str | None
    error: str | None = None


def _listings(index: FileIndex) -> Iterator[_Listing]:
    for name in index.file_names():
        if not name.endswith(TUBES_SUFFIX):
            continue
        for path in index.all_files(name):
            try:
                with open_binary(path) as handle:
                    data = handle.read(MAX_METADATA_BYTES + 1)
                yield _Listing(index.relpath(path), name, _decode(data))
            except UNREADABLE_ERRORS as error:
                yield _Listing(index.relpath(path), name, None, str(error))
    for path in index.all_files(ARCHIVE_NAME):
        yield from _archive_listings(index.relpath(path), path)


def _archive_listings(where: str, path: str) -> Iterator[_Listing]:
    try:
        # read in place: on a store through a seekable file (ranged reads of the members)
        with open_binary(path) as raw, zipfile.ZipFile(raw) as archive:
            members = sorted((info for info in archive.infolist()
                              if not info.is_dir() and info.filename.endswith(TUBES_SUFFIX)),
                             key=lambda info: info.filename)
            found = []
            for info in members:
                member_where = f"{where}:{info.filename}"
                name = info.filename.rsplit("/", 1)[-1]
                try:
                    with archive.open(info) as handle:
                        data = handle.read(MAX_METADATA_BYTES + 1)
                    found.append(_Listing(member_where, name, _decode(data)))
                except (*UNREADABLE_ERRORS, zipfile.BadZipFile, RuntimeError) as error:
                    found.append(_Listing(member_where, name, None, str(error)))
    except (*UNREADABLE_ERRORS, zipfile.BadZipFile, RuntimeError) as error:
        yield _Listing(where, ARCHIVE_NAME, None, f"not a readable zip archive: {error}")
        return
    yield from found


def _decode(data: bytes) -> str:
    if len(data) > MAX_METADATA_BYTES:
        raise ValueError(f"larger than {MAX_METADATA_BYTES} bytes")
    return data.decode("utf-8")


def _split_of(file_name: str) -> str:
    return file_name[:-len(TUBES_SUFFIX)]


def enumerate_clips(index: FileIndex) -> Iterator[ClipRecord]:
    tubes: dict[str, tuple[Tube, list[str]]] = {}        # clip name -> tube, splits listing it
    bad_lines: dict[str, EntryProblem] = {}   # line text (its own id) -> problem
    unreadable: list[ClipRecord] = []
    for listing in _listings(index):
        if listing.text is None:
            unreadable.append(unreadable_metadata(SOURCE, listing.where, listing.file_name,
                                                  listing.error, LICENSE))
            continue
        split = _split_of(listing.file_name)
        for number, line in enumerate(listing.text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                tube = parse_tube(line)
            except EntryProblem as problem:
                problem.message = f"{listing.where} line {number}: {problem.message}"
                # a line with no parsable name is identified by its text (also deduplicates
                # the same line in the folder and the zip)
                bad_lines.setdefault(line.strip()[:MAX_BAD_LINE_ID], problem)
                continue
            known = tubes.setdefault(tube.clip_name, (tube, []))
            if split not in known[1]:
                known[1].append(split)
    if not tubes and not bad_lines and not unreadable:
        unreadable.append(unreadable_metadata(
            SOURCE, index.root, f"*{TUBES_SUFFIX}",
            f"no *{TUBES_SUFFIX} (data_list/ or {ARCHIVE_NAME}) under the source root", LICENSE))
    yield from sorted(unreadable, key=lambda record: (record.clip_id, record.message))
    for key in sorted(bad_lines, key=lambda key: (safe_id(key), key)):
        yield problem_record(SOURCE, key, bad_lines[key], LICENSE)
    for clip_id, clip_name in sorted((safe_id(name), name) for name in tubes):
        tube, splits = tubes[clip_name]
        yield run_entry(SOURCE, clip_name, LICENSE, _clip_record, index, clip_id, tube,
                        sorted(splits))


def _clip_record(index: FileIndex, clip_id: str, tube: Tube, splits: list[str]) -> ClipRecord:
    ytid = youtube_id(tube.video_name)
    try:
        box = scaled_box(tube.left, tube.top, tube.right, tube.bottom, tube.width, tube.height,
                         "tube box")
        video = processed_or_raw(index, tube.clip_name, tube.video_name)
    except EntryProblem as problem:
        problem.identity_id, problem.source_video_id = f"yt:{ytid}", ytid
        raise
    extra = {"splits": splits, "chunk": tube.video_name, "source_frames": [tube.start, tube.end],
             "annotated_size": [tube.width, tube.height]}
    common = dict(source=SOURCE, clip_id=clip_id, original_clip_id=tube.clip_name,
                  identity_id=f"yt:{ytid}", source_video_id=ytid, license=LICENSE, extra=extra)
    if not video.is_raw:
        return ClipRecord(video_path=video.path, **common)
    return ClipRecord(video_path=video.path, is_raw=True, start_frame=tube.start,
                      end_frame=tube.end, bbox_hint_normalized=box, **common)
