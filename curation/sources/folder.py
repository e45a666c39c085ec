"""A plain folder of the user's own videos: `<root>/<identity name>/**/*.{mp4,mov,mkv,webm,avi}`.

Each top-level sub-folder is one identity (`folder:<name>`); every video below it (at any
depth) is one clip of that person, used whole. Hidden files and folders are ignored. A video
directly under the root has no identity folder and becomes a failed record saying so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from curation.records import ClipRecord, SourceKind, safe_id
from curation.sources.common import (
    VIDEO_EXTENSIONS,
    FileIndex,
    invalid,
    is_utf8,
    problem_record,
    unreadable_metadata,
)

SOURCE = SourceKind.FOLDER.value
LICENSE = "folder (user-provided)"


def enumerate_clips(index: FileIndex) -> Iterator[ClipRecord]:
    videos = []
    for path in index.all_file_paths():
        relative = index.relpath(path)
        parts = relative.split("/")
        if any(part.startswith(".") for part in parts):
            continue
        if parts[-1].lower().endswith(VIDEO_EXTENSIONS):
            videos.append((relative, parts, path))
    originals = _original_ids([relative for relative, _parts, _path in videos])
    records = [_clip_record(original, relative, parts, path)
               for original, (relative, parts, path) in zip(originals, videos, strict=True)]
    if not records:   # like a missing metadata file: the whole listing is absent
        records.append(unreadable_metadata(
            SOURCE, index.root, "(no videos)",
            f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in sub-folders of the root", LICENSE))
    records.sort(key=lambda record: (record.clip_id, record.original_clip_id))
    yield from records


def _original_ids(relatives: list[str]) -> list[str]:
    """"<person>/<file stem>"; the extension stays only where two files share a stem."""
    stems = [relative.rsplit(".", 1)[0] for relative in relatives]
    counts = Counter(stems)
    originals = [relative if counts[stem] > 1 else stem
                 for relative, stem in zip(relatives, stems, strict=True)]
    if len(set(originals)) < len(originals):   # "a.mp4.mov" next to "a.mp4" and "a.mov"
        return relatives
    return originals


def _clip_record(original: str, relative: str, parts: list[str], path: str) -> ClipRecord:
    clip_id = safe_id(original)
    if len(parts) < 2:
        problem = invalid(f"{relative} lies directly under the root; put each person's videos "
                          f"in a sub-folder named after them")
        return problem_record(SOURCE, original, problem, LICENSE)
    name = parts[0]
    if not is_utf8(relative):
        problem = invalid(f"{relative!r} is not a valid UTF-8 file name; rename it")
        return problem_record(SOURCE, original, problem, LICENSE)
    return ClipRecord(source=SOURCE, clip_id=clip_id, original_clip_id=original,
                      identity_id=f"folder:{name}", source_video_id=f"folder:{name}",
                      video_path=path, license=LICENSE,
                      extra={"file": relative})
