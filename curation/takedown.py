"""Removing ids from a finished MFHQ build, and the record of every removal.

    python -m curation.takedown FILE [--output DIR] [--reason TEXT]

FILE lists ids one per line ('#' comments), as for `build_mfhq.py --takedown`: identity ids
(`yt:<id>`, `vfhq:<video>:P<n>`, `folder:<name>`), source video ids (YouTube ids), clip ids or
`SOURCE:CLIP_ID`. An identity with any listed id (its own, one of its source videos, one of its
clips) is removed whole: its sample leaves the shard, its rows leave the clips, faces and
identities parts; listed clips also leave `clips/part-enumeration.parquet`. Only the shards and
parts that held a listed id are rewritten, each atomically (temporary file, fsync, rename), and
`shards.parquet` and `plan.json` are updated. Rerunning the command after a crash finishes the job.

The record, `manifests/takedowns.parquet`, keeps no id: each removed id is stored as
sha256(salt + id), with what kind of id it was, the reason, the date and the shard rewritten.
The salt is random per build folder and stored in the file's metadata, so an auditor holding an
id can check that it was removed (hash it with the salt and look it up), while the file itself
does not reveal which ids were removed, and cannot be matched against another build's record.
A later resume of the build (same arguments) reads this record and does not bring removed
identities back.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import BuildFolders

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


class TakedownError(RuntimeError):
    """The takedown record or the build cannot be read; the message says what to do."""


# --- the record ---------------------------------------------------------------------------------

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
    from curation.manifests import write_table_atomic

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
    write_table_atomic(merged, manifests_dir / TAKEDOWNS_FILE)
    return len(rows)


def clip_removals(clips, listed: set[str]) -> list[tuple[str, str]]:
    """(kind, id) pairs to record for clips removed at build time (ClipRecords)."""
    from curation.planning import takedown_match

    removals: list[tuple[str, str]] = []
    for clip in clips:
        entry = takedown_match(clip, listed)
        if entry is not None:
            removals.append(("listed", entry))
        removals.append(("clip", f"{clip.source}:{clip.clip_id}"))
    return removals


# --- the runner's side: never bring a removed identity back ----------------------------------

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


# --- removing ids from a finished build --------------------------------------------------------

@dataclass
class TakedownConfig(BuildFolders):
    file: str
    output: str | None = None
    reason: str = DEFAULT_REASON


@dataclass
class TakedownResult:
    identities_removed: int = 0
    clips_removed: int = 0
    faces_removed: int = 0
    samples_removed: int = 0
    shards_rewritten: list[str] = field(default_factory=list)
    ids_not_found: int = 0


def _row_ids(row: dict) -> list[str]:
    """Every id a clips-manifest row can be listed under."""
    ids = [row.get("identity_id"), row.get("source_video_id"), row.get("clip_id"),
           row.get("original_clip_id")]
    ids += [f"{row.get('source')}:{row.get('clip_id')}",
            f"{row.get('source')}:{row.get('original_clip_id')}"]
    return [i for i in ids if i]


def _matching_identities(idents: list[dict], clips: list[dict], listed: set[str]
                         ) -> dict[str, set[str]]:
    """{identity_id: listed entries that hit it} for the identities of one shard."""
    hits: dict[str, set[str]] = {}
    for row in idents:
        ids = [row["identity_id"], *(row.get("source_video_ids") or [])]
        found = {i for i in ids if i in listed}
        if found:
            hits.setdefault(row["identity_id"], set()).update(found)
    for row in clips:
        found = {i for i in _row_ids(row) if i in listed}
        if found and row.get("identity_id"):
            hits.setdefault(row["identity_id"], set()).update(found)
    return hits


def _removals_of(identity_id: str, idents: list[dict], clips: list[dict],
                 entries: set[str]) -> list[tuple[str, str]]:
    removals = [("listed", e) for e in entries] + [("identity", identity_id)]
    for row in idents:
        if row["identity_id"] == identity_id:
            removals += [("source_video", v) for v in row.get("source_video_ids") or []]
    for row in clips:
        if row.get("identity_id") == identity_id:
            removals.append(("clip", f"{row['source']}:{row['clip_id']}"))
            if row.get("source_video_id"):
                removals.append(("source_video", row["source_video_id"]))
    return removals


def _read_part(path: Path, table: str) -> pa.Table:
    from curation import manifests

    try:
        return pq.read_table(path, schema=manifests.SCHEMAS[table])
    except Exception as err:  # noqa: BLE001
        raise TakedownError(f"{path} is unreadable ({err}); run python -m curation.verify, "
                            "rebuild the shard (delete its tar and rerun the build), then "
                            "retry the takedown") from err


def _rewrite_shard(config: TakedownConfig, shard: str, listed: set[str], result: TakedownResult
                   ) -> list[tuple[str, str]]:
    """Remove matching identities from one shard and its parts; returns (kind, id) removed."""
    from curation import manifests
    from curation.shard_writer import Sample, commit_shard, file_sha256, stage_shard

    parts = manifests.part_paths(config.manifests_dir, shard)
    tables = {t: _read_part(p, t) for t, p in parts.items()}
    rows = {t: tab.to_pylist() for t, tab in tables.items()}
    hits = _matching_identities(rows["identities"], rows["clips"], listed)
    tar = config.shards_dir / shard
    recorded = manifests.part_shard_sha256(parts["identities"])
    if not hits and (not tar.exists() or recorded == file_sha256(tar)):
        return []
    removals: list[tuple[str, str]] = []
    for identity_id, entries in sorted(hits.items()):
        removals += _removals_of(identity_id, rows["identities"], rows["clips"], entries)
    kept_rows = {t: [r for r in rs if r.get("identity_id") not in hits] for t, rs in rows.items()}
    kept_keys = [r["key"] for r in kept_rows["identities"] if r["status"] == "kept"]
    samples = _samples_of(tar, set(kept_keys))
    result.identities_removed += len(rows["identities"]) - len(kept_rows["identities"])
    result.clips_removed += len(rows["clips"]) - len(kept_rows["clips"])
    result.faces_removed += len(rows["faces"]) - len(kept_rows["faces"])
    result.samples_removed += _count_samples(tar) - len(samples)
    staged = stage_shard(tar, [Sample(key, samples[key]) for key in kept_keys if key in samples])
    meta = tables["identities"].schema.metadata or {}
    meta = {k: v for k, v in meta.items() if k == manifests.META_SHARD}
    meta[manifests.META_SHARD_SHA256] = staged.sha256.encode()
    for table, path in parts.items():
        manifests.write_table_atomic(manifests.to_table(table, kept_rows[table], meta), path)
    commit_shard(staged)
    result.shards_rewritten.append(shard)
    return removals


def _samples_of(tar: Path, keys: set[str]) -> dict[str, list[tuple[str, bytes]]]:
    """The members of the wanted samples, in tar order, as (ext, bytes)."""
    import tarfile

    samples: dict[str, list[tuple[str, bytes]]] = {}
    if not tar.exists():
        return samples
    with tarfile.open(tar, mode="r:") as archive:
        for member in archive:
            key, _, ext = member.name.partition(".")
            if key in keys and member.isreg():
                samples.setdefault(key, []).append((ext, archive.extractfile(member).read()))
    return samples


def _count_samples(tar: Path) -> int:
    import tarfile

    if not tar.exists():
        return 0
    with tarfile.open(tar, mode="r:") as archive:
        return len({m.name.partition(".")[0] for m in archive})


def _rewrite_enumeration_part(config: TakedownConfig, listed: set[str],
                              result: TakedownResult) -> list[tuple[str, str]]:
    from curation import manifests

    path = config.manifests_dir / "clips" / manifests.ENUMERATION_PART
    if not path.exists():
        return []
    rows = _read_part(path, "clips").to_pylist()
    gone = [r for r in rows if any(i in listed for i in _row_ids(r))]
    if not gone:
        return []
    kept = [r for r in rows if not any(i in listed for i in _row_ids(r))]
    manifests.write_table_atomic(manifests.to_table("clips", kept), path)
    result.clips_removed += len(gone)
    removals = []
    for row in gone:
        removals += [("listed", i) for i in _row_ids(row) if i in listed]
        removals.append(("clip", f"{row['source']}:{row['clip_id']}"))
    return removals


def _update_plan_and_shard_table(config: TakedownConfig) -> None:
    """plan.json without removed identities; shards.parquet from the shards on disk."""
    plan_path = config.manifests_dir / "plan.json"
    names: list[str] = []
    if plan_path.exists():
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        removed = removed_hashes(config.manifests_dir)
        for shard in plan.get("plan", {}).get("shards", []):
            shard["identities"] = [i for i in shard["identities"] if not removed.contains(i)]
            names.append(shard["name"])
        _write_atomic_text(plan_path, json.dumps(plan, sort_keys=True, indent=1))
    _write_shards_table(config, names)


def _write_shards_table(config: TakedownConfig, names: list[str]) -> None:
    """shards.parquet as the runner writes it: one row per shard with its tar and parts."""
    from curation import manifests

    rows = []
    for name in names:
        tar = config.shards_dir / name
        part = manifests.part_paths(config.manifests_dir, name)["identities"]
        if not tar.exists() or not part.exists():
            continue
        statuses = pq.read_table(part, columns=["status"]).column(0).to_pylist()
        rows.append({"path": name, "split": name.split("/", 1)[0],
                     "samples": sum(s == "kept" for s in statuses), "bytes": tar.stat().st_size,
                     "sha256": manifests.part_shard_sha256(part)})
    manifests.write_table_atomic(manifests.to_table("shards", rows),
                                 config.manifests_dir / "shards.parquet")


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def apply_takedown(config: TakedownConfig) -> TakedownResult:
    """Remove every listed id from the build in `config.output`; see the module docstring."""
    from curation.planning import read_takedown

    listed = read_takedown(config.file)
    if not config.manifests_dir.is_dir():
        raise TakedownError(f"no manifests folder at {config.manifests_dir}: pass the build's "
                            "--output folder")
    result = TakedownResult()
    shards = sorted({str(p.relative_to(config.shards_dir))
                     for p in config.shards_dir.glob("*/mfhq-*.tar")})
    from curation import manifests

    for part in sorted((config.manifests_dir / "identities").glob("part-*.parquet")):
        shard = _shard_of_part(part)
        if shard and shard not in shards:
            shards.append(shard)
    found: set[str] = set()
    for shard in sorted(shards):
        if not manifests.part_paths(config.manifests_dir, shard)["identities"].exists():
            continue
        removals = _rewrite_shard(config, shard, listed, result)
        # Recorded after each shard, so a crash leaves a record of what is already gone.
        append_record(config.manifests_dir, removals, config.reason, "after_build", shard)
        found |= {v for k, v in removals if k == "listed"}
    removals = _rewrite_enumeration_part(config, listed, result)
    append_record(config.manifests_dir, removals, config.reason, "after_build")
    found |= {v for k, v in removals if k == "listed"}
    _update_plan_and_shard_table(config)
    recorded = removed_hashes(config.manifests_dir)
    result.ids_not_found = sum(1 for i in listed if i not in found and not recorded.contains(i))
    return result


def _shard_of_part(part: Path) -> str | None:
    """'part-train-000003.parquet' -> 'train/mfhq-train-000003.tar'."""
    stem = part.name.removeprefix("part-").removesuffix(".parquet")
    split, _, index = stem.partition("-")
    if split not in ("train", "test") or not index.isdigit():
        return None
    from training.sample_format import shard_name

    return shard_name(split, int(index))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m curation.takedown",
        description="Remove ids from a finished MFHQ build: every identity with a listed id "
                    "(identity, source video e.g. YouTube id, clip, SOURCE:CLIP_ID) leaves its "
                    "shard and the manifests; only affected files are rewritten, atomically. "
                    "The removal is recorded in manifests/takedowns.parquet as salted sha256 "
                    "hashes (no id is kept). Run python -m curation.verify afterwards.")
    p.add_argument("file", metavar="FILE", help="text file of ids, one per line ('#' comments)")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="the build's output folder (default: ./shards and ./manifests)")
    p.add_argument("--reason", default=DEFAULT_REASON, metavar="TEXT",
                   help="reason recorded with each removal")
    return p


def main(argv: list[str] | None = None) -> int:
    config = TakedownConfig(**vars(build_parser().parse_args(argv)))
    try:
        result = apply_takedown(config)
    except (TakedownError, OSError) as err:
        print(f"takedown: error: {err}", file=sys.stderr)
        return 2
    print(f"takedown: removed {result.identities_removed} identities "
          f"({result.samples_removed} samples), {result.clips_removed} clip rows, "
          f"{result.faces_removed} face rows; rewrote {len(result.shards_rewritten)} shard(s)")
    for shard in result.shards_rewritten:
        print(f"  rewrote {shard}")
    if result.ids_not_found:
        print(f"takedown: {result.ids_not_found} listed id(s) occur nowhere in this build")
    print("takedown: add the ids to your build's --takedown file too, so that builds into "
          "other folders leave them out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
