"""The on-disk build: every file name, the one atomic writer, the one hash, the readers.

A build folder (`--output DIR`, or the current folder) holds

    shards/<split>/mfhq-<split>-NNNNNN.tar   WebDataset shards (mfhq_contract)
    manifests/clips|faces|identities/part-<split>-NNNNNN.parquet   one part per shard
    manifests/clips/part-enumeration.parquet clips rejected before analysis
    manifests/shards.parquet                 one row per written shard
    manifests/plan.json, run.json            the plan (with the config hash) and the run record
    manifests/takedowns.parquet              salted hashes of removed ids (curation.takedowns)
    manifests/.inflight/                     which clip each builder is on (hidden, transient)
    logs/                                    third-party output of every process (not an output)

Writers go through `atomic_write`/`write_parquet_atomic`: a hidden temporary file in the target
folder, fsynced, renamed into place, the folder fsynced; readers skip hidden files, so no reader
ever sees a partial file. The build, `verify`, `report` and `takedown` all read through here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curation import manifests
from curation.errors import BuildFolderError
from curation.records import Status
from mfhq_contract import SPLITS

PLAN_FILE = "plan.json"
RUN_FILE = "run.json"
SHARDS_TABLE = "shards.parquet"
INFLIGHT_DIR = ".inflight"
LOGS_DIR = "logs"


class BuildFolders:
    """The folders of a build named by `output`: OUTPUT/shards, OUTPUT/manifests, OUTPUT/logs,
    or ./shards, ./manifests, ./logs when `output` is empty. A mixin of every config that works
    on a build folder (build, verify, report, takedown)."""

    output: str | None

    @property
    def shards_dir(self) -> Path:
        return Path(self.output) / "shards" if self.output else Path("shards")

    @property
    def manifests_dir(self) -> Path:
        return Path(self.output) / "manifests" if self.output else Path("manifests")

    @property
    def logs_dir(self) -> Path:
        return Path(self.output) / LOGS_DIR if self.output else Path(LOGS_DIR)


@dataclass(frozen=True)
class BuildFolder(BuildFolders):
    """A build folder with absolute paths (what Ray workers on other nodes are handed)."""

    output: str | None

    @classmethod
    def of(cls, folders: BuildFolders) -> BuildFolder:
        return cls(str(Path(folders.output or ".").resolve()))

    @property
    def plan_path(self) -> Path:
        return self.manifests_dir / PLAN_FILE

    @property
    def run_path(self) -> Path:
        return self.manifests_dir / RUN_FILE

    @property
    def shards_table_path(self) -> Path:
        return self.manifests_dir / SHARDS_TABLE

    @property
    def enumeration_part(self) -> Path:
        return self.manifests_dir / "clips" / manifests.ENUMERATION_PART

    def tar_path(self, shard: str) -> Path:
        return self.shards_dir / shard

    def part_paths(self, shard: str) -> dict[str, Path]:
        return manifests.part_paths(self.manifests_dir, shard)

    def inflight_marker(self, shard: str) -> Path:
        return self.manifests_dir / INFLIGHT_DIR / manifests.part_name(shard).replace(
            ".parquet", ".json")


# --- writing ------------------------------------------------------------------------------------

def _temporary(path: Path) -> Path:
    # Hidden (dataset readers skip it) and per process (two writers never share one).
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write bytes (or UTF-8 text) to `path` so that readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """A Parquet file written like `atomic_write` (zstd)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    pq.write_table(table, tmp, compression="zstd")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def staged_path(final: Path) -> Path:
    """Where a file is written before `commit` renames it to `final` (the tar writer's stage)."""
    return _temporary(final)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete leftover '.<name>.tmp' files of killed writers in a folder; returns how many."""
    removed = 0
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks (the one hash of the project's files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_sha256_or_none(path: str | os.PathLike | None) -> str | None:
    try:
        return file_sha256(Path(path)) if path else None
    except OSError:
        return None


# --- reading ------------------------------------------------------------------------------------

def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file (plan.json, run.json); raises OSError or ValueError as they come."""
    value = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


def read_part(path: Path, table: str, columns: list[str] | None = None) -> pa.Table:
    """One manifest part with its declared schema (or only `columns` of it) and the file's own
    metadata (the shard sha256 and size it records); raises on an unreadable part."""
    data = pq.read_table(path, schema=manifests.SCHEMAS[table], columns=columns)
    return data.replace_schema_metadata(pq.read_schema(path).metadata)


def read_manifest_table(manifests_dir: Path | str, name: str,
                        columns: list[str] | None = None,
                        on_rows: Callable[[int, int], None] | None = None) -> pa.Table:
    """One manifest table (all its parts) with its declared schema; empty when none was
    written. `on_rows(done, total)` is called per record batch (progress bars)."""
    manifests_dir = Path(manifests_dir)
    schema = manifests.SCHEMAS[name]
    target = pa.schema([schema.field(c) for c in columns]) if columns else schema
    if name == "shards":
        path = manifests_dir / SHARDS_TABLE
        table = pq.read_table(path, schema=schema) if path.exists() else schema.empty_table()
        return table.select(columns) if columns else table
    folder = manifests_dir / name
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return target.empty_table()
    dataset = pads.dataset(folder, schema=schema, format="parquet")
    total = dataset.count_rows() if on_rows else 0
    batches, done = [], 0
    for batch in dataset.to_batches(columns=columns):
        batches.append(batch)
        done += batch.num_rows
        if on_rows:
            on_rows(done, total)
    return pa.Table.from_batches(batches, schema=target)


def read_manifest(manifests_dir: Path | str, name: str, columns: list[str] | None = None,
                  on_rows: Callable[[int, int], None] | None = None):
    """`read_manifest_table` as a pandas DataFrame."""
    return read_manifest_table(manifests_dir, name, columns, on_rows).to_pandas()


def write_shard_parts(folder: BuildFolder, shard: str, shard_sha256: str,
                      rows: dict[str, list[dict[str, Any]]],
                      metadata: dict[bytes, bytes] | None = None,
                      shard_bytes: int | None = None) -> None:
    """Write the clips/faces/identities parts of one shard; each records the shard's sha256,
    byte size and name, so that a part and a tar that do not belong together are told apart
    (and a resume can tell a finished shard by its size without reading it).

    `shard_bytes` defaults to the size of the tar this process staged for `shard`
    (`staged_path`): parts are written between staging and commit."""
    if shard_bytes is None:
        staged = staged_path(folder.tar_path(shard))
        shard_bytes = staged.stat().st_size if staged.exists() else None
    meta = {**(metadata or {}), manifests.META_SHARD_SHA256: shard_sha256.encode(),
            manifests.META_SHARD: shard.encode()}
    if shard_bytes is not None:
        meta[manifests.META_SHARD_BYTES] = str(int(shard_bytes)).encode()
    for table, path in folder.part_paths(shard).items():
        write_parquet_atomic(manifests.to_table(table, rows.get(table, []), meta), path)


@dataclass
class TarMember:
    """One member of a shard tar: its name, whether it is a plain file, and its bytes (None for
    anything that is not a plain file)."""

    name: str
    is_file: bool
    data: bytes | None

    @property
    def key(self) -> str:
        return self.name.partition(".")[0]

    @property
    def ext(self) -> str:
        return self.name.partition(".")[2]


def iter_tar(tar: Path, wanted: Callable[[str], bool] | None = None,
             max_member_bytes: int | None = None) -> Iterator[TarMember]:
    """The members of a shard tar in order, bytes read only for plain files that `wanted`
    accepts (others come with data None). Raises tarfile.TarError / OSError on a broken tar and
    ValueError for a member over `max_member_bytes`."""
    with tarfile.open(tar, mode="r:") as archive:
        for info in archive:
            data = None
            if info.isreg() and (wanted is None or wanted(info.name)):
                if max_member_bytes is not None and info.size > max_member_bytes:
                    raise ValueError(f"member {info.name} is {info.size} bytes, too large")
                handle = archive.extractfile(info)
                data = handle.read() if handle is not None else None
            yield TarMember(info.name, info.isreg(), data)


def read_samples(tar: Path, keys: set[str] | None = None) -> dict[str, list[tuple[str, bytes]]]:
    """{key: [(ext, bytes), ...]} in tar order for the wanted keys (all when None)."""
    samples: dict[str, list[tuple[str, bytes]]] = {}
    if not tar.exists():
        return samples
    for member in iter_tar(tar, None if keys is None else
                           (lambda name: name.partition(".")[0] in keys)):
        if member.data is not None:
            samples.setdefault(member.key, []).append((member.ext, member.data))
    return samples


def count_samples(tar: Path) -> int:
    if not tar.exists():
        return 0
    return len({m.key for m in iter_tar(tar, wanted=lambda _name: False)})


def shard_of_part(part: Path) -> str | None:
    """'part-train-000003.parquet' -> 'train/mfhq-train-000003.tar' (None for other files)."""
    from mfhq_contract import shard_name

    stem = part.name.removeprefix("part-").removesuffix(".parquet")
    split, _, index = stem.partition("-")
    if split not in SPLITS or not index.isdigit():
        return None
    return shard_name(split, int(index))


# --- the shards table and the outcome counts ----------------------------------------------------

def write_shards_table(folder: BuildFolder, names: list[str]) -> list[dict]:
    """shards.parquet from the finished shards on disk among `names` (the source of truth after
    resumes and takedowns): path, split, kept samples, bytes, the sha256 its parts record."""
    rows = []
    for name in names:
        tar = folder.tar_path(name)
        part = folder.part_paths(name)["identities"]
        if not tar.exists() or not part.exists():
            continue
        statuses = pq.read_table(part, columns=["status"]).column(0).to_pylist()
        rows.append({"path": name, "split": name.split("/", 1)[0],
                     "samples": sum(s == Status.KEPT for s in statuses),
                     "bytes": tar.stat().st_size,
                     "sha256": manifests.part_shard_sha256(part)})
    write_parquet_atomic(manifests.to_table("shards", rows), folder.shards_table_path)
    return rows


def _value_counts(series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.fillna("unknown").value_counts().sort_index().items()}


def outcome_counts(clips, identities, faces) -> dict[str, Any]:
    """The build's outcome counts from its manifest frames (the summary, run.json, the report).
    `faces` needs only its `selected` column."""
    not_ok = clips[clips["status"] != Status.OK]
    kept = identities[identities["status"] == Status.KEPT]
    dropped = identities[identities["status"] != Status.KEPT]
    return {
        "clips_read": int(len(clips)),
        "clips_ok": int((clips["status"] == Status.OK).sum()),
        "clips_not_ok_by_reason": _value_counts(not_ok["reason"]),
        "identities_planned": int(len(identities)),
        "identities_kept": int(len(kept)),
        "identities_kept_by_split": {str(k): int(v) for k, v in
                                     kept["split"].value_counts().sort_index().items()},
        "identities_dropped_by_reason": _value_counts(dropped["reason"]),
        "faces_considered": int(len(faces)),
        "faces_selected": int(faces["selected"].sum()) if len(faces) else 0,
    }


def count_outcomes(manifests_dir: Path) -> dict[str, Any]:
    """`outcome_counts` of the manifests on disk."""
    return outcome_counts(read_manifest(manifests_dir, "clips"),
                          read_manifest(manifests_dir, "identities"),
                          read_manifest(manifests_dir, "faces", columns=["selected"]))


def require_manifests(folders: BuildFolders) -> Path:
    """The manifests folder of a finished build, or BuildFolderError saying what to pass."""
    if not folders.manifests_dir.is_dir():
        raise BuildFolderError(
            f"no manifests folder at {folders.manifests_dir}: pass the build's --output folder "
            "(the one holding manifests/ and shards/)")
    return folders.manifests_dir
