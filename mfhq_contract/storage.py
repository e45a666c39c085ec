"""Where a location lives, for both halves: a local path or an fsspec URL (`s3://`, `gs://`, ...).

Contract:
- `scheme(location)` is the URL scheme ("" for a plain path); `is_url(location)` is True for
  `scheme://...` other than `file://`: those locations are opened through fsspec, everything
  else is a local path (`file://` URLs and plain paths alike, see `local_path`).
- `parse_options(text)` reads `--storage-options JSON` (a JSON object, or empty) and raises
  ValueError with a message that shows the expected shape.
- `set_options(options)` sets the fsspec storage options (credentials, endpoint, ...) that
  `filesystem(url)` uses in this process, and exports them as `$MFHQ_STORAGE_OPTIONS` so that
  processes started from this one (an embedded Ray's workers) use the same. Without options each
  store's standard configuration applies (for S3 the `AWS_*` environment including
  `AWS_ENDPOINT_URL`, profiles, instance roles). Options are credentials: callers never write
  them into a plan, a checkpoint or a log.
- `filesystem(url)` is the fsspec filesystem of a URL's scheme with those options; a scheme whose
  package is not installed raises ImportError naming the package to install.

Pure Python on import (fsspec is imported when a URL is first opened), so the trainer, the
build and the face toolkit may all import it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

OPTIONS_ENV = "MFHQ_STORAGE_OPTIONS"

# None: not set in this process, so $MFHQ_STORAGE_OPTIONS (inherited from a parent) applies.
_options: dict | None = None


def parse_options(options: dict | str | None) -> dict:
    """Storage options from a dict or its JSON text (empty or None: no options)."""
    if isinstance(options, str):
        try:
            options = json.loads(options) if options.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"--storage-options is not JSON ({exc}); give an object such as "
                             f"'{{\"endpoint_url\": \"http://127.0.0.1:9000\"}}'") from None
    if not isinstance(options or {}, dict):
        raise ValueError("--storage-options must be a JSON object, such as "
                         "'{\"endpoint_url\": \"http://127.0.0.1:9000\"}'")
    return dict(options or {})


def add_options_argument(parser, what: str) -> None:
    """The one `--storage-options JSON` flag of every command (`what`: the URLs it serves)."""
    parser.add_argument(
        "--storage-options", dest="storage_options", default=None, metavar="JSON",
        help=f"fsspec storage options for {what}, as a JSON object, e.g. "
             "'{\"endpoint_url\": \"http://127.0.0.1:9000\"}' (default: the store's standard "
             "configuration; for S3 the AWS_* environment, profiles, instance roles). Their values "
             "are never written into any file")


def use_options_argument(parser, namespace) -> None:
    """Apply a parsed `--storage-options` (`set_options`) and take it out of `namespace`; bad
    JSON is the parser's usage error (exit 2)."""
    try:
        set_options(parse_options(vars(namespace).pop("storage_options", None)))
    except ValueError as err:
        parser.error(str(err))


def set_options(options: dict | str | None) -> None:
    """Process-wide fsspec storage options, inherited by child processes (see the module doc)."""
    global _options
    _options = parse_options(options)
    if _options:
        os.environ[OPTIONS_ENV] = json.dumps(_options)
    else:
        os.environ.pop(OPTIONS_ENV, None)


def options() -> dict:
    """The storage options in force: set here, else inherited through the environment."""
    if _options is not None:
        return dict(_options)
    inherited = os.environ.get(OPTIONS_ENV, "")
    return parse_options(inherited) if inherited.strip() else {}


def scheme(location: str | os.PathLike) -> str:
    text = os.fspath(location)
    return urlparse(text).scheme if "://" in text else ""


def is_url(location: str | os.PathLike) -> bool:
    return scheme(location) not in ("", "file")


def local_path(location: str | os.PathLike) -> Path:
    """The local path of a plain path or a `file://` URL (also `file:rel`, webdataset's form)."""
    text = os.fspath(location)
    if text.startswith("file://"):
        return Path(urlparse(text).path)
    if text.startswith("file:"):
        return Path(text[len("file:"):])
    return Path(text)


def filesystem(location: str | os.PathLike):
    """The fsspec filesystem for a URL, with the storage options in force."""
    import fsspec

    protocol = scheme(location)
    try:
        return fsspec.filesystem(protocol, **options())
    except ImportError as exc:
        raise ImportError(f"{os.fspath(location)}: reading {protocol}:// needs its fsspec "
                          f"package ({exc}); e.g. pip install s3fs (s3://) or gcsfs "
                          f"(gs://)") from None
