"""CelebV-Text: `celebvtext_info.json` in either released shape, processed clips or raw videos.

Shapes accepted:
- v0.11 (the released file): a flat map keyed by clip file name, `{"<clip>.mp4": {...}}`, with
  a normalised bbox and `duration.start_sec/end_sec`;
- the README example: clips nested under `"clips"`, keyed by clip name, bbox in pixels of the
  raw video, and sometimes `duration.start_frame/end_frame`. Despite their names these hold
  seconds: the README's example writes `"start_frame": 415.29, "end_frame": 420.88` under the
  comment "start and end times", so both keys are always read as seconds (a whole-number pair
  too: `10, 250` is 10 s..250 s, never frames 10..250).
A bbox whose values are all <= 1 is normalised, otherwise pixels.

Processed clip `<clip>.mp4` is used whole; else the raw download `<ytb_id>.*` (any container
yt-dlp writes: `.mp4`, `.webm`, `.mkv`, ...) with the range and box. Per-clip description files `<clip>.txt` found under the root (the text archives, when
unpacked there) are carried into `extra["texts"]`, keyed by their folder name: best effort.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from curation.records import ClipRecord, SourceKind
from curation.sources.common import (
    UNREADABLE_ERRORS,
    EntryProblem,
    FileIndex,
    collect_json_entries,
    invalid,
    mapping,
    nonempty_str,
    normalized_box,
    pixel_box,
    processed_or_raw,
    read_text,
    run_entry,
    seconds_range,
    sorted_entries,
    tblr_box,
)

SOURCE = SourceKind.CELEBVTEXT.value
LICENSE = "CelebV-Text (non-commercial research, see dataset terms)"
METADATA_NAME = "celebvtext_info.json"
MAX_TEXT_BYTES = 256 * 1024


def enumerate_clips(index: FileIndex) -> Iterator[ClipRecord]:
    table, problems = collect_json_entries(
        index, SOURCE, METADATA_NAME, LICENSE, _clip_map,
        '{"<clip>.mp4": {...}} (v0.11) or {"clips": {...}}', table_key=clip_name)
    yield from problems
    yield from table.conflict_records(SOURCE, LICENSE)
    # the table is keyed by clip name (shapes differ in the ".mp4"); records keep the key
    named = ((key, (name, entry)) for name, ((key, entry), _where) in table.entries.items())
    for clip_id, key, (name, entry) in sorted_entries(named):
        yield run_entry(SOURCE, key, LICENSE, _clip_record, index, clip_id, name, key, entry)


def _clip_map(data: Any) -> dict | None:
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("clips"), dict):
        return data["clips"]
    if "clips" in data:
        return None
    return data


def clip_name(key: str) -> str:
    """The clip's name: the metadata key without a trailing ".mp4" (v0.11 keys carry one)."""
    return key[:-4] if key.lower().endswith(".mp4") and len(key) > 4 else key


def _clip_record(index: FileIndex, clip_id: str, name: str, key: str,
                 entry: Any) -> ClipRecord:
    entry = mapping(entry, f"entry {key!r}")
    ytb_id = nonempty_str(entry.get("ytb_id"), "ytb_id")
    try:
        timing = _timing(entry.get("duration"))
        x0, y0, x1, y1 = tblr_box(entry.get("bbox"))
        normalised = max(x0, y0, x1, y1) <= 1
        box = normalized_box(x0, y0, x1, y1) if normalised else pixel_box(x0, y0, x1, y1)
        video = processed_or_raw(index, name, ytb_id)
    except EntryProblem as problem:
        problem.identity_id, problem.source_video_id = f"yt:{ytb_id}", ytb_id
        raise
    extra: dict[str, Any] = {"ytb_id": ytb_id, "clip_name": name, "source_range": timing}
    for field_name in ("meta_video_names", "version"):
        if entry.get(field_name) is not None:
            extra[field_name] = entry[field_name]
    texts = _texts(index, name)
    if texts:
        extra["texts"] = texts
    common = dict(source=SOURCE, clip_id=clip_id, original_clip_id=key,
                  identity_id=f"yt:{ytb_id}", source_video_id=ytb_id, license=LICENSE,
                  extra=extra)
    if not video.is_raw:
        return ClipRecord(video_path=video.path, **common)
    return ClipRecord(
        video_path=video.path, is_raw=True,
        start_sec=timing["start_sec"], end_sec=timing["end_sec"],
        bbox_hint_normalized=box if normalised else None,
        bbox_hint=None if normalised else box, **common)


def _timing(value: Any) -> dict[str, Any]:
    """{"start_sec", "end_sec"} from `duration`: `start_sec/end_sec`, or the README shape's
    `start_frame/end_frame`, which hold seconds too (see the module docstring)."""
    duration = mapping(value, "duration")
    if "start_sec" in duration or "end_sec" in duration:
        start, end = seconds_range(duration.get("start_sec"), duration.get("end_sec"))
        return {"start_sec": start, "end_sec": end}
    if "start_frame" in duration or "end_frame" in duration:
        start, end = seconds_range(duration.get("start_frame"), duration.get("end_frame"),
                                   "duration (start_frame/end_frame, in seconds)")
        return {"start_sec": start, "end_sec": end, "seconds_under": "start_frame/end_frame"}
    raise invalid("duration has neither start_sec/end_sec nor start_frame/end_frame")


def _texts(index: FileIndex, name: str) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for path in index.all_files(f"{name}.txt"):
        try:
            text = read_text(path, MAX_TEXT_BYTES)
            lines = [line.strip() for line in text.splitlines() if line.strip()]
        except UNREADABLE_ERRORS:
            continue  # descriptions are a nicety: an unreadable or too large one is left out
        if lines:
            texts.setdefault(os.path.basename(os.path.dirname(path)), lines)
    return texts
