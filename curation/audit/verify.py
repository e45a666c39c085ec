"""Check a finished MFHQ build: shards against manifests, every image, every sample record.

    mfhq verify [--output DIR] [--no-images] [--no-progress]

Checks, each problem printed as one line (`<file>: <what is wrong>`):
- every manifest part, `shards.parquet` and `plan.json` reads; the shard table, the parts'
  recorded sha256 and the files on disk agree (sha256, bytes, sample count); every planned shard
  exists and no unlisted shard sits beside them; no temporary file is left over;
- every tar member is a plain file whose name is `<key>.<ext>` with a safe key (no path, no
  dot); every sample has its JSON, N crops and N masks and nothing else; every crop decodes as
  an RGB image of the crop size and every mask as a 0/255 single-channel image of that size;
- every sample's JSON matches its `identities` row (key, id, split, sources, source videos) and
  its `faces` rows (clip, frame, pose, quality of the selected faces); the kept identities of a
  shard are exactly its samples;
- no source video id is in both splits;
- no id whose removal is recorded in `takedowns.parquet` occurs in the manifests or samples;
- identity checks (`curation.pipeline.identity_check`): every kept identity's recorded
  `identity_consistency` equals the one recomputed from its faces' recorded embeddings (and each
  face's `identity_distance` agrees), no face of another person (`identity_mismatch`) was
  selected, and no `duplicate_group` has kept identities in both splits.
Exit status 0 when clean, 1 when there are problems, 2 when there is no build to check.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation import build_folder as bf
from curation.build_folder import BuildFolders
from curation.records import Status
from mfhq_contract.storage import add_options_argument, use_options_argument

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_NO_BUILD = 0, 1, 2
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_FLOAT_TOLERANCE = 1e-3    # sample JSON floats are rounded to 4 digits


@dataclass
class VerifyConfig(BuildFolders):
    output: str | None = None      # build folder holding shards/ and manifests/ (default: .)
    images: bool = True            # decode every crop and mask
    progress: bool = True


class Problems:
    """Collects one line per problem, named by the file it was found in."""

    def __init__(self, root: Path):
        self.root = root
        self.lines: list[str] = []

    def add(self, where: Path | str, what: str) -> None:
        where = Path(where)
        try:
            shown = where.relative_to(self.root)
        except ValueError:
            shown = where
        text = f"{shown}: {what}".replace("\n", "\\n")
        self.lines.append(text[:500])


# --- manifests ----------------------------------------------------------------------------------

def _read_parts(mdir: Path, problems: Problems) -> dict[str, Any]:
    """Every readable part of clips/faces/identities as one DataFrame each (unreadable: reported)."""
    import pandas as pd

    from curation import manifests

    frames = {}
    for table in manifests.TABLES:
        pieces = []
        for part in sorted((mdir / table).glob("part-*.parquet")):
            try:
                pieces.append(bf.read_part(part, table).to_pandas())
            except Exception as err:  # noqa: BLE001 - any unreadable part is a problem line
                problems.add(part, f"unreadable Parquet part ({_first_line(err)})")
        frames[table] = (pd.concat(pieces, ignore_index=True) if pieces else
                         manifests.SCHEMAS[table].empty_table().to_pandas())
    return frames


def _read_shard_table(mdir: Path, problems: Problems):
    path = mdir / bf.SHARDS_TABLE
    if not path.exists():
        problems.add(path, "missing (the build did not finish: rerun it with the same arguments)")
        return None
    try:
        return bf.read_part(path, "shards").to_pandas()
    except Exception as err:  # noqa: BLE001
        problems.add(path, f"unreadable ({_first_line(err)})")
        return None


def _read_plan(mdir: Path, problems: Problems) -> dict:
    path = mdir / bf.PLAN_FILE
    try:
        return bf.read_json(path)
    except FileNotFoundError:
        problems.add(path, "missing")
    except (OSError, ValueError) as err:
        problems.add(path, f"unreadable ({_first_line(err)})")
    return {}


def _check_temporaries(config: VerifyConfig, problems: Problems) -> None:
    for folder in (config.shards_dir, config.manifests_dir):
        for tmp in sorted(folder.rglob(".*.tmp")):
            problems.add(tmp, "leftover temporary file of an interrupted writer")


# --- shards -------------------------------------------------------------------------------------

def _check_shard_files(config: VerifyConfig, shards, plan: dict, problems: Problems) -> None:
    """shards.parquet vs the files on disk and the plan; part metadata vs the table's sha256."""
    from curation import manifests
    from curation.build_folder import file_sha256

    listed = set(shards["path"]) if shards is not None else set()
    planned = {s["name"] for s in plan.get("plan", {}).get("shards", [])}
    for name in sorted(planned - listed):
        problems.add(config.shards_dir / name, "planned but not in shards.parquet")
    on_disk = set(bf.list_tars(config.shards_dir))       # files, or a store's objects
    for name in sorted(on_disk - listed):
        problems.add(config.shards_dir / name, "shard file not listed in shards.parquet")
    if shards is None:
        return
    for row in shards.itertuples(index=False):
        tar = config.shards_dir / row.path
        tar_bytes = bf.size(tar)
        if tar_bytes is None:
            problems.add(tar, "listed in shards.parquet but missing")
            continue
        if tar_bytes != row.bytes:
            problems.add(tar, f"{tar_bytes} bytes, shards.parquet says {row.bytes}")
        actual = file_sha256(tar)
        if actual != row.sha256:
            problems.add(tar, f"sha256 {actual[:16]}... does not match shards.parquet "
                              f"({row.sha256[:16]}...)")
        for part in manifests.part_paths(config.manifests_dir, row.path).values():
            if not part.exists():
                problems.add(part, f"manifest part of {row.path} missing")
            elif manifests.part_shard_sha256(part) not in (row.sha256, None):
                problems.add(part, f"records another sha256 for {row.path} than shards.parquet")


def _read_tar(tar: Path, problems: Problems) -> dict[str, dict[str, bytes]] | None:
    """{key: {ext: bytes}} of a shard; unsafe or non-file members are reported."""
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    try:
        for member in bf.iter_tar(tar):
            name = member.name
            if not member.is_file:
                problems.add(tar, f"member {name!r} is not a plain file")
                continue
            key, dot, ext = name.partition(".")
            if not dot or not _KEY.match(key) or "/" in name or "\\" in name:
                problems.add(tar, f"member name {name!r} is not <safe key>.<ext>")
                continue
            if ext in samples[key]:
                problems.add(tar, f"member {name!r} appears twice")
            samples[key][ext] = member.data
    except (tarfile.TarError, OSError, EOFError) as err:
        problems.add(tar, f"unreadable tar ({_first_line(err)})")
        return None
    return dict(samples)


def _check_image(tar: Path, name: str, data: bytes, size: int | None, mask: bool,
                 problems: Problems) -> None:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, shape = image.mode, image.size
            pixels = np.asarray(image) if mask else None
    except Exception as err:  # noqa: BLE001 - any decoder error is a problem line
        problems.add(tar, f"{name} does not decode ({_first_line(err)})")
        return
    if size is not None and shape != (size, size):
        problems.add(tar, f"{name} is {shape[0]}x{shape[1]}, expected {size}x{size}")
    if mask:
        if mode != "L":
            problems.add(tar, f"{name} is a {mode} image, expected a single-channel mask")
        elif not set(np.unique(pixels).tolist()) <= {0, 255}:
            problems.add(tar, f"{name} has values other than 0 and 255")
    elif mode != "RGB":
        problems.add(tar, f"{name} is a {mode} image, expected RGB")


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    if not (math.isfinite(fa) and math.isfinite(fb)):
        return math.isfinite(fa) == math.isfinite(fb)
    return abs(fa - fb) <= _FLOAT_TOLERANCE * max(1.0, abs(fb))


def _check_record(tar: Path, key: str, record: dict, ident: dict | None, faces: list[dict],
                  expected_images: int, problems: Problems) -> None:
    """A sample's JSON against its identities row and selected faces rows."""
    from mfhq_contract import FORMAT_VERSION

    where = f"{key}.json"
    if record.get("key") != key:
        problems.add(tar, f"{where}: key {record.get('key')!r} differs from the member key")
    if record.get("format_version") != FORMAT_VERSION:
        problems.add(tar, f"{where}: format_version {record.get('format_version')!r}, "
                          f"expected {FORMAT_VERSION}")
    if ident is None:
        problems.add(tar, f"{where}: no kept identities row with this key in this shard")
        return
    for field in ("identity_id", "split"):
        if record.get(field) != ident[field]:
            problems.add(tar, f"{where}: {field} {record.get(field)!r} != manifest "
                              f"{ident[field]!r}")
    for field in ("sources", "source_video_ids"):
        if sorted(record.get(field) or []) != sorted(ident[field] if ident[field] is not None
                                                     else []):
            problems.add(tar, f"{where}: {field} differ from the identities manifest")
    images = record.get("images") or []
    if len(images) != expected_images:
        problems.add(tar, f"{where}: {len(images)} images, expected {expected_images}")
    by_index = {int(f["image_index"]): f for f in faces}
    if sorted(by_index) != list(range(len(images))):
        problems.add(tar, f"{where}: selected faces in the manifest have image indices "
                          f"{sorted(by_index)}, the sample has {len(images)} images")
    for image in images:
        face = by_index.get(image.get("index"))
        if face is None:
            continue
        for field in ("clip_id", "source", "frame_index"):
            if image.get(field) != face[field]:
                problems.add(tar, f"{where}: image {image.get('index')} {field} "
                                  f"{image.get(field)!r} != faces manifest {face[field]!r}")
        for field in ("yaw", "pitch", "roll", "quality", "face_size"):
            if not _close(image.get(field), face[field]):
                problems.add(tar, f"{where}: image {image.get('index')} {field} "
                                  f"{image.get(field)!r} != faces manifest {face[field]!r}")


def _check_shard_contents(config: VerifyConfig, shard: str, samples: dict[str, dict[str, bytes]],
                          idents, faces, crop_size: int | None, expected_images: int,
                          expected_samples: int | None, problems: Problems) -> list[dict]:
    """Members, images and records of one shard; returns the parsed sample records."""
    from mfhq_contract import JSON_EXT, image_ext, mask_ext

    tar = config.shards_dir / shard
    kept = idents[(idents["shard"] == shard) & (idents["status"] == Status.KEPT)]
    kept_by_key = {row["key"]: row for row in kept.to_dict("records")}
    if expected_samples is not None and len(samples) != expected_samples:
        problems.add(tar, f"{len(samples)} samples, shards.parquet says {expected_samples}")
    for key in sorted(set(kept_by_key) - set(samples)):
        problems.add(tar, f"kept identity {key} of the identities manifest has no sample")
    selected = faces[(faces["shard"] == shard) & faces["selected"]]
    faces_by_identity = defaultdict(list)
    for row in selected.to_dict("records"):
        faces_by_identity[row["identity_id"]].append(row)
    records = []
    for key in sorted(samples):
        members = samples[key]
        if JSON_EXT not in members:
            problems.add(tar, f"sample {key} has no JSON record")
            continue
        try:
            record = json.loads(members[JSON_EXT].decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError) as err:
            problems.add(tar, f"{key}.json is not a JSON object ({_first_line(err)})")
            continue
        records.append(record)
        n = len(record.get("images") or [])
        wanted = {JSON_EXT} | {image_ext(i) for i in range(n)} | {mask_ext(i) for i in range(n)}
        for ext in sorted(wanted - set(members)):
            problems.add(tar, f"sample {key} lacks {key}.{ext}")
        for ext in sorted(set(members) - wanted):
            problems.add(tar, f"sample {key} has an unexpected member {key}.{ext}")
        if config.images:
            size = record.get("crop_size", crop_size)
            for i in range(n):
                for ext, mask in ((image_ext(i), False), (mask_ext(i), True)):
                    if ext in members:
                        _check_image(tar, f"{key}.{ext}", members[ext], size, mask, problems)
        ident = kept_by_key.get(key)
        _check_record(tar, key, record, ident,
                      faces_by_identity.get(ident["identity_id"], []) if ident else [],
                      expected_images, problems)
    return records


# --- splits and takedowns -----------------------------------------------------------------------

def _check_split_leaks(config: VerifyConfig, frames: dict, records: list[dict],
                       problems: Problems) -> None:
    splits_of: dict[str, set[str]] = defaultdict(set)
    for row in frames["identities"].itertuples(index=False):
        for video in row.source_video_ids if row.source_video_ids is not None else []:
            splits_of[video].add(row.split)
    clips = frames["clips"]
    for row in clips[clips["split"].notna()].itertuples(index=False):
        if row.source_video_id:
            splits_of[row.source_video_id].add(row.split)
    for record in records:
        for video in record.get("source_video_ids") or []:
            splits_of[video].add(record.get("split"))
    for video, splits in sorted(splits_of.items()):
        if len(splits) > 1:
            problems.add(config.manifests_dir,
                         f"source video {video!r} is in both splits ({sorted(map(str, splits))})")


def _check_takedowns(config: VerifyConfig, frames: dict, records: list[dict],
                     problems: Problems) -> None:
    from curation import takedowns

    try:
        removed = takedowns.removed_hashes(config.manifests_dir)
    except takedowns.TakedownError as err:
        problems.add(config.manifests_dir / takedowns.TAKEDOWNS_FILE, str(err))
        return
    if not removed.hashes:
        return
    present: dict[str, str] = {}
    for frame, columns in ((frames["clips"], ("identity_id", "source_video_id", "clip_id",
                                              "original_clip_id")),
                           (frames["faces"], ("identity_id", "clip_id")),
                           (frames["identities"], ("identity_id",))):
        for column in columns:
            for value in frame[column].dropna().unique():
                present[str(value)] = column
    for row in frames["clips"][["source", "clip_id"]].itertuples(index=False):
        present[f"{row.source}:{row.clip_id}"] = "clip"
    for values in frames["identities"]["source_video_ids"].dropna():
        for value in values:
            present[str(value)] = "source_video_ids"
    for record in records:
        present[str(record.get("identity_id"))] = "sample identity_id"
        for value in record.get("source_video_ids") or []:
            present[str(value)] = "sample source_video_ids"
        for image in record.get("images") or []:
            present[str(image.get("clip_id"))] = "sample clip_id"
    hits = sorted({what for value, what in present.items() if removed.contains(value)})
    for what in hits:
        problems.add(config.manifests_dir,
                     f"an id recorded as removed in {takedowns.TAKEDOWNS_FILE} is still present "
                     f"({what})")


# --- identity checks ---------------------------------------------------------------------------

CONSISTENCY_TOLERANCE = 1e-4   # float32 embeddings, recomputed in float64


def _check_identities(config: VerifyConfig, frames: dict, problems: Problems) -> None:
    """Recompute each kept identity's consistency from the faces manifest's embeddings."""
    import numpy as np

    from curation.pipeline.identity_check import PERSON_FACE_REASONS
    from curation.records import Reason
    from mfhq_faces.embedders import normalise_rows

    idents, faces = frames["identities"], frames["faces"]
    if "embedding" not in faces or "identity_consistency" not in idents:
        return
    mismatched = faces[faces["selected"] & (faces["reason"] == Reason.IDENTITY_MISMATCH)]
    for identity_id in sorted(set(mismatched["identity_id"])):
        problems.add(config.manifests_dir, f"{identity_id}: a face of another person "
                                           f"({Reason.IDENTITY_MISMATCH}) is selected")
    person = faces[faces["embedding"].notna() & (faces["reason"].isna() | faces["reason"].isin(
        PERSON_FACE_REASONS[1:]))]
    by_identity = {k: g for k, g in person.groupby("identity_id")}
    kept = idents[idents["status"] == Status.KEPT]
    for row in kept.itertuples(index=False):
        group = by_identity.get(row.identity_id)
        recorded = row.identity_consistency
        if group is None:
            if recorded is not None and np.isfinite(recorded):
                problems.add(config.manifests_dir, f"{row.identity_id}: identity_consistency "
                                                   f"{recorded:.4f} but no face embeddings")
            continue
        vectors = np.stack([np.asarray(v, np.float64) for v in group["embedding"]])
        centroid = normalise_rows(vectors.mean(axis=0, keepdims=True)).astype(np.float64)[0]
        distances = 1.0 - np.clip(vectors @ centroid, -1.0, 1.0)
        if recorded is None or not np.isfinite(recorded) \
                or abs(distances.max() - recorded) > CONSISTENCY_TOLERANCE:
            problems.add(config.manifests_dir,
                         f"{row.identity_id}: identity_consistency {recorded} disagrees with its "
                         f"faces' embeddings (recomputed {distances.max():.4f})")
        recorded_d = group["identity_distance"].to_numpy(dtype=np.float64)
        if not np.allclose(recorded_d, distances, atol=CONSISTENCY_TOLERANCE, equal_nan=False):
            problems.add(config.manifests_dir, f"{row.identity_id}: faces' identity_distance "
                                               "disagrees with their embeddings")
    grouped = kept[kept["duplicate_group"].notna()]
    for group_id, group in grouped.groupby("duplicate_group"):
        if group["split"].nunique() > 1:
            problems.add(config.manifests_dir,
                         f"duplicate group {group_id} has kept identities in both splits "
                         f"({', '.join(sorted(group['identity_id']))})")


# --- the whole check ----------------------------------------------------------------------------

def verify_build(config: VerifyConfig) -> list[str]:
    """All problems of the build in `config.output` (empty list: clean)."""
    from tqdm import tqdm

    problems = Problems(config.output_root)
    mdir = config.manifests_dir
    plan = _read_plan(mdir, problems)
    shards = _read_shard_table(mdir, problems)
    frames = _read_parts(mdir, problems)
    _check_temporaries(config, problems)
    _check_shard_files(config, shards, plan, problems)
    build_config = plan.get("config", {})
    crop_size = (build_config.get("analysis") or {}).get("crop_size")
    expected_images = int((build_config.get("selection") or {}).get("images_per_identity") or 8)
    records: list[dict] = []
    rows = list(shards.itertuples(index=False)) if shards is not None else []
    for row in tqdm(rows, desc="verify", unit="shard", disable=not config.progress,
                    file=sys.stderr):
        tar = config.shards_dir / row.path
        if not bf.exists(tar):
            continue
        samples = _read_tar(tar, problems)
        if samples is None:
            continue
        records += _check_shard_contents(config, row.path, samples, frames["identities"],
                                         frames["faces"], crop_size, expected_images,
                                         int(row.samples), problems)
    _check_split_leaks(config, frames, records, problems)
    _check_takedowns(config, frames, records, problems)
    _check_identities(config, frames, problems)
    return problems.lines


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


def build_parser(prog: str = "mfhq verify") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Check an MFHQ build: every shard against the manifests (sha256, sample "
                    "count, keys), every crop and mask decodes, every sample's JSON matches its "
                    "manifest rows, no source video in both splits, no removed id left. Prints "
                    "one line per problem; exit status 0 when clean, 1 with problems, 2 when "
                    "there is no build.")
    p.add_argument("--output", default=None, metavar="DIR|URL",
                   help="the build's output folder (DIR/shards, DIR/manifests; default: "
                        "./shards and ./manifests, as build_mfhq.py writes them), or its store "
                        "URL (s3://bucket/mfhq: shards are read from the store)")
    p.add_argument("--no-images", dest="images", action="store_false",
                   help="skip decoding the crops and masks (faster; files are still hashed)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar on stderr")
    add_options_argument(p, "an s3:// / gs:// --output")
    return p


def main(argv: list[str] | None = None, prog: str = "mfhq verify") -> int:
    parser = build_parser(prog)
    ns = parser.parse_args(argv)
    use_options_argument(parser, ns)
    config = VerifyConfig(**vars(ns))
    try:
        bf.sync_down(config.manifests_dir)    # an output on a store: its manifests, mirrored
    except Exception as err:  # noqa: BLE001 - the store's own error, said in one line
        print(f"verify: error: {str(err).splitlines()[0] if str(err) else _first_line(err)}",
              file=sys.stderr)
        return EXIT_NO_BUILD
    if not config.manifests_dir.is_dir():
        shown = bf.store_url(config.manifests_dir) or config.manifests_dir
        print(f"verify: no manifests folder at {shown}: pass the build's --output folder or "
              "URL", file=sys.stderr)
        return EXIT_NO_BUILD
    problems = verify_build(config)
    for line in problems:
        print(line)
    if problems:
        print(f"verify: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_PROBLEMS
    print("verify: clean", file=sys.stderr)
    return EXIT_CLEAN


if __name__ == "__main__":
    sys.exit(main())
