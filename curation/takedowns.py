"""Takedowns: the list of ids to leave out, and the salted record of every removal.

The list (`--takedown FILE`, and the FILE of `mfhq takedown`) holds ids one per line ('#'
comments): identity ids (`yt:<id>`, `vfhq:<video>:P<n>`, `folder:<name>`), source video ids
(YouTube ids), clip ids or `SOURCE:CLIP_ID`. It is UTF-8 text (a byte-order mark and Windows
line ends are fine); a list that does not exist, cannot be read (a folder, no permission, a
store that refuses it) or is not UTF-8 text is one `TakedownListError` (a SetupError: one
message naming the list, exit 2), never a partly read list.

The record, `manifests/takedowns.parquet`, keeps no id: each removed id is stored as
sha256(salt + id), with what kind of id it was, the reason, the date and the shard rewritten.
The salt is random per build folder and stored in the file's metadata, so an auditor holding an
id can check that it was removed (hash it with the salt and look it up), while the file itself
does not reveal which ids were removed, and cannot be matched against another build's record.
The build reads the record (`without_recorded`) so that a resume never brings a removed
identity back; `curation.audit.takedown` removes ids from a finished build and appends to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.build_folder import write_parquet_atomic
from curation.errors import BuildFolderError, SetupError
from curation.records import ClipRecord, Reason, Status

# --- the list ----------------------------------------------------------------------------------

class TakedownListError(SetupError):
    """The takedown list cannot be used (missing, unreadable, not text); the message names it
    and says what to fix. A build never starts without the list it was given: leaving it out
    would put listed ids into the shards."""


def read_takedown(path: str | Path | None) -> set[str]:
    """Ids listed in a takedown file (a path or a store URL): one per line, blank lines and
    '#' comments ignored. Raises `TakedownListError` (a SetupError: one message, exit 2) for a
    list that does not exist, cannot be read, or is not UTF-8 text."""
    if not path:
        return set()
    text = _takedown_text(str(path))
    ids = set()
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            ids.add(entry)
    return ids


def _takedown_text(location: str) -> str:
    from curation import storage

    fix = "pass the file that lists the ids to leave out (--takedown FILE|URL)"
    try:
        if storage.is_url(location):
            with storage.open_binary(location) as handle:
                data = handle.read()
        else:
            data = storage.local_path(location).read_bytes()
    except FileNotFoundError as error:
        raise TakedownListError(f"takedown list {location} does not exist; {fix}") from error
    except IsADirectoryError as error:
        raise TakedownListError(f"takedown list {location} is a folder, not a file; "
                                f"{fix}") from error
    except PermissionError as error:
        raise TakedownListError(f"takedown list {location} cannot be read: permission "
                                f"refused ({error}); give this user read access") from error
    except Exception as error:  # noqa: BLE001 - a store or disk failure, said once
        raise TakedownListError(f"takedown list {location} could not be read "
                                f"({type(error).__name__}: {error})"[:600]
                                + "; check the path, or the store's credentials and "
                                  "endpoint") from error
    # Strict decoding: a byte replaced by U+FFFD would silently make its id match nothing.
    # A UTF-8 byte-order mark is taken off for the same reason (it would join the first id).
    if b"\0" in data:
        line = data[:data.index(b"\0")].count(b"\n") + 1
        raise TakedownListError(f"takedown list {location} holds a NUL byte on line {line}: "
                                f"it is not a text file; {fix}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise TakedownListError(f"takedown list {location}: line {line} is not UTF-8 text "
                                f"({error.reason} at byte {error.start}); save the list as "
                                f"UTF-8, one id per line") from error


def listable_ids(source: str | None, clip_id: str | None, original_clip_id: str | None,
                 identity_id: str | None, source_video_id: str | None) -> list[str]:
    """Every id a clip can be listed under, in the order a match is reported."""
    ids = [identity_id, source_video_id, clip_id, original_clip_id,
           f"{source}:{clip_id}", f"{source}:{original_clip_id}"]
    return [i for i in ids if i]


def row_ids(row: dict) -> list[str]:
    """`listable_ids` of a clips-manifest row."""
    return listable_ids(row.get("source"), row.get("clip_id"), row.get("original_clip_id"),
                        row.get("identity_id"), row.get("source_video_id"))


def takedown_match(clip: ClipRecord, takedown: set[str]) -> str | None:
    """The takedown entry that removes this clip, if any."""
    for candidate in listable_ids(clip.source, clip.clip_id, clip.original_clip_id,
                                  clip.identity_id, clip.source_video_id):
        if candidate in takedown:
            return candidate
    return None


def split_takedown(clips: Iterable[ClipRecord], takedown: set[str]
                   ) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """Split clips into (kept, removed); removed ones are marked skipped/TAKEDOWN."""
    kept, removed = [], []
    for clip in clips:
        entry = takedown_match(clip, takedown) if takedown else None
        if entry is None:
            kept.append(clip)
        else:
            removed.append(dataclasses.replace(
                clip, status=Status.SKIPPED, reason=Reason.TAKEDOWN.value,
                message=f"listed in the takedown file as {entry!r}"))
    return kept, removed


# --- the record --------------------------------------------------------------------------------

TAKEDOWNS_FILE = "takedowns.parquet"
META_SALT = b"mfhq.takedown_salt"
DEFAULT_REASON = "takedown request"

TAKEDOWNS_SCHEMA = pa.schema([
    pa.field("id_sha256", pa.string(), nullable=False),   # sha256(salt + id), never the id
    pa.field("id_kind", pa.string(), nullable=False),     # listed|identity|clip|source_video
    pa.field("reason", pa.string(), nullable=False),
    pa.field("removed_at", pa.string(), nullable=False),  # UTC date, YYYY-MM-DD
    pa.field("stage", pa.string(), nullable=False),       # build | after_build
    pa.field("shard", pa.string()),                        # shard rewritten (after_build)
], metadata={b"mfhq.table": b"takedowns", b"mfhq.schema_version": b"1"})


class TakedownError(BuildFolderError):
    """The takedown record or the build cannot be read; the message says what to do."""


def id_hash(salt: str, value: str) -> str:
    return hashlib.sha256(f"{salt}\0{value}".encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class RemovedIds:
    """The hashes of every removed id of a build folder, with the folder's salt."""

    salt: str
    hashes: set[str] = field(default_factory=set)

    def contains(self, value: str | None) -> bool:
        return bool(value) and id_hash(self.salt, value) in self.hashes


def _read_record(manifests_dir: Path) -> tuple[pa.Table | None, str | None]:
    path = Path(manifests_dir) / TAKEDOWNS_FILE
    if not path.exists():
        return None, None
    try:
        table = pq.read_table(path, schema=TAKEDOWNS_SCHEMA)
        salt = (pq.read_schema(path).metadata or {}).get(META_SALT)
    except Exception as err:  # noqa: BLE001
        raise TakedownError(f"{path} is unreadable ({err}); restore it from a backup: it is "
                            "the only record of what was removed") from err
    if not salt:
        raise TakedownError(f"{path} has no salt in its metadata; restore it from a backup")
    return table, salt.decode()


def removed_hashes(manifests_dir: Path | str) -> RemovedIds:
    """Every recorded removal of the build folder (empty when nothing was ever removed)."""
    table, salt = _read_record(Path(manifests_dir))
    if table is None:
        return RemovedIds(salt="")
    return RemovedIds(salt, set(table.column("id_sha256").to_pylist()))


def append_record(manifests_dir: Path, removals: Iterable[tuple[str, str]], reason: str,
                  stage: str, shard: str | None = None) -> int:
    """Add (kind, id) removals to takedowns.parquet (atomic rewrite); returns rows added.

    An id already recorded for the same stage is not added twice (reruns are idempotent)."""
    manifests_dir = Path(manifests_dir)
    table, salt = _read_record(manifests_dir)
    salt = salt or secrets.token_hex(16)
    seen = set()
    if table is not None:
        seen = set(zip(table.column("id_sha256").to_pylist(), table.column("stage").to_pylist(),
                       strict=True))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    rows: list[dict[str, Any]] = []
    for kind, value in sorted(set(removals)):
        digest = id_hash(salt, value)
        if (digest, stage) in seen:
            continue
        seen.add((digest, stage))
        rows.append({"id_sha256": digest, "id_kind": kind, "reason": reason,
                     "removed_at": today, "stage": stage, "shard": shard})
    if not rows:
        return 0
    schema = TAKEDOWNS_SCHEMA.with_metadata({**TAKEDOWNS_SCHEMA.metadata, META_SALT: salt.encode()})
    new = pa.Table.from_pylist(rows, schema=schema)
    merged = pa.concat_tables([table.cast(schema), new]) if table is not None else new
    write_parquet_atomic(merged, manifests_dir / TAKEDOWNS_FILE)
    return len(rows)


def clip_removals(clips, listed: set[str]) -> list[tuple[str, str]]:
    """(kind, id) pairs to record for clips removed at build time (ClipRecords)."""
    removals: list[tuple[str, str]] = []
    for clip in clips:
        entry = takedown_match(clip, listed)
        if entry is not None:
            removals.append(("listed", entry))
        removals.append(("clip", f"{clip.source}:{clip.clip_id}"))
    return removals


# --- the build's side: never bring a removed identity back -------------------------------------

def without_recorded(plan, manifests_dir: Path | str):
    """The plan without identities and clips whose ids the build folder's record lists.

    The plan keeps its fingerprint (of the sources as enumerated), so a resume with the same
    arguments is still recognised as the same build."""
    removed = removed_hashes(manifests_dir)
    if not removed.hashes:
        return plan

    def gone(clip) -> bool:
        return any(removed.contains(v) for v in (
            clip.identity_id, clip.source_video_id, f"{clip.source}:{clip.clip_id}"))

    shards = []
    for spec in plan.shards:
        identities = []
        for ident in spec.identities:
            clips = [c for c in ident.clips if not gone(c)]
            if clips and not removed.contains(ident.identity_id):
                identities.append(dataclasses.replace(ident, clips=clips))
        shards.append(dataclasses.replace(spec, identities=identities))
    rejected = [c for c in plan.rejected_clips if not gone(c)]
    return dataclasses.replace(plan, shards=shards, rejected_clips=rejected,
                               base_fingerprint=plan.fingerprint())
