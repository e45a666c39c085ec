"""Removing ids from a finished MFHQ build.

    mfhq takedown FILE [--output DIR] [--reason TEXT]     (mfhq takedown)

FILE is a takedown list (`curation.takedowns`). An identity with any listed id (its own, one of
its source videos, one of its clips) is removed whole: its sample leaves the shard, its rows
leave the clips, faces and identities parts; listed clips also leave
`clips/part-enumeration.parquet`. Only the shards and parts that held a listed id are rewritten,
each atomically, by the one shard rewrite the build also uses (`curation.pipeline.removal`),
and `shards.parquet` and `plan.json` are updated.
Every removal is appended to the salted record `manifests/takedowns.parquet`, so a later resume
of the build does not bring removed identities back. Rerunning the command after a crash
finishes the job.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from curation import build_folder as bf
from curation import manifests
from curation.errors import SetupError
from curation.pipeline.removal import (
    ShardRewriteError,
    refresh_plan_and_shard_table,
    rewrite_without,
)
from curation.takedowns import (
    DEFAULT_REASON,
    TakedownError,
    append_record,
    read_takedown,
    removed_hashes,
    row_ids,
)
from mfhq_contract.storage import add_options_argument, use_options_argument

# --- removing ids from a finished build --------------------------------------------------------

@dataclass
class TakedownConfig(bf.BuildFolders):
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
        found = {i for i in row_ids(row) if i in listed}
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
    try:
        return bf.read_part(path, table)
    except Exception as err:  # noqa: BLE001
        raise TakedownError(f"{path} is unreadable ({err}); run mfhq verify, rebuild the shard "
                            "(delete its tar and rerun the build), then retry the "
                            "takedown") from err


def _rewrite_shard(config: TakedownConfig, shard: str, listed: set[str], result: TakedownResult
                   ) -> list[tuple[str, str]]:
    """Remove matching identities from one shard and its parts (the one shard rewrite,
    `curation.pipeline.removal`); returns the (kind, id) pairs removed."""
    hits: dict[str, set[str]] = {}

    def select(rows: dict[str, list[dict]]) -> set[str]:
        hits.update(_matching_identities(rows["identities"], rows["clips"], listed))
        return set(hits)

    try:
        # A takedown checks the tar by its full hash: it is run rarely and must not trust a tar
        # whose bytes changed under an unchanged size.
        done = rewrite_without(bf.BuildFolder.of(config), shard, select, full_hash=True)
    except ShardRewriteError as err:
        raise TakedownError(str(err)) from err
    if done is None:
        return []
    removed = done.removed_rows
    removals: list[tuple[str, str]] = []
    for identity_id, entries in sorted(hits.items()):
        removals += _removals_of(identity_id, removed["identities"], removed["clips"], entries)
    result.identities_removed += len(removed["identities"])
    result.clips_removed += len(removed["clips"])
    result.faces_removed += len(removed["faces"])
    result.samples_removed += done.samples_removed
    result.shards_rewritten.append(shard)
    return removals


def _rewrite_enumeration_part(config: TakedownConfig, listed: set[str],
                              result: TakedownResult) -> list[tuple[str, str]]:
    path = bf.BuildFolder.of(config).enumeration_part
    if not path.exists():
        return []
    rows = _read_part(path, "clips").to_pylist()
    gone = [r for r in rows if any(i in listed for i in row_ids(r))]
    if not gone:
        return []
    kept = [r for r in rows if not any(i in listed for i in row_ids(r))]
    bf.write_parquet_atomic(manifests.to_table("clips", kept), path)
    result.clips_removed += len(gone)
    removals = []
    for row in gone:
        removals += [("listed", i) for i in row_ids(row) if i in listed]
        removals.append(("clip", f"{row['source']}:{row['clip_id']}"))
    return removals


def apply_takedown(config: TakedownConfig) -> TakedownResult:
    """Remove every listed id from the build in `config.output`; see the module docstring."""
    listed = read_takedown(config.file)
    bf.require_manifests(config)
    # A takedown rewrites shards and manifests: never beside a build (or another takedown)
    # writing into the same output; a build that holds it makes this one clear error.
    with bf.BuildLock.acquire(config.manifests_dir, str(config.output or ".")):
        return _apply_takedown(config, listed)


def _apply_takedown(config: TakedownConfig, listed: set[str]) -> TakedownResult:
    result = TakedownResult()
    shards = bf.list_tars(config.shards_dir)          # files, or a store's objects
    for part in sorted((config.manifests_dir / "identities").glob("part-*.parquet")):
        shard = bf.shard_of_part(part)
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
    refresh_plan_and_shard_table(bf.BuildFolder.of(config))
    recorded = removed_hashes(config.manifests_dir)
    result.ids_not_found = sum(1 for i in listed if i not in found and not recorded.contains(i))
    return result


def build_parser(prog: str = "mfhq takedown") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Remove ids from a finished MFHQ build: every identity with a listed id "
                    "(identity, source video e.g. YouTube id, clip, SOURCE:CLIP_ID) leaves its "
                    "shard and the manifests; only affected files are rewritten, atomically. "
                    "The removal is recorded in manifests/takedowns.parquet as salted sha256 "
                    "hashes (no id is kept). Run mfhq verify afterwards.")
    p.add_argument("file", metavar="FILE", help="text file of ids, one per line ('#' comments)")
    p.add_argument("--output", default=None, metavar="DIR|URL",
                   help="the build's output folder (default: ./shards and ./manifests), or its "
                        "store URL (s3://bucket/mfhq)")
    p.add_argument("--reason", default=DEFAULT_REASON, metavar="TEXT",
                   help="reason recorded with each removal")
    add_options_argument(p, "an s3:// / gs:// --output")
    return p


def main(argv: list[str] | None = None, prog: str = "mfhq takedown") -> int:
    parser = build_parser(prog)
    ns = parser.parse_args(argv)
    use_options_argument(parser, ns)
    config = TakedownConfig(**vars(ns))
    try:
        result = apply_takedown(config)
    except (SetupError, OSError) as err:
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
