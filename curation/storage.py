"""Reading the build's inputs where they live: a local folder or a store (`s3://`, `gs://`, ...).

Contract:
- URLs, the storage options and a URL's filesystem are `mfhq_contract.storage`'s (re-exported
  here): credentials and endpoint come from the store's standard configuration (for S3 the
  `AWS_*` environment including `AWS_ENDPOINT_URL`), or from `--storage-options`.
- `check_store_root(url)` reads the first page of the prefix's listing and raises one
  `SourceError` that says what is wrong: a bucket that does not exist, credentials the store
  refuses, a store that cannot be reached, or a prefix with no objects under it.
- `list_files(url)` yields every object under the prefix as its key relative to the prefix
  ("a/b.mp4"), in one paginated pass (S3: ListObjectsV2 without a delimiter, 1,000 keys a page,
  each page retried by s3fs), holding one page at a time; folder markers (keys ending in "/")
  are left out. A failure during the listing raises SourceError: a partial listing is never
  taken for the whole dataset.
- `open_binary(location)` / `read_bytes(location, limit)`: a metadata file, local or stored;
  `read_bytes` raises ValueError for a file larger than `limit` (it reads at most limit + 1
  bytes).
- `local_weights(location)`: a weight flag's value as a local file path: a path as it is, a
  URL fetched once per machine (`curation.models_fetch.local_model_file`: verified, atomic,
  cached), so every node of a cluster without shared storage reads the same weights.
- `local_video(location, time_limit_s)`: a context manager that yields a local path holding the
  clip's video (or frame folder). A local path is yielded as it is. A stored video comes from
  the node's video cache (below); a frame folder, a video larger than the cache, or one the
  cache cannot make room for (everything in it is being read) is copied into the task's own
  folder under the node's scratch (`$MFHQ_SCRATCH`, else the temporary folder), deleted when
  the block ends. Either copy is verified against the size the store reports, retried
  (resuming) on a cut connection, and bounded by `time_limit_s` together with every wait; a
  video that is gone raises `DecodeError(video_missing)`, one that cannot be copied whole (or
  whose copy by another process is not done within the time limit)
  `DecodeError(video_unreadable)`, each naming the URL; a decoding error raised inside the
  block names the URL, not the local copy. Scratch folders of processes that died are removed
  by the next copy on the same node.
- The node's video cache (`$MFHQ_VIDEO_CACHE`, else `mfhq-video-cache/` in the scratch folder)
  holds each stored video once for every analysis process of the node, so the many clips cut
  by time range from one raw download (CelebV-HQ, CelebV-Text) fetch it once, not once per
  clip. An entry is keyed by the URL and the object's version (its ETag; size and modification
  time where the store has no ETag; a store that gives neither is not cached), so a replaced
  object is fetched again. It holds at most `$MFHQ_VIDEO_CACHE_BYTES` (bytes, or 512M / 16G;
  0 turns it off; default 16 GiB or half of what the disk could give it, whichever is less;
  a value that is not a size is one SourceError when a store source is checked). Concurrent
  clips of one video: one process copies it under the entry's exclusive file lock, the others
  wait on that lock (within their time limit) and then read the same copy. A clip reading a
  video holds the entry's shared lock, and room is made by removing least recently used
  entries whose lock nobody holds, so a video being decoded is never removed; a copy a dead
  process left half done is resumed by the next process that needs it, or removed when room
  is needed.

Why a copy rather than a stream: decord opens only paths, and the probe that gives every clip
its frame timestamps demuxes the whole container (PyAV reads every packet), so streaming would
read every byte of the video anyway, in small ranged requests; one sequential copy is the
cheaper way to read them, and the cache makes it one copy per video and node instead of one per
clip. `bench/listing_scale.py --videos-only` counts the bytes the store sent: with the cache off
(each clip's own copy, as before) 120x a 10 s clip's share of a 20-minute download per clip;
with it, the video once for all its clips on the node (6 clips of a 64 MB video: 20x the
share, 6.05 s -> 1.03 s for the six; 120 clips of an 8 MB video: 1x, 11.3 s -> 0.45 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from curation.errors import SourceError
from mfhq_contract.storage import (
    add_options_argument,
    filesystem,
    is_url,
    local_path,
    options,
    parse_options,
    scheme,
    set_options,
)

__all__ = ["add_options_argument", "check_store_root", "filesystem", "is_url", "list_files", "local_path",
           "local_video", "local_weights", "open_binary", "options", "parse_byte_count",
           "parse_options", "read_bytes", "scheme", "scratch_dir", "set_options",
           "video_cache_bytes", "video_cache_dir"]

SCRATCH_ENV = "MFHQ_SCRATCH"
VIDEO_CACHE_ENV = "MFHQ_VIDEO_CACHE"
VIDEO_CACHE_BYTES_ENV = "MFHQ_VIDEO_CACHE_BYTES"
DEFAULT_VIDEO_CACHE_BYTES = 16 << 30
_SCRATCH_PREFIX = "mfhq-video-"
S3_SCHEMES = ("s3", "s3a")


def bucket_and_prefix(url: str) -> tuple[str, str]:
    """("bucket", "prefix/") of an S3 URL; the prefix ends in "/" (or is "" for a bucket)."""
    path = url.split("://", 1)[1].strip("/")
    bucket, _, key = path.partition("/")
    return bucket, (key + "/") if key else ""


def _store_problem(url: str, error: BaseException) -> SourceError:
    """One message per kind of failure, naming the URL and what to check."""
    return SourceError(f"source {url}: {store_problem(error)}")


def store_problem(error: BaseException) -> str:
    """What a store's failure to list or read means, and what to check (sources, outputs)."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, FileNotFoundError) or "NoSuchBucket" in text:
        what = "its bucket does not exist (or is not visible with these credentials)"
    elif isinstance(error, PermissionError) or any(
            code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                      "ExpiredToken", "InvalidToken", "403")):
        what = ("the store refused the credentials (check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY / AWS_PROFILE, or the node's role, and that it may list "
                "this prefix)")
    elif isinstance(error, ImportError):
        what = str(error)
    else:
        what = ("the store could not be read (check AWS_ENDPOINT_URL or --storage-options, and "
                "the network)")
    return f"{what}. ({text[:300]})"


def _list_pages(url: str, max_keys: int = 1000) -> Iterator[list[str]]:
    """Pages of keys under the prefix, relative to it (see `list_files`)."""
    fs = filesystem(url)
    if scheme(url) in S3_SCHEMES:
        bucket, prefix = bucket_and_prefix(url)
        if not bucket:
            raise SourceError(f"source {url}: name a bucket (s3://BUCKET/PREFIX)")
        kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        while True:
            # s3fs's call_s3 retries throttling and connection errors page by page
            page = fs.call_s3("list_objects_v2", **kwargs)
            yield [item["Key"][len(prefix):] for item in page.get("Contents", ())
                   if not item["Key"].endswith("/")]
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
    # Any other fsspec protocol: its own recursive listing (one pass where the store has one).
    root = fs._strip_protocol(url).rstrip("/")
    found = fs.find(root, withdirs=False, detail=False)
    yield sorted(path[len(root) + 1:] for path in found
                 if path.startswith(root + "/") and not path.endswith("/"))


def check_store_root(url: str) -> str:
    """The URL without a trailing slash; raises SourceError (see the module doc)."""
    root = url.rstrip("/")
    if os.environ.get(VIDEO_CACHE_BYTES_ENV):   # said by the driver, not by every clip
        parse_byte_count(os.environ[VIDEO_CACHE_BYTES_ENV])
    try:
        first = next(iter(_list_pages(root, max_keys=1)), [])
    except SourceError:
        raise
    except Exception as error:  # noqa: BLE001 - every store failure becomes one message
        raise _store_problem(root, error) from error
    if not first:
        raise SourceError(f"source {root}: no objects under this prefix; pass the prefix that "
                          f"holds the dataset (the README's Sources section shows each layout)")
    return root


def list_files(url: str) -> Iterator[str]:
    """Every object under the prefix, relative to it (see the module doc)."""
    root = url.rstrip("/")
    try:
        for page in _list_pages(root):
            yield from page
    except SourceError:
        raise
    except Exception as error:  # noqa: BLE001 - a broken listing stops the build, said once
        raise _store_problem(root, error) from error


@contextlib.contextmanager
def open_binary(location: str) -> Iterator[BinaryIO]:
    """A seekable binary file of a local path or a stored object."""
    if not is_url(location):
        with open(local_path(location), "rb") as handle:
            yield handle
        return
    with filesystem(location).open(location, "rb") as handle:
        yield handle


def read_bytes(location: str, limit: int) -> bytes:
    """The file's bytes; ValueError when it holds more than `limit` bytes."""
    with open_binary(location) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def local_weights(location: str | None) -> str | None:
    """See the module doc (None stays None: the model's default file)."""
    if not location:
        return location
    from curation.models_fetch import local_model_file

    return str(local_model_file(location))


# --- videos on node-local scratch ---------------------------------------------------------------

def scratch_dir() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir())


def video_cache_dir() -> Path:
    """`$MFHQ_VIDEO_CACHE`, else `mfhq-video-cache/` in the scratch folder."""
    return Path(os.environ.get(VIDEO_CACHE_ENV) or scratch_dir() / "mfhq-video-cache")


def video_cache_bytes(cache: Path | None = None) -> int:
    """The cache's bound in bytes (see the module doc); SourceError for a value that is not one.

    Without the setting: 16 GiB, or half of what the cache's disk could give it (its free
    space plus what the cache holds), whichever is less, so a small scratch disk is never
    filled by the cache alone."""
    text = os.environ.get(VIDEO_CACHE_BYTES_ENV, "").strip()
    if text:
        return parse_byte_count(text)
    cache = cache or video_cache_dir()
    try:
        probe = cache if cache.exists() else cache.parent
        free = shutil.disk_usage(probe).free
    except OSError:
        return 0        # no scratch disk to measure: no cache (each clip copies its video)
    return min(DEFAULT_VIDEO_CACHE_BYTES, (free + _cache_total(cache)) // 2)


def parse_byte_count(text: str) -> int:
    """"20000000", "512M", "16G", "1.5T" (powers of 1024) as bytes; SourceError otherwise."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (value[:-1], value[-1]) if value[-1:] in units and value[-1:] else (value, "")
    try:
        count = int(float(number) * units[unit])
    except (ValueError, OverflowError):
        count = -1
    if count < 0:
        raise SourceError(f"{VIDEO_CACHE_BYTES_ENV}={text!r} is not a byte count: give bytes or "
                          f"a size such as 512M or 16G (0 turns the video cache off)")
    return count


def _remove_orphans(scratch: Path) -> None:
    """Scratch folders of analysis processes on this node that died without cleaning up."""
    try:
        entries = list(scratch.glob(f"{_SCRATCH_PREFIX}*-*"))
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(_SCRATCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def local_video(location: str | None, time_limit_s: float = 600.0,
                retries: int = 3) -> Iterator[str | None]:
    """A local path holding the video at `location` (see the module doc)."""
    if not location or not is_url(location):
        yield location
        return
    from curation.faces.decoding import DecodeError
    from curation.records import Reason

    scratch = scratch_dir()
    scratch.mkdir(parents=True, exist_ok=True)
    _remove_orphans(scratch)
    deadline = time.monotonic() + time_limit_s
    with contextlib.ExitStack() as stack:
        try:
            local = _cached_or_private_copy(location, scratch, deadline, retries, stack)
        except FileNotFoundError as error:
            raise DecodeError(Reason.VIDEO_MISSING,
                              f"no such video: {location} ({error})") from error
        except Exception as error:  # noqa: BLE001 - recorded on the clip, the build goes on
            raise DecodeError(Reason.VIDEO_UNREADABLE,
                              f"could not copy {location} to node-local scratch: "
                              f"{type(error).__name__}: {error}"[:1000]) from error
        try:
            yield str(local)
        except DecodeError as error:   # the clip's record names the video, not the local copy
            error.message = error.message.replace(str(local), location)
            raise


def _cached_or_private_copy(location: str, scratch: Path, deadline: float, retries: int,
                            stack: contextlib.ExitStack) -> Path:
    """The video's local path, valid until `stack` closes: from the node's cache when it can
    hold it, else a copy in a private scratch folder that `stack` deletes."""
    fs = filesystem(location)
    with contextlib.suppress(Exception):   # a listing cached in this process may be stale
        fs.invalidate_cache(location)
    info = fs.info(location)          # FileNotFoundError: the video is gone
    if info.get("type") != "directory":
        version = _object_version(info)
        bound = video_cache_bytes() if version else 0
        size = info.get("size")
        if version and isinstance(size, int) and 0 < size <= bound:
            cached = _VideoCache(video_cache_dir(), bound).open(
                location, version, size, deadline, retries, stack)
            if cached is not None:
                return cached
    folder = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=scratch))
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    return _copy_to(location, info, folder, deadline, retries)


def _object_version(info: dict) -> str | None:
    """What changes when the stored object changes: its ETag (S3; GCS's etag or generation),
    else its size and modification time; None when the store gives neither (not cached)."""
    for name in ("ETag", "etag", "generation", "md5Hash"):
        if info.get(name):
            return f"{name}={str(info[name]).strip(chr(34))}"
    for name in ("LastModified", "mtime", "updated", "last_modified", "created"):
        if info.get(name):
            return f"size={info.get('size')},mtime={info[name]}"
    return None


def _copy_to(location: str, info: dict, folder: Path, deadline: float, retries: int) -> Path:
    """The object (or, for a frame folder, every object under the prefix) copied into folder."""
    name = location.rstrip("/").rsplit("/", 1)[-1]
    target = folder / name
    if info.get("type") == "directory":   # a clip stored as a folder of frames (VFHQ)
        target.mkdir()
        for relative in list_files(location):
            if "/" not in relative:
                _fetch_one(f"{location.rstrip('/')}/{relative}", target / relative,
                           deadline, retries)
        return target
    _fetch_one(location, target, deadline, retries, size=info.get("size"))
    return target


def _fetch_one(url: str, target: Path, deadline: float, retries: int,
               size: int | None = None) -> None:
    # The models' verified download: a cut connection resumes (also from a part a dead process
    # left), the byte count must equal the length the store announces and `size` (a partial
    # copy is refused), every wait is bounded.
    from curation.models_fetch import ModelFetchError, download

    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"time limit reached before {url} was copied")
    try:
        download(url, target, size=size, time_limit_s=left, timeout_s=min(60.0, left),
                 retries=retries, backoff_s=0.5, progress=False)
    except ModelFetchError as error:
        cause = error.__cause__
        if isinstance(cause, FileNotFoundError):
            raise cause from error
        raise OSError(str(cause or error).split(" If this machine is offline")[0]) from error


# --- the node's video cache ---------------------------------------------------------------------

def _cache_total(cache: Path) -> int:
    return sum(entry.size for entry in _entries(cache))


@dataclass
class _Entry:
    key: str
    size: int
    used: float          # last use (the mtime of its `used` file): least recent goes first


def _entries(cache: Path) -> list[_Entry]:
    """The cache's entries (filled, being filled, or left half-filled by a dead process)."""
    found = []
    try:
        folders = [p for p in cache.iterdir() if p.is_dir()]
    except OSError:
        return []
    for folder in folders:
        try:
            size = int((folder / "reserved").read_text())
        except (OSError, ValueError):  # a crash before the reservation: what is on disk
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        try:
            used = (folder / "used").stat().st_mtime
        except OSError:
            used = 0.0
        found.append(_Entry(folder.name, size, used))
    return found


class _CacheTimeout(TimeoutError):
    pass


def _lock(path: Path, mode: int, deadline: float, what: str) -> int | None:
    """An open descriptor of `path` holding flock `mode` (waits until `deadline`, polling),
    or None when the file was replaced meanwhile (evicted: the caller starts again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    pause = 0.01
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _CacheTimeout(what) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.5)
        # The evictor unlinks a lock file it holds: a lock on an unlinked file guards nothing.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _try_lock(path: Path) -> int | None:
    """`path`'s exclusive lock if nobody holds it now (else None); never waits."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


class _VideoCache:
    """The node's video cache (the module doc says what it promises).

    Layout: `<key>/` holds `reserved` (the bytes it may take), the video under its own name,
    `complete` (written after the copy was verified) and `used` (touched on every use);
    `<key>.lock` is the entry's lock: exclusive while it is filled or evicted, shared while a
    clip reads it; `.cache.lock` serialises reservations and evictions."""

    def __init__(self, root: Path, bound: int):
        self.root = root
        self.bound = bound

    @staticmethod
    def key(url: str, version: str) -> str:
        return hashlib.sha256(f"{url}\0{version}".encode()).hexdigest()[:40]

    def open(self, url: str, version: str, size: int, deadline: float, retries: int,
             stack: contextlib.ExitStack) -> Path | None:
        """The cached video's path, its shared lock held until `stack` closes; None when the
        cache cannot make room for it (everything else in use)."""
        key = self.key(url, version)
        folder, lock = self.root / key, self.root / f"{key}.lock"
        name = url.rstrip("/").rsplit("/", 1)[-1]
        waiting = f"waited past the time limit for another process copying {url}"
        while True:
            fd = _lock(lock, fcntl.LOCK_SH, deadline, waiting)
            if fd is None:
                continue
            if (folder / "complete").exists():
                stack.callback(os.close, fd)      # held while the clip reads the video
                with contextlib.suppress(OSError):
                    (folder / "used").touch()
                return folder / name
            os.close(fd)
            # Not there yet: fill it under the exclusive lock (a process that got it first
            # fills it while this one waits, and then this one reads its copy).
            fd = _lock(lock, fcntl.LOCK_EX, deadline, waiting)
            if fd is None:
                continue
            try:
                if not (folder / "complete").exists():
                    if not self._reserve(key, size, deadline):
                        return None
                    self._fill(url, folder, name, size, deadline, retries)
            finally:
                os.close(fd)
            # and read it under a shared lock, as every other process does (next turn)

    def _reserve(self, key: str, size: int, deadline: float) -> bool:
        """Make room for `size` bytes (evicting least recently used entries nobody holds) and
        record the reservation; False when the rest of the cache is in use."""
        guard = _lock(self.root / ".cache.lock", fcntl.LOCK_EX, deadline,
                      "waited past the time limit for the video cache's lock")
        while guard is None:
            guard = _lock(self.root / ".cache.lock", fcntl.LOCK_EX, deadline,
                          "waited past the time limit for the video cache's lock")
        try:
            others = [e for e in _entries(self.root) if e.key != key]
            total = sum(e.size for e in others)
            for entry in sorted(others, key=lambda e: e.used):
                if total + size <= self.bound:
                    break
                if self._evict(entry.key):
                    total -= entry.size
            self._remove_stray_locks()
            if total + size > self.bound:
                return False
            folder = self.root / key
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "reserved").write_text(str(size))
            (folder / "used").touch()
            return True
        finally:
            os.close(guard)

    def _evict(self, key: str) -> bool:
        """Remove an entry nobody reads or fills (its lock is free); False when it is held."""
        lock = self.root / f"{key}.lock"
        fd = _try_lock(lock)
        if fd is None and lock.exists():
            return False         # read by a clip or being filled: never removed under it
        try:
            shutil.rmtree(self.root / key, ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            if fd is not None:
                os.close(fd)
        return True

    def _remove_stray_locks(self) -> None:
        """Lock files of entries that were never filled (their folder is gone)."""
        for lock in self.root.glob("*.lock"):
            if lock.name != ".cache.lock" and not (self.root / lock.stem).exists():
                fd = _try_lock(lock)
                if fd is not None:
                    lock.unlink(missing_ok=True)
                    os.close(fd)

    @staticmethod
    def _fill(url: str, folder: Path, name: str, size: int, deadline: float,
              retries: int) -> None:
        target = folder / name
        if not target.is_file():   # a part a dead process left is resumed by the download
            _fetch_one(url, target, deadline, retries, size=size)
        held = target.stat().st_size
        if held != size:   # verified against the stored size, again
            target.unlink()
            raise OSError(f"the copy of {url} holds {held} bytes, the store says {size}")
        target.chmod(0o444)       # shared by every clip of the node: nobody writes to it
        (folder / "complete").touch()
