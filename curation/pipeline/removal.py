"""Identities out of a finished build: the one shard rewrite, and the plan and shard table
that follow it.

Used by `mfhq takedown` (identities with a listed id leave the build), by the duplicate pass
(`curation.pipeline.identity_check`: the same person in two splits) and by the build itself (an
incremental rerun takes a superseded or vanished identity out of its old shard; a resume
finishes a rewrite that a kill interrupted). The build never imports `curation.audit`: audit
calls this module.

Contract of `rewrite_without`:
- the identities chosen by `select(rows)` leave the shard: their sample leaves the tar, their
  rows leave the clips, faces and identities parts; every other sample keeps its bytes and order;
- the new tar is staged, then the three parts are written (each recording the new tar's sha256
  and size), then the tar is renamed into place: each file is replaced atomically, and a tar
  under its final name never disagrees with parts newer than it except when a kill falls
  between the parts and the rename. That state is repaired by calling again: with nothing left
  to select, a tar that disagrees with its parts is re-staged from its own samples;
- deterministic: the same shard and the same selection give the same bytes, so an interrupted
  and repeated rewrite ends where an undisturbed one does.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from curation import build_folder as bf
from curation import manifests
from curation.records import Status
from curation.takedowns import removed_hashes

Rows = dict[str, list[dict]]


class ShardRewriteError(Exception):
    """A part of the shard cannot be read; the message names it."""


@dataclass
class Rewrite:
    """What one rewrite removed (the rows are the removed manifest rows, per table)."""

    shard: str
    identities: list[str] = field(default_factory=list)
    removed_rows: Rows = field(default_factory=dict)
    samples_removed: int = 0
    sha256: str = ""
    bytes: int = 0


def read_rows(folder: bf.BuildFolder, shard: str) -> Rows:
    """The rows of a shard's three parts (raises ShardRewriteError naming an unreadable part)."""
    rows: Rows = {}
    for table, path in folder.part_paths(shard).items():
        try:
            rows[table] = bf.read_part(path, table).to_pylist()
        except (OSError, pa.ArrowException, ValueError) as err:
            raise ShardRewriteError(
                f"{path} is unreadable ({err}); run mfhq verify, delete the shard's tar so the "
                "build rebuilds it, then retry") from err
    return rows


def tar_matches_parts(folder: bf.BuildFolder, shard: str, *, full_hash: bool) -> bool:
    """Whether the tar is the one its identities part records: by size (from the part's
    metadata; O(1)), or by sha256 when `full_hash` or when the part records no size."""
    tar = folder.tar_path(shard)
    sha, size = manifests.part_shard_record(folder.part_paths(shard)["identities"])
    tar_bytes = bf.size(tar)
    if tar_bytes is None or sha is None:
        return False
    if full_hash or size is None:
        return bf.file_sha256(tar) == sha
    return tar_bytes == size


def rewrite_without(folder: bf.BuildFolder, shard: str, select: Callable[[Rows], set[str]], *,
                    full_hash: bool = True, require_all_samples: bool = False
                    ) -> Rewrite | None:
    """Remove the identities `select(rows)` names from `shard` (see the module docstring).

    Works from any state a killed rewrite leaves (some parts rewritten, the tar not yet renamed):
    filtering rows that are already filtered changes nothing, and the kept samples are read from
    the tar under the final name. Returns None when there was nothing to do (nothing selected and
    the tar matches its parts), and, with `require_all_samples`, when the tar does not hold every
    kept sample or does not read: then nothing is written and the caller rebuilds the shard."""
    from curation.pipeline.tar_writer import Sample, commit_shard, stage_shard

    rows = read_rows(folder, shard)
    chosen = select(rows) & {r["identity_id"] for r in rows["identities"]}
    if not chosen and tar_matches_parts(folder, shard, full_hash=full_hash):
        return None
    kept = {t: [r for r in rs if r.get("identity_id") not in chosen] for t, rs in rows.items()}
    removed = {t: [r for r in rs if r.get("identity_id") in chosen] for t, rs in rows.items()}
    kept_keys = [r["key"] for r in kept["identities"] if r["status"] == Status.KEPT]
    tar = folder.tar_path(shard)
    try:
        samples = bf.read_samples(tar, set(kept_keys))
        samples_before = bf.count_samples(tar)
    except (OSError, tarfile.TarError, ValueError):
        if require_all_samples:
            return None
        raise
    if require_all_samples and not set(kept_keys) <= set(samples):
        return None
    staged = stage_shard(tar, [Sample(key, samples[key]) for key in kept_keys if key in samples])
    bf.write_shard_parts(folder, shard, staged.sha256, kept, shard_bytes=staged.bytes)
    commit_shard(staged)
    return Rewrite(shard, sorted(chosen), removed, samples_before - staged.samples,
                   staged.sha256, staged.bytes)


def refresh_plan_and_shard_table(folder: bf.BuildFolder) -> None:
    """After removals: plan.json without the removed identities (by the takedown record's
    hashes), and shards.parquet from the shards on disk."""
    names: list[str] = []
    if folder.plan_path.exists():
        plan = bf.read_json(folder.plan_path)
        removed = removed_hashes(folder.manifests_dir)
        for shard in plan.get("plan", {}).get("shards", []):
            shard["identities"] = [i for i in shard["identities"] if not removed.contains(i)]
            if isinstance(shard.get("digests"), dict):
                shard["digests"] = {i: shard["digests"][i] for i in shard["identities"]
                                    if i in shard["digests"]}
            names.append(shard["name"])
        bf.atomic_write(folder.plan_path, json.dumps(plan, sort_keys=True, indent=1))
    bf.write_shards_table(folder, names)
