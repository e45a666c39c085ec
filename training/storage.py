"""Where the trainer's files live: local paths or fsspec URLs (`s3://`, `gs://`, ...).

Contract:
- `is_url(location)`: True for `scheme://...` other than `file://` (those go through fsspec).
- `set_options(options)` sets the fsspec storage options (credentials, endpoint, ...) the whole
  process uses for URLs (`--storage-options JSON`); without them each store's standard
  configuration applies (`AWS_*`, `AWS_ENDPOINT_URL`, profiles, instance roles). They are never
  written into a checkpoint or config file.
- `RunDir(location)`: a run's output folder. `write(name, writer)` / `write_bytes` are atomic:
  locally a temp file in the same folder, fsynced, renamed over; on an object store a local
  spool file, then one upload, which the store makes visible only once it completed whole (a
  killed upload leaves no object), so a reader never sees part of a file. `read_bytes`, `exists`, `names`, `delete`, `size`.
- `read_bytes(location)` / `exists(location)` / `size(location)` for single files (checkpoints
  given by path or URL).
- `open_shard(url)`: a readable binary stream of a shard URL (registered with webdataset for
  the object-store schemes by `register_webdataset_schemes`, so `--shards 's3://b/x-{0..9}.tar'`
  streams through fsspec; `pipe:`, `http(s)://` and paths keep webdataset's own openers).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from mfhq_contract.storage import (
    add_options_argument,
    filesystem,
    is_url,
    local_path,
    options,
    scheme,
    set_options,
)

__all__ = ["RunDir", "add_options_argument", "exists", "is_url", "join", "local_copy", "open_shard", "options",
           "read_bytes", "read_head", "register_webdataset_schemes", "scheme",
           "set_options", "size"]

# fsspec protocols the trainer opens itself; others keep webdataset's openers (pipe:, http(s)).
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")

# URL detection, the process-wide storage options and the filesystem of a URL are shared with
# the build (mfhq_contract.storage): one definition of what a URL is and which options apply.
_local = local_path
_fs = filesystem


def join(location: str | Path, name: str) -> str:
    if is_url(location):
        return str(location).rstrip("/") + "/" + name
    return str(_local(location) / name)


def read_bytes(location: str | Path) -> bytes:
    if is_url(location):
        return _fs(str(location)).cat_file(str(location))
    return _local(location).read_bytes()


@contextlib.contextmanager
def local_copy(location: str | Path) -> Iterator[Path]:
    """A local path holding the file: itself, or for a URL a temp download (removed after)."""
    if not is_url(location):
        yield _local(location)
        return
    with tempfile.TemporaryDirectory(prefix="mfhq-download-") as spool:
        local = Path(spool) / str(location).rstrip("/").rsplit("/", 1)[-1]
        _fs(str(location)).get_file(str(location), str(local))
        yield local


def read_head(location: str | Path, nbytes: int) -> bytes:
    """The first `nbytes` of a file (fewer when it is shorter)."""
    if is_url(location):
        with _fs(str(location)).open(str(location), "rb") as f:
            return f.read(nbytes)
    with open(_local(location), "rb") as f:
        return f.read(nbytes)


def exists(location: str | Path) -> bool:
    if is_url(location):
        return _fs(str(location)).exists(str(location))
    return _local(location).exists()


def size(location: str | Path) -> int | None:
    """Bytes of a file, None when it is not there."""
    try:
        if is_url(location):
            return int(_fs(str(location)).size(str(location)))
        return _local(location).stat().st_size
    except (FileNotFoundError, OSError):
        return None


class RunDir:
    """A run's output folder, local or at a URL (see the module doc)."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.remote = is_url(self.location)

    def __str__(self) -> str:
        return self.location

    def path(self, name: str) -> str:
        return join(self.location, name)

    def make(self) -> None:
        if not self.remote:
            _local(self.location).mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        """File names directly in the folder (nothing when it does not exist)."""
        if self.remote:
            fs = _fs(self.location)
            try:
                entries = fs.ls(self.location.rstrip("/"), detail=False, refresh=True)
            except FileNotFoundError:
                return []
            return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        folder = _local(self.location)
        return [p.name for p in folder.iterdir()] if folder.is_dir() else []

    def write(self, name: str, writer: Callable[[BinaryIO], None]) -> None:
        """Write `name` atomically with `writer(binary file)` (see the module doc)."""
        if self.remote:
            # spooled to a local temp file, then one upload (multipart for large files, which
            # the store shows only once completed): the object appears whole or not at all
            with tempfile.TemporaryDirectory(prefix="mfhq-upload-") as spool:
                local = Path(spool) / name
                with open(local, "wb") as f:
                    writer(f)
                _fs(self.location).put_file(str(local), self.path(name))
            return
        folder = _local(self.location)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        tmp = folder / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:  # the rename itself survives a power cut only once the folder is synced
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.write(name, lambda f: f.write(data))

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def read_bytes(self, name: str) -> bytes:
        return read_bytes(self.path(name))

    def exists(self, name: str) -> bool:
        return exists(self.path(name))

    def delete(self, name: str) -> None:
        if self.remote:
            try:
                _fs(self.location).rm_file(self.path(name))
            except FileNotFoundError:
                pass
        else:
            (_local(self.location) / name).unlink(missing_ok=True)


def open_shard(url: str, mode: str = "rb", bufsize: int = 8192, **_):
    """A binary stream of one shard at an object-store URL (webdataset's opener signature)."""
    import fsspec

    if mode != "rb":
        raise ValueError(f"shards are only read, not written ({url})")
    return fsspec.open(url, "rb", **options()).open()


def register_webdataset_schemes() -> None:
    """Let webdataset open object-store URLs through fsspec (no CLI tools, no `pipe:`)."""
    import importlib

    # the module, not `webdataset.gopen`, which the package rebinds to the function
    schemes = importlib.import_module("webdataset.gopen").gopen_schemes
    for name in OBJECT_STORE_SCHEMES:
        schemes[name] = open_shard
