"""Fetching model files: the published addresses, one verified download, the caches they go to.

Contract:
- `PUBLISHED` names the two weight files the build needs and cannot make itself, each at the
  address its own library publishes and downloads from: insightface's `buffalo_l.zip` (SCRFD
  `det_10g.onnx` and ArcFace `w600k_r50.onnx`; `insightface.utils.storage.model_zoo_download_url`)
  and pyiqa's TOPIQ-face checkpoint (`pyiqa.archs.topiq_arch.default_model_urls`).
- `fetch_published(model, ...)` puts a missing file where that library reads it (insightface:
  `<root>/models/buffalo_l/`, pyiqa: `$TORCH_HOME/hub/pyiqa/`) and never leaves a partial or
  unverified file there: the bytes go to a hidden temporary file beside the destination, their
  size is checked against the server's length and their checksum against the expected one, and
  only then is the file renamed into place. `mirror` replaces the published address by
  `<mirror>/<file name>` (an http(s) address, a bucket prefix such as `s3://bucket/models`, or a
  local folder).
- `download(source, destination, ...)` is that verified download for any address; a
  destination already present is never touched.
- `local_model_file(location)` turns a weight flag's value into a local file: a path is returned
  as it is, a URL is downloaded once into `model_cache_dir()` (verified, atomic) and that copy
  returned, so `--quality-weights s3://bucket/topiq.pth` works on a node without shared storage.
- Every failure is one `ModelFetchError` that names the address, the destination and what to do
  (offline: where to put the file by hand).

Transient failures (connection refused or reset, timeouts, HTTP 429 and 5xx) are retried with a
growing pause and the download resumes where it stopped when the server honours `Range`; every
network wait is bounded by `timeout_s` per read and `time_limit_s` in all.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from curation.errors import SetupError
from mfhq_contract.storage import filesystem

# pyiqa names a checkpoint by its sha256 prefix (torch.hub's rule): the name is its checksum.
TOPIQ_FACE_FILE = "topiq_nr_cgfiqa_res50-0a8b8e4f.pth"

# The addresses the libraries publish (insightface 2.1, pyiqa 0.1.16): a test checks that the
# installed packages still compute the same ones.
INSIGHTFACE_MODEL_ZOO = "https://github.com/deepinsight/insightface/releases/download/model-zoo"
PYIQA_WEIGHTS = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main"
BUFFALO_L = "buffalo_l"
BUFFALO_L_FILES = ("det_10g.onnx", "w600k_r50.onnx")   # the two files our code loads
TOPIQ_FACE = "topiq_nr-face"

CHUNK = 1 << 20
PROGRESS_MIN_BYTES = 8 << 20        # a bar for files of this size and more, on a terminal
MIRROR_ENV = "MFHQ_MODELS_MIRROR"


class ModelFetchError(SetupError):
    """A model file could not be fetched or failed its checks; the message says what to do."""


class Integrity(StrEnum):
    """How a downloaded file proves it is the published one."""

    SHA256 = "sha256"                 # the full digest is known
    SHA256_PREFIX = "sha256 prefix"   # torch.hub's convention: name-<first hex of sha256>.ext
    ZIP_CRC = "zip CRC-32"            # no digest is published: every member's CRC is checked


@dataclass(frozen=True)
class PublishedModel:
    """A weight file (or pack) as its library publishes it."""

    name: str                 # what `mfhq models fetch NAME` calls it
    file_name: str            # the published file's name (also its name on a mirror)
    url: str                  # the library's own download address
    integrity: Integrity
    digest: str = ""          # sha256 (hex) or its published prefix; "" for ZIP_CRC
    size: int | None = None   # bytes, when published
    members: tuple[str, ...] = field(default=())   # zip members that must be in the pack
    library: str = ""         # who publishes it, for messages


PUBLISHED: dict[str, PublishedModel] = {
    BUFFALO_L: PublishedModel(
        name=BUFFALO_L, file_name=f"{BUFFALO_L}.zip",
        url=f"{INSIGHTFACE_MODEL_ZOO}/{BUFFALO_L}.zip",
        # insightface publishes no digest for its packs (its own download checks nothing):
        # the zip's per-member CRC-32s and the presence of the two files we load are checked.
        integrity=Integrity.ZIP_CRC, members=BUFFALO_L_FILES,
        library="insightface (model-zoo release)"),
    TOPIQ_FACE: PublishedModel(
        name=TOPIQ_FACE, file_name=TOPIQ_FACE_FILE, url=f"{PYIQA_WEIGHTS}/{TOPIQ_FACE_FILE}",
        # torch.hub's naming rule: the hex after the last '-' is the start of the file's sha256.
        integrity=Integrity.SHA256_PREFIX, digest=TOPIQ_FACE_FILE.rsplit("-", 1)[1].split(".")[0],
        library="pyiqa (Hugging Face chaofengc/IQA-PyTorch-Weights)"),
}


def insightface_default_root() -> Path:
    """insightface's own default model root (`FaceAnalysis(root='~/.insightface')`)."""
    return Path("~/.insightface").expanduser()


def pyiqa_cache_dir() -> Path:
    """pyiqa's download folder: `torch.hub.get_dir()/pyiqa` (`$TORCH_HOME/hub/pyiqa`), where
    the quality model looks for its weights and `mfhq models fetch` puts them."""
    import torch

    return Path(torch.hub.get_dir()) / "pyiqa"


def model_cache_dir() -> Path:
    """Where weight flags given as URLs are cached: `$MFHQ_MODEL_CACHE`, else
    `$XDG_CACHE_HOME/mfhq/models` (default `~/.cache/mfhq/models`)."""
    if os.environ.get("MFHQ_MODEL_CACHE"):
        return Path(os.environ["MFHQ_MODEL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    return Path(base) / "mfhq" / "models"


def destinations(model: PublishedModel, insightface_root: str | Path | None = None,
                 topiq_dir: str | Path | None = None) -> list[Path]:
    """The files `model` puts in place, where its library reads them."""
    if model.name == BUFFALO_L:
        root = Path(insightface_root).expanduser() if insightface_root else \
            insightface_default_root()
        return [root / "models" / BUFFALO_L / member for member in model.members]
    folder = Path(topiq_dir).expanduser() if topiq_dir else pyiqa_cache_dir()
    return [folder / model.file_name]


def source_address(model: PublishedModel, mirror: str | None = None) -> str:
    """The published address, or `<mirror>/<file name>` (mirror default: $MFHQ_MODELS_MIRROR)."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV, "")
    if not mirror:
        return model.url
    return mirror.rstrip("/") + "/" + model.file_name


def is_url(text: str | os.PathLike) -> bool:
    """A `scheme://` address (http, https, s3, gs, file, ...), not a local path."""
    return "://" in str(text) and not Path(str(text)).exists()


# ---------------------------------------------------------------------------------------------
# The download.


@dataclass
class Fetched:
    """One file put in place (or found already there)."""

    path: Path
    source: str
    sha256: str
    bytes: int
    downloaded: bool


TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Transient(Exception):
    """A failure worth another try (the network, not the file)."""


class _OutOfTime(Exception):
    """The whole download's time limit passed: no more tries."""


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code in TRANSIENT_HTTP
    if isinstance(error, urllib.error.URLError):
        return True   # refused, unreachable, DNS: may be a blip; the last try says "offline"
    return isinstance(error, (TimeoutError, socket.timeout, ConnectionError,
                              http.client.IncompleteRead, http.client.RemoteDisconnected,
                              _Transient))


def _progress(total: int | None, label: str, enabled: bool | None):
    """A tqdm bar with ETA on stderr for large files on a terminal, else nothing."""
    show = enabled if enabled is not None else (
        sys.stderr.isatty() and (total or 0) >= PROGRESS_MIN_BYTES)
    if not show:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                file=sys.stderr, leave=True)


def _open_http(url: str, offset: int, timeout_s: float) -> tuple[BinaryIO, int | None, bool]:
    """(stream, total size, resumed) of `url` from byte `offset`."""
    request = urllib.request.Request(url, headers={"User-Agent": "mfhq-models"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    response = urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310 - http(s) only
    resumed = offset > 0 and response.status == 206
    total: int | None = None
    content_range = response.headers.get("Content-Range", "")
    if resumed and "/" in content_range and not content_range.endswith("/*"):
        total = int(content_range.rsplit("/", 1)[1])
    elif response.headers.get("Content-Length"):
        total = int(response.headers["Content-Length"]) + (offset if resumed else 0)
    return response, total, resumed


def _open_fsspec(url: str, offset: int) -> tuple[BinaryIO, int | None, bool]:
    # the process's --storage-options apply here too (mfhq_contract.storage)
    fs = filesystem(url)
    total = fs.info(url).get("size")
    stream = fs.open(url, "rb")
    if offset:
        stream.seek(offset)
    return stream, total, offset > 0


def _open(source: str, offset: int, timeout_s: float) -> tuple[BinaryIO, int | None, bool]:
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https"):
        return _open_http(source, offset, timeout_s)
    if scheme in ("", "file"):
        path = Path(urllib.parse.urlparse(source).path if scheme else source).expanduser()
        stream = path.open("rb")
        stream.seek(offset)
        return stream, path.stat().st_size, offset > 0
    return _open_fsspec(source, offset)


def _copy_into(source: str, part: Path, timeout_s: float, deadline: float, label: str,
               progress: bool | None) -> int | None:
    """Append `source`'s bytes to `part` (resuming when it already holds some); the total
    size the source announced, or None."""
    offset = part.stat().st_size if part.exists() else 0
    stream, total, resumed = _open(source, offset, timeout_s)
    with contextlib.closing(stream), part.open("ab" if resumed else "wb") as out, \
            _progress(total, label, progress) as bar:
        done = offset if resumed else 0
        if bar is not None:
            bar.update(done)
        while True:
            if time.monotonic() > deadline:
                raise _OutOfTime(f"time limit reached after {done} bytes")
            # read1: whatever has arrived (up to CHUNK), so the time limit is checked between
            # network reads rather than after a whole block that may trickle in for minutes.
            chunk = stream.read1(CHUNK) if hasattr(stream, "read1") else stream.read(CHUNK)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if total is not None and done < total:
        # The server closed early: keep the part and resume from it on the next try.
        raise _Transient(f"connection closed after {done} of {total} bytes")
    return total


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(source: str, destination: str | Path, *, sha256: str = "",
             sha256_prefix: str = "", size: int | None = None,
             check: Callable[[Path], None] | None = None, timeout_s: float = 60.0,
             time_limit_s: float = 3600.0, retries: int = 4, backoff_s: float = 2.0,
             progress: bool | None = None) -> Fetched:
    """Download `source` to `destination`, verified, atomically.

    The bytes go to a hidden `.<name>.part` beside `destination` (resumed on a retry when the
    server allows it). Before the rename: the byte count equals the source's announced length
    and `size` when given, the sha256 equals `sha256` or starts with `sha256_prefix`, and
    `check(part)` (e.g. a zip test) returns without raising. A file that fails is deleted and
    `ModelFetchError` names the address, the destination and the expected and actual values.
    `retries` more tries follow a transient failure, `backoff_s` x 1, 2, 4 ... apart; every
    read waits at most `timeout_s` and everything at most `time_limit_s`.
    """
    destination = Path(destination).expanduser()
    if destination.is_file():
        return Fetched(destination, source, file_sha256(destination),
                       destination.stat().st_size, downloaded=False)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.parent / f".{destination.name}.part"
    deadline = time.monotonic() + time_limit_s
    announced: int | None = None
    for attempt in range(retries + 1):
        try:
            announced = _copy_into(source, part, min(timeout_s, time_limit_s), deadline,
                                   destination.name, progress)
            break
        except Exception as error:   # noqa: BLE001 - sorted into transient / final below
            if _is_transient(error) and attempt < retries and time.monotonic() < deadline:
                time.sleep(min(backoff_s * 2 ** attempt, max(0.0, deadline - time.monotonic())))
                continue
            part.unlink(missing_ok=True)
            raise ModelFetchError(_unreachable_message(source, destination, error,
                                                       attempt + 1)) from error
    try:
        actual_size = part.stat().st_size
        for expected, what in ((announced, "the length the server announced"),
                               (size, "the published size")):
            if expected is not None and actual_size != expected:
                raise ModelFetchError(
                    f"{source}: got {actual_size} bytes, {what} is {expected}; nothing was put "
                    f"at {destination}. Run the command again; if it repeats, the file at that "
                    f"address is not the expected one.")
        digest = file_sha256(part)
        if (sha256 and digest != sha256.lower()) or \
                (sha256_prefix and not digest.startswith(sha256_prefix.lower())):
            wanted = sha256 or f"{sha256_prefix}... (the hash in the file name)"
            raise ModelFetchError(
                f"checksum mismatch for {source}: sha256 {digest}, expected {wanted}; the file "
                f"was refused and nothing was put at {destination}. The address serves a "
                f"different file: point --mirror at a copy of the published file, or put the "
                f"right file there by hand.")
        if check is not None:
            check(part)
        os.replace(part, destination)
    finally:
        part.unlink(missing_ok=True)
    return Fetched(destination, source, digest, actual_size, downloaded=True)


def _unreachable_message(source: str, destination: Path, error: BaseException,
                         tries: int) -> str:
    reason = getattr(error, "reason", None) or error
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    return (f"could not download {source} to {destination} ({reason}; {tries} "
            f"{'try' if tries == 1 else 'tries'}). If this machine is offline, download that "
            f"address elsewhere and copy the file to {destination}, or point --mirror (or "
            f"${MIRROR_ENV}) at a folder, bucket or server that holds it.")


# ---------------------------------------------------------------------------------------------
# The published models, into their libraries' caches.


def _check_zip(members: tuple[str, ...]) -> Callable[[Path], None]:
    def check(path: Path) -> None:
        try:
            with zipfile.ZipFile(path) as pack:
                broken = pack.testzip()
                names = {Path(info.filename).name for info in pack.infolist()}
        except zipfile.BadZipFile as error:
            raise ModelFetchError(f"the downloaded {path.name[1:-5]} is not a zip file "
                                  f"({error}); it was refused.") from error
        if broken is not None:
            raise ModelFetchError(f"the downloaded zip's member {broken} fails its CRC-32 "
                                  f"check; it was refused.")
        missing = [m for m in members if m not in names]
        if missing:
            raise ModelFetchError(f"the downloaded zip lacks {', '.join(missing)} "
                                  f"(it holds {', '.join(sorted(names))}); it was refused.")
    return check


def _unpack(pack: Path, members: tuple[str, ...], folder: Path) -> None:
    """Each missing `members` file of the zip into `folder`, each renamed into place whole;
    the pack's other files (landmarks, gender-age) land beside them where absent."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(pack) as zf:
        for info in zf.infolist():
            name = Path(info.filename).name
            if info.is_dir() or not name or (folder / name).exists():
                continue
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            try:
                with os.fdopen(handle, "wb") as out, zf.open(info) as src:
                    shutil.copyfileobj(src, out, CHUNK)
                os.replace(temporary, folder / name)
            finally:
                Path(temporary).unlink(missing_ok=True)
    missing = [m for m in members if not (folder / m).is_file()]
    if missing:
        raise ModelFetchError(f"{pack} did not yield {', '.join(missing)} in {folder}")


def fetch_published(model: PublishedModel | str, *, insightface_root: str | Path | None = None,
                    topiq_dir: str | Path | None = None, mirror: str | None = None,
                    sha256: str = "", **download_options) -> list[Fetched]:
    """Put `model`'s files where its library reads them, downloading only when one is missing.

    buffalo_l: the zip is downloaded to `<root>/models/.buffalo_l.zip.part`, checked (CRC-32 of
    every member, `det_10g.onnx` and `w600k_r50.onnx` present; `sha256` when given), and its
    missing files are unpacked into `<root>/models/buffalo_l/`; the zip is then deleted.
    TOPIQ-face: the checkpoint goes to pyiqa's cache (or `topiq_dir`), its sha256 starting
    with the hex in its published name unless `sha256` pins another digest.
    """
    model = PUBLISHED[model] if isinstance(model, str) else model
    targets = destinations(model, insightface_root, topiq_dir)
    source = source_address(model, mirror)
    if all(t.is_file() for t in targets):
        return [Fetched(t, source, file_sha256(t), t.stat().st_size, downloaded=False)
                for t in targets]
    if model.integrity is Integrity.ZIP_CRC:
        folder = targets[0].parent
        pack = folder.parent / model.file_name
        try:
            fetched = download(source, pack, sha256=sha256, size=model.size,
                               check=_check_zip(model.members), **download_options)
        except ModelFetchError as error:
            raise ModelFetchError(f"{error} Then run `mfhq models fetch {model.name}` again: it "
                                  f"checks the zip and unpacks it into {folder}.") from error
        if not fetched.downloaded:
            _check_zip(model.members)(pack)   # a pack copied there by hand gets the same check
        try:
            _unpack(pack, model.members, folder)
        finally:
            if fetched.downloaded:
                pack.unlink(missing_ok=True)
        return [Fetched(t, source, file_sha256(t), t.stat().st_size, downloaded=True)
                for t in targets]
    pinned = sha256 or (model.digest if model.integrity is Integrity.SHA256 else "")
    prefix = "" if sha256 else (model.digest if model.integrity is Integrity.SHA256_PREFIX
                                else "")
    return [download(source, targets[0], sha256=pinned, sha256_prefix=prefix, size=model.size,
                     **download_options)]


def local_model_file(location: str | Path, **download_options) -> Path:
    """A weight flag's value as a local file: a path as it is, a URL (http(s)://, s3://, gs://,
    file://) downloaded once into `model_cache_dir()/<sha256 of the URL, 16 hex>/<file name>`
    and that copy. The cache is per machine, so every node of a cluster fetches its own."""
    text = str(location)
    if not is_url(text):
        return Path(text).expanduser()
    name = Path(urllib.parse.urlparse(text).path).name or "model"
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    return download(text, model_cache_dir() / key / name, **download_options).path


def fetch_all(names: list[str] | None = None, **options) -> Iterator[tuple[str, list[Fetched]]]:
    """(name, files) for each published model in `names` (default: all), in order."""
    for name in names or list(PUBLISHED):
        yield name, fetch_published(name, **options)
