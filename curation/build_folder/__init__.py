"""The on-disk build: every file name, the one atomic writer, the one hash, the readers.

The build, `verify`, `report` and `takedown` all read and write a build folder through this
package (imported as `from curation import build_folder as bf`), whose rooms are:

    layout   file and folder names, `BuildFolder` paths, which shard a part belongs to
    files    the atomic writers, sha256 of a file, JSON records, what a full output raises
    lock     one build per output: a lock with a lease and a heartbeat
    tables   manifest parts and whole manifests, the shards table, outcome counts
    tars     shard tars read as bytes
    store    an output on a store (`s3://...`): the local mirror, publishing, listing
"""

from curation.build_folder.files import (
    OUTPUT_FULL_ERRNOS,
    atomic_write,
    file_sha256,
    file_sha256_or_none,
    fsync_dir,
    is_output_full,
    read_json,
    remove_stale_temporaries,
    staged_path,
    write_parquet_atomic,
)
from curation.build_folder.layout import (
    LOGS_DIR,
    PLAN_FILE,
    RUN_FILE,
    SHARDS_TABLE,
    BuildFolder,
    BuildFolders,
    require_manifests,
    shard_of_part,
)
from curation.build_folder.lock import BuildLock, LockLost, OutputLocked
from curation.build_folder.store import (
    check_output,
    exists,
    list_tars,
    mirror_root,
    publish,
    remove,
    size,
    store_url,
    sync_down,
)
from curation.build_folder.tables import (
    count_outcomes,
    iter_manifest_batches,
    outcome_counts,
    read_manifest,
    read_manifest_table,
    read_part,
    write_shard_parts,
    write_shards_table,
)
from curation.build_folder.tars import TarMember, count_samples, iter_tar, read_samples

__all__ = [
    "OUTPUT_FULL_ERRNOS", "BuildLock", "LockLost", "OutputLocked", "is_output_full",
    "LOGS_DIR", "PLAN_FILE", "RUN_FILE", "SHARDS_TABLE", "BuildFolder",
    "BuildFolders", "TarMember", "atomic_write", "count_outcomes", "count_samples",
    "file_sha256", "file_sha256_or_none", "fsync_dir", "iter_manifest_batches", "iter_tar", "outcome_counts",
    "read_json", "read_manifest", "read_manifest_table", "read_part", "read_samples",
    "remove_stale_temporaries", "require_manifests", "shard_of_part", "staged_path",
    "write_parquet_atomic", "write_shard_parts", "write_shards_table",
    "check_output", "exists", "list_tars", "mirror_root", "publish", "remove", "size", "store_url",
    "sync_down",
]
