"""The output folder of a build: refuse a different build, overwrite on request, resume.

`manifests/plan.json` records the config hash and the plan's fingerprint. A rerun with the same
arguments resumes: a shard is finished when its tar and its three manifest parts exist and every
part records the tar's sha256 and the planned identities; finished shards are never rebuilt.
A different config (or different source contents) into the same folder is refused with
`BuildRefused` unless `overwrite` is set, which deletes what a build wrote and nothing else.
"""

from __future__ import annotations

import shutil

from curation import build_folder as bf
from curation import manifests
from curation.build.config import BuildConfig
from curation.build.plan import Plan, ShardSpec, plan_json_bytes
from curation.errors import BuildRefused
from mfhq_contract import SPLITS


def prepare_output(config: BuildConfig, folder: bf.BuildFolder, plan: Plan) -> None:
    """Check the output folder against this config and plan, then record the plan there."""
    mdir, sdir = folder.manifests_dir, folder.shards_dir
    config_hash = config.config_hash()
    if folder.plan_path.exists():
        try:
            previous = bf.read_json(folder.plan_path)
        except (OSError, ValueError):
            previous = {}
        same_config = previous.get("config_hash") == config_hash
        same_plan = previous.get("plan", {}).get("fingerprint") == plan.fingerprint()
        if not (same_config and same_plan) and not config.overwrite:
            what = ("was built with different settings" if not same_config else
                    "was planned from different source contents (clips added or removed)")
            raise BuildRefused(
                f"the output folder ({config.shards_dir}, {config.manifests_dir}) {what} "
                f"(config hash {previous.get('config_hash')} vs {config_hash}). Rerun with the "
                "original arguments to resume it, choose another --output, or pass --overwrite "
                "to delete it and build anew.")
        if not (same_config and same_plan):
            clear_outputs(folder)
    elif _has_build_outputs(folder) and not config.overwrite:
        raise BuildRefused(
            f"the output folder ({config.shards_dir}, {config.manifests_dir}) holds shards or "
            f"manifests but no {bf.PLAN_FILE}; choose another --output or pass --overwrite to "
            "delete them.")
    elif config.overwrite:
        clear_outputs(folder)
    for split in SPLITS:
        bf.remove_stale_temporaries(sdir / split)
    for table in manifests.TABLES:
        bf.remove_stale_temporaries(mdir / table)
    bf.remove_stale_temporaries(mdir)
    shutil.rmtree(mdir / bf.INFLIGHT_DIR, ignore_errors=True)
    bf.atomic_write(folder.plan_path, plan_json_bytes(plan, config_hash, config.to_json()))


def _has_build_outputs(folder: bf.BuildFolder) -> bool:
    sdir, mdir = folder.shards_dir, folder.manifests_dir
    return (any(sdir.glob("*/mfhq-*.tar")) or any(mdir.glob("*/part-*.parquet"))
            or folder.shards_table_path.exists())


def clear_outputs(folder: bf.BuildFolder) -> None:
    """Delete what a build writes (shards, parts, tables, run files); nothing else."""
    for split in SPLITS:
        for path in (folder.shards_dir / split).glob("*mfhq-*.tar*"):
            path.unlink()
    for table in manifests.TABLES:
        part_folder = folder.manifests_dir / table
        if part_folder.is_dir():
            shutil.rmtree(part_folder)
    for path in (folder.shards_table_path, folder.run_path, folder.plan_path):
        path.unlink(missing_ok=True)


def shard_is_finished(folder: bf.BuildFolder, spec: ShardSpec) -> bool:
    """Tar present, all parts present, every part records the tar's sha256 and the same ids."""
    tar = folder.tar_path(spec.name)
    parts = folder.part_paths(spec.name)
    if not tar.exists() or not all(p.exists() for p in parts.values()):
        return False
    recorded = {manifests.part_shard_sha256(p) for p in parts.values()}
    if len(recorded) != 1 or None in recorded:
        return False
    try:
        ids = bf.read_part(parts["identities"], "identities").column("identity_id").to_pylist()
    except Exception:  # noqa: BLE001 - an unreadable part means: not finished
        return False
    if ids != [i.identity_id for i in spec.identities]:
        return False
    return recorded == {bf.file_sha256(tar)}
