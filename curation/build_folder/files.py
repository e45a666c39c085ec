"""Files of a build: the one atomic writer, the one hash, JSON records.

Writers go through `atomic_write`/`write_parquet_atomic`: a hidden temporary file in the target
folder, fsynced, renamed into place, the folder fsynced; readers skip hidden files, so no reader
ever sees a partial file. A writer that fails (a full disk) removes its temporary and raises.
For an output on a store the file is then uploaded whole to its object (`store.publish`).

`is_output_full(err)` tells the errors of an output that refuses writes (no space, quota,
file too large, read-only) from every other error, also through the wrappers Ray puts around
a task's exception; `OUTPUT_FULL_ERRNOS` lists them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.build_folder.store import open_binary, publish


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
    """Write bytes (or UTF-8 text) to `path` so that readers see the old file or the new one;
    on failure nothing is left but the old file, and the error is raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)     # a half-written temporary only takes space
        raise
    fsync_dir(path.parent)
    publish(path)       # an output on a store: the object, written whole


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """A Parquet file written like `atomic_write` (zstd)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    publish(path)


# The output refuses writes: no space, over quota, a file too large, a read-only filesystem.
OUTPUT_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
# How those errors read once a task's exception became text (Arrow's IOError, Ray's failures).
_OUTPUT_FULL_TEXTS = tuple(f"[Errno {e}]" for e in sorted(OUTPUT_FULL_ERRNOS)) + tuple(
    os.strerror(e) for e in sorted(OUTPUT_FULL_ERRNOS))


def is_output_full(err: BaseException | str | None) -> bool:
    """True when `err` (an exception, or a failure message) is the output refusing writes: an
    OSError with one of OUTPUT_FULL_ERRNOS, or any error caused by one (Ray's RayTaskError
    `.cause`, `__cause__`, `__context__`), or a message that quotes one."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, str):
            return any(text in err for text in _OUTPUT_FULL_TEXTS)
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in OUTPUT_FULL_ERRNOS:
            return True
        if any(text in str(err) for text in _OUTPUT_FULL_TEXTS):
            return True     # pyarrow raises OSError without errno, quoting it in the text
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return False


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
    """The sha256 of a file's bytes, read in chunks (the one hash of the project's files); a
    file of an output on a store is read from its object."""
    digest = hashlib.sha256()
    with open_binary(path) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_sha256_or_none(path: str | os.PathLike | None) -> str | None:
    try:
        return file_sha256(Path(path)) if path else None
    except OSError:
        return None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file (plan.json, run.json); raises OSError or ValueError as they come."""
    value = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value
