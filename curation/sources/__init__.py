"""Source adapters: turn each dataset's on-disk layout into typed clip records.

`enumerate_source(kind, root)` walks the root once (a basename index of every file; no video is
opened) and yields one `ClipRecord` per clip the metadata names, in a deterministic order:
whole-file problems first, then clips sorted by clip id. Bad metadata, bad entries, missing
videos and boxes outside the frame become records with a reason code; only a missing root or an
unknown kind raises (`SourceError`), before anything is yielded.

A root is a local folder or a store URL (`s3://bucket/prefix`, `gs://...`, any fsspec
protocol; `file://` is a local folder): a store prefix is listed once instead of walked, with the
same index semantics, and a record's `video_path` is then the video's URL (the analysis copies
it to node-local scratch, `curation.storage.local_video`). A store root that cannot be listed
(no such bucket, refused credentials, no objects under the prefix) is one SourceError too.

`group_identities(records)` groups the usable records by the dataset's identity rule
(`identity_id`: `yt:<ytb_id>` for CelebV-HQ / CelebV-Text / TalkingHead-1KH, so one YouTube
video is one person across datasets; `vfhq:<videoid>:P<pid>`; `folder:<sub-folder>`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from curation import storage
from curation.errors import SourceError
from curation.records import ClipRecord, SourceKind
from curation.sources import celebvhq, celebvtext, folder, talkinghead1kh, vfhq
from curation.sources.common import FileIndex, build_index

# One registry: each kind's adapter module (enumerate_clips, LICENSE, SOURCE).
_MODULES = {SourceKind.CELEBVHQ: celebvhq, SourceKind.CELEBVTEXT: celebvtext,
            SourceKind.VFHQ: vfhq, SourceKind.TALKINGHEAD1KH: talkinghead1kh,
            SourceKind.FOLDER: folder}
SOURCE_KINDS: tuple[str, ...] = tuple(kind.value for kind in SourceKind)
_ADAPTERS: dict[str, Callable[[FileIndex], Iterator[ClipRecord]]] = {
    kind.value: module.enumerate_clips for kind, module in _MODULES.items()}
LICENSES: dict[str, str] = {kind.value: module.LICENSE for kind, module in _MODULES.items()}


def check_root(kind: str, root: str | os.PathLike) -> str:
    """The source's root as a path string (a URL without its trailing "/"; a `file://` URL as
    its path); raises SourceError for an unknown kind, a root that is not a folder, or a store
    root that cannot be listed or holds nothing (the build calls this before anything slow,
    e.g. the model check)."""
    if kind not in _ADAPTERS:
        raise SourceError(f"unknown source kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")
    try:
        root_path = os.fspath(root)
    except TypeError:
        raise SourceError(f"source root for {kind} must be a path, got {root!r:.80}") from None
    if storage.is_url(root_path):
        return storage.check_store_root(root_path)
    if root_path.startswith("file:"):
        root_path = str(storage.local_path(root_path))
    if not os.path.isdir(root_path):
        what = "does not exist" if not os.path.exists(root_path) else "is not a folder"
        raise SourceError(f"source root {root_path} for {kind} {what}; pass the folder that "
                          f"holds the dataset (the README's Sources section shows each layout)")
    return root_path


def enumerate_source(kind: str, root: str | os.PathLike) -> Iterator[ClipRecord]:
    """Clip records of one source. Raises SourceError at call time, before yielding anything."""
    root_path = check_root(kind, root)
    return _ADAPTERS[kind](build_index(root_path))


def group_identities(records: Iterable[ClipRecord]) -> dict[str, list[ClipRecord]]:
    """Usable ("ok") records grouped by identity_id; keys sorted, clips by (source, clip_id)."""
    groups: dict[str, list[ClipRecord]] = {}
    for record in records:
        if record.ok and record.identity_id:
            groups.setdefault(record.identity_id, []).append(record)
    return {identity: sorted(groups[identity], key=lambda r: (r.source, r.clip_id))
            for identity in sorted(groups)}


__all__ = ["SOURCE_KINDS", "LICENSES", "SourceError", "check_root", "enumerate_source",
           "group_identities"]
