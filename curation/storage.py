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
  clip's video (or frame folder). A local path is yielded as it is. A URL is copied into its
  own folder under the node's scratch (`$MFHQ_SCRATCH`, else the temporary folder), deleted when
  the block ends: one video per running analysis task. The copy is verified against the size
  the store reports, retried (resuming) on a cut connection, and bounded by `time_limit_s`; a
  video that is gone raises `DecodeError(video_missing)`, one that cannot be copied whole
  `DecodeError(video_unreadable)`; a decoding error raised inside the block names the URL, not
  the scratch copy. Scratch folders of processes that died are removed by the
  next copy on the same node.

Why a copy rather than a stream: decord opens only paths, and the probe that gives every clip
its frame timestamps demuxes the whole container (PyAV reads every packet), so streaming would
read every byte of the video anyway, in small ranged requests; one sequential copy is the
cheaper way to read them. The cost per clip is measured by `bench/listing_scale.py --videos`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from curation.errors import SourceError
from mfhq_contract.storage import (
    filesystem,
    is_url,
    local_path,
    options,
    parse_options,
    scheme,
    set_options,
)

__all__ = ["check_store_root", "filesystem", "is_url", "list_files", "local_path",
           "local_video", "local_weights", "open_binary", "options", "parse_options",
           "read_bytes", "scheme", "scratch_dir", "set_options"]

SCRATCH_ENV = "MFHQ_SCRATCH"
_SCRATCH_PREFIX = "mfhq-video-"
_S3_SCHEMES = ("s3", "s3a")


def _bucket_and_prefix(url: str) -> tuple[str, str]:
    """("bucket", "prefix/") of an S3 URL; the prefix ends in "/" (or is "" for a bucket)."""
    path = url.split("://", 1)[1].strip("/")
    bucket, _, key = path.partition("/")
    return bucket, (key + "/") if key else ""


def _store_problem(url: str, error: BaseException) -> SourceError:
    """One message per kind of failure, naming the URL and what to check."""
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
    return SourceError(f"source {url}: {what}. ({text[:300]})")


def _list_pages(url: str, max_keys: int = 1000) -> Iterator[list[str]]:
    """Pages of keys under the prefix, relative to it (see `list_files`)."""
    fs = filesystem(url)
    if scheme(url) in _S3_SCHEMES:
        bucket, prefix = _bucket_and_prefix(url)
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
    folder = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=scratch))
    try:
        try:
            local = _copy_to(location, folder, time_limit_s, retries)
        except FileNotFoundError as error:
            raise DecodeError(Reason.VIDEO_MISSING,
                              f"no such video: {location} ({error})") from error
        except Exception as error:  # noqa: BLE001 - recorded on the clip, the build goes on
            raise DecodeError(Reason.VIDEO_UNREADABLE,
                              f"could not copy {location} to node-local scratch: "
                              f"{type(error).__name__}: {error}"[:1000]) from error
        try:
            yield str(local)
        except DecodeError as error:   # the clip's record names the video, not the scratch copy
            error.message = error.message.replace(str(local), location)
            raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _copy_to(location: str, folder: Path, time_limit_s: float, retries: int) -> Path:
    """The object (or, for a frame folder, every object under the prefix) copied into folder."""
    from curation.models_fetch import ModelFetchError, download

    fs = filesystem(location)
    info = fs.info(location)          # FileNotFoundError: the video is gone
    name = location.rstrip("/").rsplit("/", 1)[-1]
    if info.get("type") == "directory":   # a clip stored as a folder of frames (VFHQ)
        target = folder / name
        target.mkdir()
        for relative in list_files(location):
            if "/" not in relative:
                _fetch_one(f"{location.rstrip('/')}/{relative}", target / relative,
                           time_limit_s, retries, download, ModelFetchError)
        return target
    target = folder / name
    _fetch_one(location, target, time_limit_s, retries, download, ModelFetchError)
    return target


def _fetch_one(url: str, target: Path, time_limit_s: float, retries: int, download,
               fetch_error) -> None:
    # The models' verified download: a cut connection resumes, the byte count must equal the
    # length the store announced (a partial copy is refused), every wait is bounded.
    try:
        download(url, target, time_limit_s=time_limit_s, timeout_s=min(60.0, time_limit_s),
                 retries=retries, backoff_s=0.5, progress=False)
    except fetch_error as error:
        cause = error.__cause__
        if isinstance(cause, FileNotFoundError):
            raise cause from error
        raise OSError(str(cause or error).split(" If this machine is offline")[0]) from error
