"""The output folder of a build: refuse a different build, grow or resume the same one.

`manifests/plan.json` records the config hash and the plan (per shard: its generation, its
identities and what each was built from). A rerun with the same settings
- resumes when the sources are unchanged: a shard is finished when its tar and its three
  manifest parts exist, the parts agree on the tar's sha256 and byte size, the tar has that
  size and the parts hold the planned identities, and no clip failure it records was the
  disk's (a full output while writing a work file: built again). Only Parquet footers, the
  identities column and the clips' reason column are read, never the tar: O(shards).
  `--verify-finished` also hashes every tar; the full byte check is `mfhq verify`'s;
- grows the build when sources changed (`curation.pipeline.incremental`): unchanged identities
  stay in their finished shards, new and changed ones go into new shards; a finished shard that
  still holds identities the plan took out of it is rewritten without them
  (`curation.pipeline.removal`), which also finishes a rewrite a kill interrupted.
A different config into the same folder is refused with `BuildRefused` unless `overwrite` is
set, which deletes what a build wrote and nothing else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from curation import build_folder as bf
from curation import manifests
from curation.errors import BuildRefused
from curation.pipeline.config import BuildConfig
from curation.pipeline.incremental import Increment, grow, has_digests
from curation.pipeline.plan import Plan, ShardSpec, plan_json_bytes
from curation.pipeline.removal import Rewrite, rewrite_without
from mfhq_contract import SPLITS


@dataclass
class OutputPlan:
    """What this run does to the output folder: the plan it builds, the increment over the
    recorded plan (None for a first build or a replaced one), and whether it clears the
    folder first (--overwrite of a different build)."""

    plan: Plan
    increment: Increment | None = None
    clear: bool = False


def decide_output(config: BuildConfig, folder: bf.BuildFolder, fresh: Plan,
                  retry: set[str] | frozenset[str] = frozenset()) -> OutputPlan:
    """The plan this run builds into `folder` (reads only; raises BuildRefused)."""
    config_hash = config.config_hash()
    if not folder.plan_path.exists():
        if _has_build_outputs(folder) and not config.overwrite:
            raise BuildRefused(
                f"the output folder ({config.shards_dir}, {config.manifests_dir}) holds shards "
                f"or manifests but no {bf.PLAN_FILE}; choose another --output or pass "
                "--overwrite to delete them.")
        return OutputPlan(fresh, clear=config.overwrite)
    try:
        previous = bf.read_json(folder.plan_path)
    except (OSError, ValueError):
        previous = {}
    if previous.get("config_hash") != config_hash:
        if config.overwrite:
            return OutputPlan(fresh, clear=True)
        raise BuildRefused(
            f"the output folder ({config.shards_dir}, {config.manifests_dir}) was built with "
            f"different settings (config hash {previous.get('config_hash')} vs {config_hash}). "
            "Rerun with the original arguments to resume or grow it, choose another --output, "
            "or pass --overwrite to delete it and build anew.")
    recorded = previous.get("plan", {})
    if not has_digests(recorded):
        # A plan written before incremental builds: it can only be resumed as it is.
        if recorded.get("fingerprint") == fresh.fingerprint():
            return OutputPlan(fresh)
        if config.overwrite:
            return OutputPlan(fresh, clear=True)
        raise BuildRefused(
            f"the output folder ({config.shards_dir}, {config.manifests_dir}) was planned from "
            "different source contents by a version without incremental builds; choose "
            "another --output or pass --overwrite to delete it and build anew.")
    plan, increment = grow(fresh, recorded, config.plan.identities_per_shard, retry)
    return OutputPlan(plan, increment)


def prepare_output(config: BuildConfig, folder: bf.BuildFolder, decided: OutputPlan) -> None:
    """Clear the folder if decided, remove leftovers of killed writers, record the plan."""
    if decided.clear:
        clear_outputs(folder)
    remove_temporaries(folder)
    bf.atomic_write(folder.plan_path, plan_json_bytes(decided.plan, config.config_hash(),
                                                      config.to_json()))


def remove_temporaries(folder: bf.BuildFolder) -> int:
    """Delete the hidden temporaries of writers that did not finish (killed, or refused by a
    full disk) in every folder a build writes: shards, manifest parts, work files, logs.
    Only while this process holds the output's lock, so no live writer owns one. (A store has
    no temporaries: an object is written whole or not at all.)"""
    from curation.pipeline.analyze import WORK_DIR

    mdir, sdir = folder.manifests_dir, folder.shards_dir
    folders = [sdir / split for split in SPLITS] + [mdir / table for table in manifests.TABLES]
    folders += [mdir, folder.logs_dir]
    work = folder.output_root / WORK_DIR
    if work.is_dir():
        folders += [p for p in work.iterdir() if p.is_dir()]
    return sum(bf.remove_stale_temporaries(f) for f in folders)


def output_name(config: BuildConfig) -> str:
    """The output as messages name it: the --output folder or URL, or where ./shards and
    ./manifests are."""
    if config.on_store:
        return str(config.output).rstrip("/")
    return str(config.output_root.resolve() if config.output else Path.cwd())


def output_full_message(config: BuildConfig, err: BaseException | str) -> str:
    """The one message of a build stopped by an output that refuses writes."""
    import errno
    import os

    cause = next((os.strerror(e) for e in sorted(bf.OUTPUT_FULL_ERRNOS)
                  if f"[Errno {e}]" in str(err) or os.strerror(e) in str(err)
                  or getattr(err, "errno", None) == e), "it refuses writes")
    if cause == os.strerror(errno.EROFS):
        fix = "make it writable"
    else:
        fix = "free space there (or choose an --output with room)"
    return (f"the output {output_name(config)} is full or refuses writes ({cause}); the build "
            f"stopped. What is finished is kept (finished shards, analysed clips; no temporary "
            f"files are left): {fix} and rerun the same command to finish the rest.")


def _has_build_outputs(folder: bf.BuildFolder) -> bool:
    sdir, mdir = folder.shards_dir, folder.manifests_dir
    return (bool(bf.list_tars(sdir)) or any(mdir.glob("*/part-*.parquet"))
            or folder.shards_table_path.exists())


def clear_outputs(folder: bf.BuildFolder) -> None:
    """Delete what a build writes (shards, parts, tables, run files); nothing else."""
    for split in SPLITS:
        for path in (folder.shards_dir / split).glob("*mfhq-*.tar*"):
            path.unlink()
    for name in bf.list_tars(folder.shards_dir):
        bf.remove(folder.tar_path(name))
    for table in manifests.TABLES:
        bf.remove(folder.manifests_dir / table, recursive=True)
    for path in (folder.shards_table_path, folder.run_path, folder.plan_path):
        bf.remove(path)


class ShardState(enum.Enum):
    FINISHED = "finished"
    HOLDS_MORE = "holds_more"        # finished, with identities the plan took out of it
    NEEDS_REPAIR = "needs_repair"    # a rewrite was killed: parts or tar lag the others
    UNFINISHED = "unfinished"


def shard_state(folder: bf.BuildFolder, spec: ShardSpec, *, full_hash: bool = False
                ) -> ShardState:
    """The state of one planned shard, from Parquet footers, the identities column and the
    tar's size (its bytes are read only with `full_hash`, or for parts that record no size)."""
    tar = folder.tar_path(spec.name)
    parts = folder.part_paths(spec.name)
    if not all(p.exists() for p in parts.values()):
        return ShardState.UNFINISHED
    tar_bytes = bf.size(tar)         # a HEAD of its object on a store
    if tar_bytes is None:
        return ShardState.UNFINISHED
    try:
        ids = bf.read_part(parts["identities"], "identities",
                           columns=["identity_id"]).column(0).to_pylist()
    except (OSError, pa.ArrowException, ValueError):
        return ShardState.UNFINISHED
    planned = [i.identity_id for i in spec.identities]
    wanted = set(planned)
    if [i for i in ids if i in wanted] != planned:
        return ShardState.UNFINISHED       # not (a superset of) this shard: build it
    if records_output_failure(parts["clips"]):
        return ShardState.UNFINISHED       # its clips failed because the disk did: build it
    recorded = {manifests.part_shard_record(p) for p in parts.values()}
    sha, size = next(iter(recorded))
    # The states a killed rewrite leaves: parts that disagree, or a tar of another size.
    if len(recorded) != 1 or sha is None:
        return ShardState.NEEDS_REPAIR
    if size is not None and tar_bytes != size:
        return ShardState.NEEDS_REPAIR
    # Same size, other bytes: not something our writers leave; the tar is built again.
    if (full_hash or size is None) and bf.file_sha256(tar) != sha:
        return ShardState.UNFINISHED
    return ShardState.FINISHED if ids == planned else ShardState.HOLDS_MORE


# Reasons under which a clip's failure may be the output's and not the clip's: the analysis
# raised (internal_error) or its task failed (worker_crashed) while writing a work file.
_MAYBE_OUTPUT_REASONS = ("internal_error", "worker_crashed")


def records_output_failure(clips_part: Path) -> bool:
    """True when a shard's clips part records a clip failure that was the output refusing
    writes (a full disk while writing the clip's work file): such outcomes are the disk's, not
    the clip's, so the shard is not finished and is built again. Reads the reason column, and
    the messages of internal_error / worker_crashed rows only; an unreadable part is left to
    the other checks."""
    import pyarrow.compute as pc

    try:
        reasons = bf.read_part(clips_part, "clips", columns=["reason"]).column(0)
        if not pc.any(pc.is_in(reasons, pa.array(_MAYBE_OUTPUT_REASONS))).as_py():
            return False
        table = bf.read_part(clips_part, "clips", columns=["reason", "message"])
    except (OSError, pa.ArrowException, ValueError):
        return False
    return any(reason in _MAYBE_OUTPUT_REASONS and bf.is_output_full(message or "")
               for reason, message in zip(table.column("reason").to_pylist(),
                                          table.column("message").to_pylist(), strict=True))


def drop_output_failures(folder: bf.BuildFolder) -> list[str]:
    """Take back the commit of every planned shard whose clips record the disk's failure
    (`records_output_failure`): its tar, then its parts are deleted (tar first: parts without
    a tar are an unfinished shard, as a kill leaves it), and shards.parquet is written again
    without it, so no reader, manifest or `mfhq verify` keeps the disk's failure as the clips';
    a rerun builds it from the clips' work files and analyses the failed clips again. Returns
    the shards taken back."""
    try:
        names = [s["name"] for s in bf.read_json(folder.plan_path)["plan"]["shards"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    dropped = [name for name in names if folder.part_paths(name)["clips"].exists()
               and records_output_failure(folder.part_paths(name)["clips"])]
    for name in dropped:
        bf.remove(folder.tar_path(name))
        for part in folder.part_paths(name).values():
            bf.remove(part)
    if dropped:
        try:
            bf.write_shards_table(folder, names)
        except OSError:
            bf.remove(folder.shards_table_path)   # rewritten by the rerun
    return dropped


@dataclass
class ResumeCheck:
    todo: list[ShardSpec] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)


def resume_check(folder: bf.BuildFolder, plan: Plan, *, full_hash: bool = False,
                 dry_run: bool = False) -> ResumeCheck:
    """The shards left to build. A finished shard that holds identities the plan took out of it
    is rewritten without them first; one whose parts or tar lag the others (a rewrite killed
    midway) is rewritten from its own samples if the tar still holds every kept one.
    With `dry_run`, nothing is written: such shards are reported as rewrites to do."""
    check = ResumeCheck()
    for spec in plan.shards:
        state = shard_state(folder, spec, full_hash=full_hash)
        if state in (ShardState.HOLDS_MORE, ShardState.NEEDS_REPAIR):
            planned = {i.identity_id for i in spec.identities}
            if dry_run:
                check.rewrites.append(Rewrite(spec.name))
                continue
            # A repair must find every kept sample in the tar; if it cannot (a tar that is
            # not ours), nothing is written and the shard is built again.
            done = rewrite_without(
                folder, spec.name,
                lambda rows, planned=planned: {r["identity_id"] for r in rows["identities"]}
                - planned, full_hash=full_hash, require_all_samples=True)
            if done is not None:
                check.rewrites.append(done)
            state = shard_state(folder, spec, full_hash=full_hash)
        if state is not ShardState.FINISHED:
            check.todo.append(spec)
    return check
