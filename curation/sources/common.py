"""Pieces shared by the source adapters: the basename index of a source root, entry problems,
number and box validation, and record construction.

Adapters never join a name read from metadata into a path: they look the name up in the
`FileIndex`, which only holds files that really lie under the root. So "../../x.mp4" in a
metadata file can never reach outside the root; it simply is not found.

A root may be a local folder (walked once) or a store URL such as `s3://bucket/prefix` (listed
once, `curation.storage.list_files`): the index has the same shape either way, its paths are
then URLs, and adapters read metadata through `read_text` / `open_binary`, which take both.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from curation import storage
from curation.records import ClipRecord, Reason, Status, safe_id

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# Normalised box values may overshoot [0, 1] by this much (rounding in the released metadata)
# before the box counts as outside the frame.
BOX_TOLERANCE = 0.02

# Metadata text files larger than this are refused as unreadable rather than read into memory.
MAX_METADATA_BYTES = 512 * 1024 * 1024


class EntryProblem(Exception):
    """One metadata entry cannot become an "ok" record; the adapter turns it into a record."""

    def __init__(self, reason: Reason, message: str, status: str = Status.FAILED):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        # filled in by the adapter once known, so a problem record still names its identity
        self.identity_id = ""
        self.source_video_id = ""


def invalid(message: str) -> EntryProblem:
    return EntryProblem(Reason.METADATA_ENTRY_INVALID, message)


@dataclass
class FileIndex:
    """Every file and folder under a source root, found by one walk, looked up by basename.

    Paths are absolute (the walk starts from the absolute root), so adapters use them as they
    are. A basename's first path (in path order) is held as one string; only names found more
    than once keep the sorted list of all their paths (`more`): a lookup returns the same file
    on every run, and the index of a 600k-file tree holds 600k strings, not 600k lists.
    Symlinks whose target lies outside the root are left out (and remembered, so a
    missing-video message can say why). On a store (`root` a URL) paths are URLs, folders are
    the prefixes between the root and each object, and keys with "", "." or ".." segments are
    left out (a client that normalises them would read outside the prefix).
    """

    root: str                                             # absolute, as given (not resolved)
    files: dict[str, str] = field(default_factory=dict)   # basename -> first path
    more: dict[str, list[str]] = field(default_factory=dict)  # basename -> all paths, if > 1
    dirs: dict[str, list[str]] = field(default_factory=dict)
    image_dirs: set[str] = field(default_factory=set)     # folders that directly hold images
    outside_links: dict[str, str] = field(default_factory=dict)  # basename -> link path
    walk_errors: list[str] = field(default_factory=list)

    def add_file(self, name: str, path: str) -> None:
        first = self.files.setdefault(name, path)
        if first is not path:
            self.more.setdefault(name, [first]).append(path)

    def finish(self) -> FileIndex:
        """After the walk or listing: each name's first path in path order (the same file on
        every run, whatever order the walk or the store gave)."""
        for name, paths in self.more.items():
            paths.sort()
            self.files[name] = paths[0]
        for paths in self.dirs.values():
            paths.sort()
        return self

    def file(self, name: str) -> str | None:
        return self.files.get(name)

    def all_files(self, name: str) -> list[str]:
        if name in self.more:
            return self.more[name]
        path = self.files.get(name)
        return [path] if path is not None else []

    def n_files(self) -> int:
        return len(self.files) + sum(len(paths) - 1 for paths in self.more.values())

    def image_dir(self, name: str) -> str | None:
        """The first folder called `name` that directly holds image files (a clip as frames)."""
        for path in self.dirs.get(name, []):
            if path in self.image_dirs:
                return path
        return None

    def file_names(self) -> list[str]:
        return sorted(self.files)

    def all_file_paths(self) -> list[str]:
        return sorted([path for name in self.files for path in self.all_files(name)])

    def relpath(self, path: str) -> str:
        if storage.is_url(self.root):
            return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def missing_message(self, name: str) -> str:
        if name in self.outside_links:
            return (f"{name} is only present as a symlink pointing outside the source root "
                    f"({self.outside_links[name]}), which is ignored")
        return f"{name} not found under {self.root}"


def _inside(real_path: str, real_root: str) -> bool:
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def build_index(root: str | os.PathLike) -> FileIndex:
    """Walk `root` once with os.scandir (a store URL: list it once) and index its files and
    folders by basename."""
    if storage.is_url(os.fspath(root)):
        return _build_store_index(os.fspath(root))
    root_abs = os.path.abspath(os.fspath(root))
    real_root = os.path.realpath(root_abs)
    index = FileIndex(root=root_abs)
    visited_real_dirs = {real_root}
    pending = [root_abs]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                children = sorted(entries, key=lambda entry: entry.name)
        except OSError as error:
            index.walk_errors.append(f"{folder}: {error}")
            continue
        holds_images = False
        for entry in children:
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not _inside(target, real_root):
                        index.outside_links.setdefault(entry.name, entry.path)
                        continue
                    if os.path.isdir(target):
                        if target in visited_real_dirs:
                            continue  # a loop or a second way into a folder already walked
                        visited_real_dirs.add(target)
                        index.dirs.setdefault(entry.name, []).append(entry.path)
                        pending.append(entry.path)
                    elif os.path.isfile(target):
                        index.add_file(entry.name, entry.path)
                        holds_images |= entry.name.lower().endswith(IMAGE_EXTENSIONS)
                    continue
                if entry.is_dir(follow_symlinks=False):
                    visited_real_dirs.add(os.path.realpath(entry.path))
                    index.dirs.setdefault(entry.name, []).append(entry.path)
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    index.add_file(entry.name, entry.path)
                    holds_images |= entry.name.lower().endswith(IMAGE_EXTENSIONS)
            except OSError as error:
                index.walk_errors.append(f"{entry.path}: {error}")
        if holds_images:
            index.image_dirs.add(folder)
    return index.finish()


def _build_store_index(url: str) -> FileIndex:
    """The index of every object under a store prefix, from one paginated listing."""
    root = url.rstrip("/")
    index = FileIndex(root=root)
    known_dirs: set[str] = set()
    for relative in storage.list_files(root):
        parts = relative.split("/")
        if any(part in ("", ".", "..") for part in parts):
            index.walk_errors.append(f"{root}/{relative}: a key with an empty, '.' or '..' "
                                     f"segment is left out")
            continue
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in known_dirs:
                known_dirs.add(folder)
                index.dirs.setdefault(parts[depth - 1], []).append(f"{root}/{folder}")
        path = f"{root}/{relative}"
        index.add_file(parts[-1], path)
        if parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            index.image_dirs.add(path.rsplit("/", 1)[0])
    return index.finish()


def open_binary(path: str):
    """A binary file of a metadata path or URL (a context manager; seekable)."""
    return storage.open_binary(path)


def read_text(path: str, max_bytes: int = MAX_METADATA_BYTES) -> str:
    """Read a UTF-8 metadata text file (a path or a URL); OSError/UnicodeDecodeError/ValueError
    mean unreadable, and so does a file larger than `max_bytes`."""
    if storage.is_url(path):
        return storage.read_bytes(path, max_bytes).decode("utf-8")
    if os.path.getsize(path) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def read_texts(paths: list[str], max_bytes: int = MAX_METADATA_BYTES,
               batch: int = 256) -> Iterator[tuple[str, str | Exception]]:
    """(path, text) for each path in order, or (path, the error that made it unreadable: one of
    UNREADABLE_ERRORS). Stored objects are fetched `batch` at a time in concurrent ranged reads
    of at most max_bytes + 1 bytes: one request after another would cost VFHQ's 16,000
    metadata files 16,000 round trips."""
    if not paths or not storage.is_url(paths[0]):
        for path in paths:
            try:
                yield path, read_text(path, max_bytes)
            except UNREADABLE_ERRORS as error:
                yield path, error
        return
    fs = storage.filesystem(paths[0])
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        datas = fs.cat_ranges(chunk, [0] * len(chunk), [max_bytes + 1] * len(chunk),
                              on_error="return")
        for path, data in zip(chunk, datas, strict=True):
            if isinstance(data, Exception):
                yield path, data if isinstance(data, UNREADABLE_ERRORS) else OSError(str(data))
            elif len(data) > max_bytes:
                yield path, ValueError(f"larger than {max_bytes} bytes")
            else:
                try:
                    yield path, data.decode("utf-8")
                except UnicodeDecodeError as error:
                    yield path, error


# --- values -------------------------------------------------------------------------------------

def number(value: Any, what: str) -> float:
    """A finite real number from metadata (bools and numeric strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"{what} is not a number: {value!r:.60}")
    result = float(value)
    if not math.isfinite(result):
        raise invalid(f"{what} is not finite: {value!r}")
    return result


_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")


def integer_text(text: str, what: str) -> int:
    """An integer written in a text file or a file name (ASCII digits, optional sign)."""
    if text.isascii() and text.isdigit():     # the common case, without the regex
        return int(text)
    if not _INTEGER.fullmatch(text):
        raise invalid(f"{what} is not an integer: {text!r:.60}")
    return int(text)


def float_text(text: str, what: str) -> float:
    try:
        result = float(text)
    except ValueError:
        raise invalid(f"{what} is not a number: {text!r:.60}") from None
    if not math.isfinite(result):
        raise invalid(f"{what} is not finite: {text!r:.60}")
    return result


def nonempty_str(value: Any, what: str) -> str:
    """A non-empty identifier string that can be written as UTF-8 (manifests, shard keys)."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"{what} is missing or not a non-empty string: {value!r:.60}")
    if not is_utf8(value):
        raise invalid(f"{what} is not valid Unicode text: {value!r:.60}")
    return value.strip()


def writable(text: str) -> str:
    """`text` with lone surrogates escaped, so it can be written as UTF-8."""
    return text if is_utf8(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8(text: str) -> bool:
    """False for strings holding lone surrogates (bad JSON escapes, undecodable file names)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def mapping(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise invalid(f"{what} is missing or not an object: {value!r:.60}")
    return value


Box = tuple[float, float, float, float]


def normalized_box(x0: float, y0: float, x1: float, y1: float, what: str = "bbox") -> Box:
    """Validate a 0..1 box (x0, y0, x1, y1): clamp small overshoot, refuse outside/degenerate."""
    values = (x0, y0, x1, y1)
    if any(v < -BOX_TOLERANCE or v > 1 + BOX_TOLERANCE for v in values):
        raise EntryProblem(Reason.BBOX_OUTSIDE_FRAME,
                           f"{what} {_fmt_box(values)} lies outside the frame (0..1)")
    cx0, cy0, cx1, cy1 = (min(max(v, 0.0), 1.0) for v in values)
    if cx1 <= cx0 or cy1 <= cy0:
        raise EntryProblem(Reason.BBOX_OUTSIDE_FRAME, f"{what} {_fmt_box(values)} is degenerate")
    return (cx0, cy0, cx1, cy1)


def pixel_box(x0: float, y0: float, x1: float, y1: float, what: str = "bbox") -> Box:
    """Validate a pixel box whose frame size is unknown: non-negative and not degenerate."""
    values = (x0, y0, x1, y1)
    if any(v < 0 for v in values):
        raise EntryProblem(Reason.BBOX_OUTSIDE_FRAME,
                           f"{what} {_fmt_box(values)} has negative pixel coordinates")
    if x1 <= x0 or y1 <= y0:
        raise EntryProblem(Reason.BBOX_OUTSIDE_FRAME, f"{what} {_fmt_box(values)} is degenerate")
    return values


def scaled_box(x0: float, y0: float, x1: float, y1: float, width: float, height: float,
               what: str = "bbox") -> Box:
    """A pixel box annotated on a width x height frame, normalised to 0..1 and validated."""
    if width <= 0 or height <= 0:
        raise invalid(f"frame size {width}x{height} is not positive")
    return normalized_box(x0 / width, y0 / height, x1 / width, y1 / height, what)


def _fmt_box(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


# --- records ------------------------------------------------------------------------------------

def unreadable_metadata(source: str, where: str, file_name: str, error: object,
                        license_: str) -> ClipRecord:
    """The one record that stands for a whole metadata file that could not be read.

    `where` says where it is (a path relative to the root, or "archive.zip:member").
    """
    return ClipRecord(
        source=source, clip_id=safe_id(file_name), original_clip_id=writable(file_name),
        identity_id="", source_video_id="", video_path=None, status=Status.FAILED,
        reason=Reason.METADATA_UNREADABLE.value, message=writable(f"{where}: {error}"[:500]),
        license=license_,
    )


def problem_record(source: str, original_id: str, problem: EntryProblem, license_: str, *,
                   clip_id: str | None = None, extra: dict | None = None) -> ClipRecord:
    return ClipRecord(
        source=source, clip_id=clip_id or safe_id(original_id),
        original_clip_id=writable(original_id),
        identity_id=problem.identity_id, source_video_id=problem.source_video_id,
        video_path=None,
        status=problem.status, reason=problem.reason.value,
        message=writable(problem.message[:500]),
        license=license_, extra=extra or {},
    )


def internal_error_record(source: str, original_id: str, error: Exception,
                          license_: str) -> ClipRecord:
    """A record for an entry whose parsing hit a bug: enumeration of the others goes on."""
    return ClipRecord(
        source=source, clip_id=safe_id(original_id), original_clip_id=writable(original_id),
        identity_id="", source_video_id="", video_path=None, status=Status.FAILED,
        reason=Reason.INTERNAL_ERROR.value,
        message=writable(f"{type(error).__name__}: {error}"[:500]),
        license=license_,
    )


def video_file(index: FileIndex, stem: str) -> str | None:
    """The video called `<stem>.<ext>` for the first extension of VIDEO_EXTENSIONS present.

    yt-dlp saves a download under the container its streams fit (`.mp4` for H.264 or AV1,
    `.webm` or `.mkv` for VP9 or AV1), so a name from metadata is looked up under each; the
    fixed order makes the choice the same on every run when several exist.
    """
    for extension in VIDEO_EXTENSIONS:
        path = index.files.get(stem + extension)
        if path is not None:
            return path
    return None


def _missing_video_message(index: FileIndex, stem: str) -> str:
    for extension in VIDEO_EXTENSIONS:
        if stem + extension in index.outside_links:
            return index.missing_message(stem + extension)
    others = ", ".join(VIDEO_EXTENSIONS[1:])
    return f"{stem}{VIDEO_EXTENSIONS[0]} (or {others}) not found under {index.root}"


@dataclass(frozen=True)
class ClipVideo:
    """Where a clip's frames come from: its processed clip (used whole) or the raw video."""

    path: str
    is_raw: bool


def processed_or_raw(index: FileIndex, processed: str, raw: str,
                     processed_folder: bool = False) -> ClipVideo:
    """The processed clip `<processed>.*` (or, with `processed_folder`, a folder of its frames),
    else the raw download `<raw>.*`; raises a video_missing problem naming every name tried.

    The one lookup every adapter with a processed-else-raw rule uses (CelebV-HQ, CelebV-Text,
    TalkingHead-1KH, VFHQ), so each accepts every container a download may have.
    """
    clip = video_file(index, processed) or (index.image_dir(processed) if processed_folder
                                            else None)
    if clip is not None:
        return ClipVideo(clip, is_raw=False)
    source = video_file(index, raw)
    if source is not None:
        return ClipVideo(source, is_raw=True)
    messages = [_missing_video_message(index, processed)]
    if processed_folder:
        messages.append(index.missing_message(f"{processed}/ (frames)"))
    messages.append(_missing_video_message(index, raw))
    raise EntryProblem(Reason.VIDEO_MISSING, "; ".join(messages), status=Status.SKIPPED)


class EntryTable:
    """Entries of one source gathered from one or more metadata files, keyed by clip key.

    The first file (in path order) wins; an identical repeat is the same clip, a differing
    repeat becomes a failed record of its own so nothing is dropped silently.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Any, str]] = {}
        self.conflicts: list[tuple[str, str, str]] = []   # (key, where, where of the first)

    def add(self, key: str, payload: Any, where: str) -> None:
        first = self.entries.get(key)
        if first is None:
            self.entries[key] = (payload, where)
        elif first[0] != payload:
            self.conflicts.append((key, where, first[1]))

    def conflict_records(self, source: str, license_: str) -> list[ClipRecord]:
        records = []
        for key, where, first_where in self.conflicts:
            problem = invalid(f"a second, different entry for {key!r} in {where}; the one in "
                              f"{first_where} is used")
            records.append(problem_record(source, key, problem, license_,
                                          clip_id=safe_id(f"{key}@{where}")))
        return records


def run_entry(source: str, original_id: str, license_: str, build, *args) -> ClipRecord:
    """Call build(*args) for one entry; any problem becomes that entry's record."""
    if not is_utf8(original_id):
        return problem_record(source, original_id, invalid("clip key is not valid Unicode text"),
                              license_)
    try:
        return build(*args)
    except EntryProblem as problem:
        return problem_record(source, original_id, problem, license_)
    except Exception as error:  # noqa: BLE001 - a bug in one entry must not stop the others
        return internal_error_record(source, original_id, error, license_)


def sorted_entries(entries: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, str, Any]]:
    """(clip_id, original id, payload) sorted by safe id then original: the yield order."""
    keyed = [(safe_id(original), original, payload) for original, payload in entries]
    keyed.sort(key=lambda item: (item[0], item[1]))
    return iter(keyed)


# --- the CelebV family (CelebV-HQ, CelebV-Text share their entry shape) ---------------------------

UNREADABLE_ERRORS = (OSError, UnicodeDecodeError, ValueError, RecursionError)


def load_json(path: str) -> Any:
    """Parse a JSON metadata file; raises one of UNREADABLE_ERRORS when it cannot be read."""
    return json.loads(read_text(path))


def collect_json_entries(index: FileIndex, source: str, metadata_name: str, license_: str,
                         clip_map: Callable[[Any], dict | None], expected_shape: str,
                         table_key: Callable[[str], str] = lambda key: key,
                         ) -> tuple[EntryTable, list[ClipRecord]]:
    """Every `metadata_name` under the root, read into one table of (key, entry) payloads.

    `clip_map` takes the parsed JSON and returns the {key: entry} mapping of its clips, or None
    when the file has another shape; `table_key` says which keys name the same clip. A missing,
    unreadable or wrongly shaped file becomes one record in the returned list.
    """
    table = EntryTable()
    problems: list[ClipRecord] = []
    paths = index.all_files(metadata_name)
    if not paths:
        problems.append(unreadable_metadata(source, index.root, metadata_name,
                                            f"no {metadata_name} under the source root",
                                            license_))
    for path in paths:
        where = index.relpath(path)
        try:
            data = load_json(path)
        except UNREADABLE_ERRORS as error:
            problems.append(unreadable_metadata(source, where, metadata_name, error, license_))
            continue
        clips = clip_map(data)
        if clips is None:
            problems.append(unreadable_metadata(source, where, metadata_name,
                                                f"expected {expected_shape}", license_))
            continue
        for key, entry in clips.items():
            table.add(table_key(key), (key, entry), where)
    return table, problems


def tblr_box(value: Any) -> Box:
    """A {"top", "bottom", "left", "right"} box as raw numbers (x0, y0, x1, y1), unvalidated."""
    box = mapping(value, "bbox")
    left, top, right, bottom = (number(box.get(side), f"bbox.{side}")
                                for side in ("left", "top", "right", "bottom"))
    return (left, top, right, bottom)


def seconds_range(start: Any, end: Any, what: str = "duration") -> tuple[float, float]:
    start_sec = number(start, f"{what} start")
    end_sec = number(end, f"{what} end")
    if start_sec < 0 or end_sec <= start_sec:
        raise invalid(f"{what} {start_sec:g}..{end_sec:g} is not a forward range")
    return start_sec, end_sec
