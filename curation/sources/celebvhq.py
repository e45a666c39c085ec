"""CelebV-HQ: `celebvhq_info.json` plus processed clips or raw YouTube downloads.

A clip is served by its processed file `<clip_key>.mp4` (already cropped and trimmed, used
whole) or, failing that, by the raw download `<ytb_id>.*` (`.mp4`, `.webm`, `.mkv`, ... as
yt-dlp saved it) with the entry's time range and normalised box. Identity proxy: one person per YouTube video (`yt:<ytb_id>`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from curation.records import ClipRecord, SourceKind
from curation.sources.common import (
    EntryProblem,
    FileIndex,
    collect_json_entries,
    mapping,
    nonempty_str,
    normalized_box,
    processed_or_raw,
    run_entry,
    seconds_range,
    sorted_entries,
    tblr_box,
)

SOURCE = SourceKind.CELEBVHQ.value
LICENSE = "CelebV-HQ (non-commercial research, see dataset terms)"
METADATA_NAME = "celebvhq_info.json"


def enumerate_clips(index: FileIndex) -> Iterator[ClipRecord]:
    table, problems = collect_json_entries(index, SOURCE, METADATA_NAME, LICENSE, _clip_map,
                                           '{"clips": {clip_key: {...}}}')
    yield from problems
    yield from table.conflict_records(SOURCE, LICENSE)
    entries = ((key, entry) for key, ((_, entry), _where) in table.entries.items())
    for clip_id, key, entry in sorted_entries(entries):
        yield run_entry(SOURCE, key, LICENSE, _clip_record, index, clip_id, key, entry)


def _clip_map(data: Any) -> dict | None:
    clips = data.get("clips") if isinstance(data, dict) else None
    return clips if isinstance(clips, dict) else None


def _clip_record(index: FileIndex, clip_id: str, key: str, entry: Any) -> ClipRecord:
    entry = mapping(entry, f"entry {key!r}")
    ytb_id = nonempty_str(entry.get("ytb_id"), "ytb_id")
    try:
        duration = mapping(entry.get("duration"), "duration")
        start_sec, end_sec = seconds_range(duration.get("start_sec"), duration.get("end_sec"))
        box = normalized_box(*tblr_box(entry.get("bbox")))
        video = processed_or_raw(index, key, ytb_id)
    except EntryProblem as problem:
        problem.identity_id, problem.source_video_id = f"yt:{ytb_id}", ytb_id
        raise
    extra = {
        "ytb_id": ytb_id,
        "source_time": [start_sec, end_sec],
        "attributes": entry.get("attributes"),
        "version": entry.get("version"),
    }
    common = dict(source=SOURCE, clip_id=clip_id, original_clip_id=key,
                  identity_id=f"yt:{ytb_id}", source_video_id=ytb_id, license=LICENSE,
                  extra={k: v for k, v in extra.items() if v is not None})
    if not video.is_raw:
        return ClipRecord(video_path=video.path, **common)
    return ClipRecord(video_path=video.path, start_sec=start_sec, end_sec=end_sec,
                      bbox_hint_normalized=box, is_raw=True, **common)
