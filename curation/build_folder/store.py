"""A build whose `--output` is a store (`s3://`, `gs://`, any fsspec URL): a local mirror.

Contract. Every module keeps working on local paths; for an output URL those paths lie in the
output's *mirror*, a folder under this node's scratch (`mirror_root(url)`: `$MFHQ_SCRATCH`, else
the temporary folder, `/mfhq-output/<hash of the URL>`), computed in each process, so a
cluster's nodes need share nothing but the store. The mirror maps one to one onto the store:
`<mirror>/manifests/clips/part-train-000000.parquet` is `<url>/manifests/clips/...`.

- `publish(path)`: after a local file of the mirror was written whole (the atomic writers and the
  tar commit call it), upload it to its object. A PUT is atomic (a multipart upload is invisible
  until complete), so readers of the store see the old object or the new one, never a part.
  Shards and work files are uploaded and their local copy dropped (they are large and often
  read on another node); manifests stay in the mirror. Logs are never uploaded.
- `exists(path)`, `size(path)`, `open_binary(path)`, `remove(path)`, `list_tars(shards_dir)`:
  a file of the mirror as the store has it (a local path as the disk has it).
- `sync_down(manifests_dir)`: make the mirror's manifests/ what the store holds (download what
  differs by MD5/ETag or size, delete what the store no longer has). The build runs it before it
  reads the recorded plan and after its workers wrote their parts; `verify`, `report` and
  `takedown` before they read.

The commit. On a local disk a shard is committed by renaming its tar into place after its parts
are written; on a store the tar's PUT, issued after the parts' PUTs, is that commit: a tar
object implies its parts, and resume, `--dry-run`, incremental rebuilds, `--retry-failed`,
takedown and `verify` decide from the listed tars and the parts, exactly as on a disk. A killed
build leaves at most parts without a tar (an unfinished shard, rebuilt with the same bytes and
keys) and work objects (deleted when their shard is committed). Incomplete multipart uploads
are not objects; a bucket lifecycle rule (`AbortIncompleteMultipartUpload`) reclaims them.

An error of the store that refuses a write (no permission, quota) is raised as
`OSError(EROFS)` naming the object, so the build stops as for a read-only disk (exit 3).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import shutil
from pathlib import Path

from curation.storage import S3_SCHEMES, bucket_and_prefix, scheme, scratch_dir, store_problem
from mfhq_contract import storage

MIRROR_DIR = "mfhq-output"
PUBLISHED = ("manifests", "shards", "work")     # the mirror's folders that have objects
DROPPED_AFTER_UPLOAD = ("shards", "work")        # large, or read on another node

# mirror root -> the output URL, in this process (set by `mirror_root`).
_MIRRORS: dict[Path, str] = {}


def mirror_root(url: str) -> Path:
    """This node's mirror folder of an output URL (registered for `publish` in this process)."""
    url = url.rstrip("/")
    root = scratch_dir() / MIRROR_DIR / hashlib.sha256(url.encode()).hexdigest()[:16]
    _MIRRORS[root] = url
    return root


def _locate(path: str | os.PathLike) -> tuple[str, Path] | None:
    """(output URL, path relative to its mirror) of a path in a registered mirror's published
    folders, else None."""
    path = Path(path)
    for root, url in _MIRRORS.items():
        rel = _relative(path, root)
        if rel is None:
            continue
        published = rel.parts and rel.parts[0] in PUBLISHED and not any(
            part.startswith(".") for part in rel.parts)    # hidden: this node's own files
        return (url, rel) if published else None
    return None


def store_url(path: str | os.PathLike) -> str | None:
    """The object URL of a path in a registered mirror's published folders, else None."""
    located = _locate(path)
    return None if located is None else f"{located[0]}/{located[1].as_posix()}"


def _relative(path: Path, root: Path) -> Path | None:
    """`path` relative to a mirror root; also a path another node handed over (a work file
    named in a clip's outcome), whose mirror lies under that node's own scratch folder: the
    same `mfhq-output/<hash>` there."""
    if path.is_relative_to(root):
        return path.relative_to(root)
    parts = path.parts
    for i in range(len(parts) - 1):
        if parts[i] == MIRROR_DIR and parts[i + 1] == root.name:
            return Path(*parts[i + 2:]) if len(parts) > i + 2 else Path()
    return None


def refused(url: str, err: BaseException) -> BaseException:
    """A store's refusal to write as the OSError a read-only output raises (exit 3)."""
    text = f"{type(err).__name__}: {err}"
    if isinstance(err, PermissionError) or any(
            code in text for code in ("AccessDenied", "QuotaExceeded", "Forbidden")):
        return OSError(errno.EROFS, f"the store refused the write ({text})", url)
    return err


def publish(path: str | os.PathLike) -> None:
    """Upload a mirror file written whole to its object (nothing for a local output)."""
    located = _locate(path)
    if located is None:
        return
    url = f"{located[0]}/{located[1].as_posix()}"
    try:
        storage.filesystem(url).put_file(str(path), url)
    except Exception as err:
        raise refused(url, err) from err
    if located[1].parts[0] in DROPPED_AFTER_UPLOAD:
        Path(path).unlink(missing_ok=True)


def _fs(url: str):
    """The store's filesystem, its listings cache dropped: other processes and nodes write
    objects this process must see."""
    fs = storage.filesystem(url)
    fs.invalidate_cache()
    return fs


def exists(path: str | os.PathLike) -> bool:
    url = store_url(path)
    if url is None:
        return Path(path).exists()
    return Path(path).exists() or _fs(url).exists(url)


def size(path: str | os.PathLike) -> int | None:
    """The byte size of a file (its object on a store), None when there is none."""
    url = store_url(path)
    try:
        if url is None or Path(path).exists():
            return Path(path).stat().st_size
        return int(_fs(url).info(url)["size"])
    except (FileNotFoundError, OSError, KeyError):
        return None


def open_binary(path: str | os.PathLike, block_size: int | None = None):
    """A readable, seekable binary file of a local file or of its object, read in ranges of
    `block_size` bytes (default: the store's, 50 MB on S3; a reader of a file's head only asks
    for less, or it fetches a whole work file to read its first member)."""
    url = store_url(path)
    if url is None or Path(path).exists():
        return open(path, "rb")
    return storage.filesystem(url).open(url, "rb", block_size=block_size)


def remove(path: str | os.PathLike, *, recursive: bool = False) -> None:
    """Delete a file (a folder with `recursive`) from the mirror and from the store."""
    path = Path(path)
    if recursive:
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    url = store_url(path)
    if url is None:
        return
    fs = storage.filesystem(url)
    try:
        fs.rm(url, recursive=recursive)
    except FileNotFoundError:
        pass
    except Exception as err:
        raise refused(url, err) from err


def list_tars(shards_dir: Path) -> list[str]:
    """The shard tars under a shards folder ('train/mfhq-train-000000.tar'), sorted: the
    files on a disk, the objects on a store (one listing)."""
    url = store_url(shards_dir)
    if url is None:
        return sorted(str(p.relative_to(shards_dir)) for p in shards_dir.glob("*/mfhq-*.tar"))
    fs = _fs(url)
    try:
        found = fs.find(url)
    except FileNotFoundError:
        return []
    prefix = url.split("://", 1)[1].rstrip("/") + "/"
    names = [key.split("://", 1)[-1][len(prefix):] for key in found]
    return sorted(n for n in names if n.count("/") == 1 and n.endswith(".tar")
                  and n.split("/")[1].startswith("mfhq-"))


def _local_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _same(local: Path, info: dict) -> bool:
    """Whether a mirror file holds its object's bytes: by MD5 where the store gives one
    (S3's ETag of a single-part upload, GCS's md5Hash), else by size."""
    if not local.exists() or local.stat().st_size != int(info.get("size", -1)):
        return False
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        return _local_md5(local) == etag
    md5 = info.get("md5Hash")
    if md5:
        return base64.b64decode(md5).hex() == _local_md5(local)
    return True


def check_output(url: str) -> None:
    """Raise BuildFolderError, naming the output and what to check, when its store cannot be
    listed: a bucket that does not exist, credentials the store refuses, an endpoint that
    cannot be reached. (Whether it takes writes is learnt at the first write: exit 3.)"""
    from curation.errors import BuildFolderError

    fs = storage.filesystem(url)
    try:
        if scheme(url) in S3_SCHEMES:
            bucket, prefix = bucket_and_prefix(url)
            fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        elif not fs.exists(url.split("://", 1)[1].split("/", 1)[0]):
            raise FileNotFoundError(f"no bucket {url.split('://', 1)[1].split('/', 1)[0]}")
    except Exception as err:  # noqa: BLE001 - every store failure becomes one message
        raise BuildFolderError(f"output {url}: {store_problem(err)}") from err


def sync_down(manifests_dir: Path) -> int:
    """Make a mirror's manifests folder hold what the store holds under it; returns the
    files downloaded. Nothing for a local output. Raises BuildFolderError when the store
    cannot be listed (`check_output`)."""
    url = store_url(manifests_dir)
    if url is None:
        return 0
    check_output(url.rsplit("/", 1)[0])
    fs = _fs(url)
    try:
        listing = fs.find(url, detail=True)
    except FileNotFoundError:
        listing = {}
    prefix = url.split("://", 1)[1].rstrip("/") + "/"
    wanted: set[Path] = set()
    fetched = 0
    for key, info in listing.items():
        rel = key.split("://", 1)[-1][len(prefix):]
        if not rel or rel.endswith("/") or info.get("type") == "directory":
            continue
        local = manifests_dir / rel
        wanted.add(local)
        if _same(local, info):
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.download")
        try:
            fs.get_file(f"{url}/{rel}", str(tmp))
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        fetched += 1
    if manifests_dir.is_dir():
        for local in manifests_dir.rglob("*"):
            # hidden files are this node's own (the lock, temporaries): never the store's
            if local.is_file() and not local.name.startswith(".") and local not in wanted:
                local.unlink()
    return fetched
