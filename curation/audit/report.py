"""The auditor's view of an MFHQ build: one self-contained HTML file with counts, plots and
contact sheets, read from the build's manifests and shards.

    mfhq report --output BUILD_DIR [--out report.html] [--identities N]
                              [--identity ID ...] [--seed S] [--no-progress]

BUILD_DIR is the build's --output folder (it holds manifests/ and shards/). Images are embedded
as data: URIs and nothing is fetched from the network. The counts shown in the tables are also
embedded, machine-readable, in `<script type="application/json" id="counts">`.

Crops for the contact sheets are read from the shard tars with `tarfile` (members are read as
bytes, never extracted or unpickled). The identity section shows, for identities that lost clips
to another person (`identity_mismatch`), the kept crops beside the rejected faces, which no
shard holds: those are cut from the source videos named in the clips manifest (the frame and
box of the faces manifest), so they need the source files where the build read them.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import random
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from curation import build_folder as bf
from curation.audit import plots
from curation.errors import SetupError
from curation.quiet import terminal
from curation.records import FACE_REJECTIONS, Status
from mfhq_contract import IMAGES_PER_IDENTITY, JSON_EXT, image_ext

# Faces rejected before pose clustering; every other face row is a usable candidate.
REJECTED_FACE_REASONS = frozenset(r.value for r in FACE_REJECTIONS)
UNASSIGNED = "unassigned"          # split of clips rejected before planning
UNKNOWN = "unknown"                # a null source or reason
THUMB_JPEG_QUALITY = 85
MAX_MEMBER_BYTES = 32 * 1024 * 1024
FACE_COLUMNS = ["identity_id", "source", "clip_id", "face_size", "yaw", "pitch", "roll",
                "quality", "quality_model", "selected", "image_index", "reason", "split",
                "frame_index", "bbox", "identity_distance"]
MISMATCH_FACES_SHOWN = 8           # rejected faces cut from the source videos per identity


@dataclass
class ReportConfig:
    output: Path                          # the build's --output folder
    out: Path | None = None               # the HTML file (default: <output>/report.html)
    identities: int = 6                   # identities sampled for contact sheets
    identity: list[str] = field(default_factory=list)   # identities always shown
    seed: int = 0
    thumb_size: int = 128
    progress: bool = True

    @property
    def manifests_dir(self) -> Path:
        return self.output / "manifests"

    @property
    def shards_dir(self) -> Path:
        return self.output / "shards"

    @property
    def report_path(self) -> Path:
        return self.out if self.out is not None else self.output / "report.html"


@dataclass
class BuildTables:
    clips: pd.DataFrame
    faces: pd.DataFrame
    identities: pd.DataFrame
    shards: pd.DataFrame
    run: dict[str, Any]
    manifests_dir: Path | None = None     # for takedowns.parquet (identity section)


@dataclass
class SheetImage:
    index: int
    jpeg: bytes                           # the thumbnail
    width: int
    caption: dict[str, Any]               # yaw, pitch, roll, quality, quality_model, clip, source


@dataclass
class ContactSheet:
    identity_id: str
    requested: bool                       # named on the command line (not sampled)
    row: dict[str, Any] | None            # the identities-manifest row, None if unknown
    images: list[SheetImage] = field(default_factory=list)
    note: str | None = None               # why images are missing, if they are


# --- reading ------------------------------------------------------------------------------------

def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    """The iterable, wrapped in a tqdm bar on stderr when enabled."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=terminal())


def _row_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rows", file=terminal(),
                disable=not enabled)


def read_manifest(manifests_dir: Path, name: str, columns: list[str] | None = None,
                  progress: bool = False) -> pd.DataFrame:
    """One manifest table as a DataFrame, read in record batches (with a progress bar)."""
    if not progress:
        return bf.read_manifest(manifests_dir, name, columns)
    with _row_bar(0, f"reading {name}", True) as bar:
        def on_rows(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return bf.read_manifest(manifests_dir, name, columns, on_rows=on_rows)


def read_run_record(manifests_dir: Path) -> dict[str, Any]:
    path = manifests_dir / bf.RUN_FILE
    if not path.exists():
        return {}
    try:
        return bf.read_json(path)
    except (OSError, ValueError) as exc:
        return {"error": f"run.json unreadable: {exc}"}


def read_build(config: ReportConfig) -> BuildTables:
    bf.require_manifests(config)
    p = config.progress
    return BuildTables(
        clips=read_manifest(config.manifests_dir, "clips", progress=p),
        faces=read_manifest(config.manifests_dir, "faces", FACE_COLUMNS, progress=p),
        identities=read_manifest(config.manifests_dir, "identities", progress=p),
        shards=read_manifest(config.manifests_dir, "shards"),
        run=read_run_record(config.manifests_dir), manifests_dir=config.manifests_dir)


# --- counting -----------------------------------------------------------------------------------

def _labelled(frame: pd.DataFrame, column: str, missing: str) -> pd.Series:
    return frame[column].astype(object).where(frame[column].notna(), missing).astype(str)


def _nested_counts(keys: list[pd.Series]) -> dict:
    """{k0: {k1: ... n}} from parallel label series."""
    out: dict = {}
    if not len(keys[0]):
        return out
    for combo, n in pd.concat(keys, axis=1).value_counts(sort=False).sort_index().items():
        combo = combo if isinstance(combo, tuple) else (combo,)
        node = out
        for part in combo[:-1]:
            node = node.setdefault(str(part), {})
        node[str(combo[-1])] = int(n)
    return out


def candidate_mask(faces: pd.DataFrame) -> pd.Series:
    """Faces that passed detection, size, identity and landmark checks (usable candidates)."""
    return ~faces["reason"].isin(REJECTED_FACE_REASONS)


def clip_counts(clips: pd.DataFrame) -> dict:
    source, split = _labelled(clips, "source", UNKNOWN), _labelled(clips, "split", UNASSIGNED)
    bad = clips["status"] != Status.OK
    reason = _labelled(clips, "reason", UNKNOWN)
    read = _nested_counts([source, split])
    ok = _nested_counts([source[~bad], split[~bad]])
    not_ok = _nested_counts([source[bad], split[bad], reason[bad]])
    return {src: {spl: {"read": n, "ok": ok.get(src, {}).get(spl, 0),
                        "not_ok": not_ok.get(src, {}).get(spl, {})}
                  for spl, n in splits.items()} for src, splits in read.items()}


def identity_counts(identities: pd.DataFrame) -> dict:
    """Per source (an identity counts once for each source it came from) and split."""
    exploded = identities.explode("sources")
    source = _labelled(exploded, "sources", UNKNOWN)
    split = _labelled(exploded, "split", UNASSIGNED)
    kept = exploded["status"] == Status.KEPT
    reason = _labelled(exploded, "reason", UNKNOWN)
    all_ = _nested_counts([source, split])
    kept_n = _nested_counts([source[kept], split[kept]])
    dropped = _nested_counts([source[~kept], split[~kept], reason[~kept]])
    return {src: {spl: {"kept": kept_n.get(src, {}).get(spl, 0),
                        "dropped": dropped.get(src, {}).get(spl, {})}
                  for spl in splits} for src, splits in all_.items()}


def face_counts(faces: pd.DataFrame) -> dict:
    source, split = _labelled(faces, "source", UNKNOWN), _labelled(faces, "split", UNASSIGNED)
    cand, sel = candidate_mask(faces), faces["selected"].astype(bool)
    considered = _nested_counts([source, split])
    candidates = _nested_counts([source[cand], split[cand]])
    selected = _nested_counts([source[sel], split[sel]])
    return {src: {spl: {"considered": n, "candidates": candidates.get(src, {}).get(spl, 0),
                        "selected": selected.get(src, {}).get(spl, 0)}
                  for spl, n in splits.items()} for src, splits in considered.items()}


def quality_models(faces: pd.DataFrame, run: dict) -> dict[str, str]:
    """The quality model(s) that scored each source's faces (from the faces manifest)."""
    fallback = str(((run.get("models") or {}).get("quality") or {}).get("model") or UNKNOWN)
    scored = faces[faces["quality"].notna()]
    models = {}
    for source in sorted(set(faces["source"].dropna())):
        names = sorted(set(scored.loc[scored["source"] == source, "quality_model"].dropna()))
        models[str(source)] = ", ".join(map(str, names)) or fallback
    return models


def quality_summary(faces: pd.DataFrame, run: dict) -> dict:
    scored = faces[faces["quality"].notna()]
    selected = faces[faces["selected"].astype(bool)]
    models = quality_models(faces, run)
    summary = {}
    for source, model in models.items():
        cand_q = scored.loc[scored["source"] == source, "quality"]
        sel_q = selected.loc[selected["source"] == source, "quality"].dropna()
        summary[source] = {
            "model": model, "scored": int(len(cand_q)), "selected": int(len(sel_q)),
            "median_scored": _round(cand_q.median()) if len(cand_q) else None,
            "median_selected": _round(sel_q.median()) if len(sel_q) else None}
    return summary


def min_face_size(run: dict) -> float | None:
    value = ((run.get("arguments") or {}).get("analysis") or {}).get("min_face_size")
    return float(value) if isinstance(value, int | float) else None


def face_size_summary(faces: pd.DataFrame, run: dict) -> dict:
    sizes = faces["face_size"].dropna()
    limit = min_face_size(run)
    selected = faces.loc[faces["selected"].astype(bool), "face_size"].dropna()
    return {"min_face_size": limit, "with_size": int(len(sizes)),
            "below_min": int((sizes < limit).sum()) if limit is not None else None,
            "selected_smallest": _round(selected.min()) if len(selected) else None}


def _round(value: Any, digits: int = 4) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), digits)


def compute_counts(tables: BuildTables) -> dict:
    """Every number the report shows, as JSON-ready nested dicts."""
    faces, idents = tables.faces, tables.identities
    cand = faces[candidate_mask(faces)]
    sel = faces[faces["selected"].astype(bool)]
    kept = idents[idents["status"] == Status.KEPT]
    outcome = bf.outcome_counts(tables.clips, idents, faces)
    return {
        "clips": clip_counts(tables.clips),
        "identities": identity_counts(idents),
        "faces": face_counts(faces),
        "totals": {
            "clips_read": outcome["clips_read"], "clips_ok": outcome["clips_ok"],
            "identities": outcome["identities_planned"],
            "identities_kept": outcome["identities_kept"],
            "faces_considered": outcome["faces_considered"], "faces_candidates": int(len(cand)),
            "faces_selected": outcome["faces_selected"],
            "shards": int(len(tables.shards)),
            "shard_samples": int(tables.shards["samples"].sum()) if len(tables.shards) else 0,
        },
        "pose": {"candidates_with_pose": int(cand[["yaw", "pitch"]].notna().all(axis=1).sum()),
                 "selected_with_pose": int(sel[["yaw", "pitch"]].notna().all(axis=1).sum()),
                 "identities_with_spread": int(kept["yaw_std"].notna().sum())},
        "quality": quality_summary(faces, tables.run),
        "face_size": face_size_summary(faces, tables.run),
        "identity": identity_summary(tables),
    }


def identity_summary(tables: BuildTables) -> dict:
    """The identity checks in numbers: consistency of kept identities, people told apart,
    faces and clips rejected as another person, drops, duplicate groups and removals."""
    from curation.records import Reason

    faces, idents, clips = tables.faces, tables.identities, tables.clips
    kept = idents[idents["status"] == Status.KEPT]
    consistency = kept["identity_consistency"].dropna()
    grouped = kept[kept["duplicate_group"].notna()]
    groups = {str(g): sorted(map(str, rows["identity_id"]))
              for g, rows in grouped.groupby("duplicate_group")}
    return {
        "model": ((tables.run.get("models") or {}).get("identity") or {}).get("model"),
        "kept_with_consistency": int(len(consistency)),
        "consistency_median": _round(consistency.median()) if len(consistency) else None,
        "consistency_max": _round(consistency.max()) if len(consistency) else None,
        "identities_with_several_people": int((idents["n_persons"].fillna(0) > 1).sum()),
        "faces_identity_mismatch": int((faces["reason"] == Reason.IDENTITY_MISMATCH).sum()),
        "clips_identity_mismatch": int((clips["reason"] == Reason.IDENTITY_MISMATCH).sum()),
        "identities_no_dominant_person": int((idents["reason"]
                                              == Reason.NO_DOMINANT_PERSON).sum()),
        "duplicate_groups": groups,
        "duplicate_groups_across_splits": sorted(
            g for g, rows in grouped.groupby("duplicate_group") if rows["split"].nunique() > 1),
        "removed_as_duplicates_across_splits": removed_duplicates(tables),
    }


def removed_duplicates(tables: BuildTables) -> int:
    """Identities the cross-split pass removed (their record is salted: a count, no ids)."""
    from curation import takedowns
    from curation.records import Reason

    path = Path(tables.manifests_dir) / takedowns.TAKEDOWNS_FILE if tables.manifests_dir \
        else None
    if path is None or not path.exists():
        return 0
    record = takedowns.pq.read_table(path, columns=["id_kind", "reason"]).to_pandas()
    return int(((record["id_kind"] == "identity")
                & (record["reason"] == Reason.DUPLICATE_ACROSS_SPLITS)).sum())


# --- contact sheets -----------------------------------------------------------------------------

def choose_identities(identities: pd.DataFrame, n: int, seed: int,
                      named: list[str]) -> list[tuple[str, bool]]:
    """Named identities first (in the given order), then n kept ones sampled with the seed.

    Returns (identity_id, requested) pairs; the sample is a pure function of the seed and the
    sorted ids of kept identities, so two reports of one build show the same faces."""
    chosen = [(i, True) for i in dict.fromkeys(named)]
    kept = sorted(set(identities.loc[identities["status"] == Status.KEPT, "identity_id"])
                  - set(named))
    sample = random.Random(seed).sample(kept, min(max(n, 0), len(kept)))
    return chosen + [(i, False) for i in sorted(sample)]


def thumbnail_jpeg(data: bytes, size: int) -> tuple[bytes, int]:
    """Decode an image and re-encode it as a JPEG thumbnail whose longer side is at most
    `size`; returns the JPEG bytes and the thumbnail's width."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=THUMB_JPEG_QUALITY)
        return buffer.getvalue(), image.width


def read_sample_members(shard_path: Path, key: str) -> dict[str, bytes]:
    """The members of one sample in a shard tar, by extension (read as bytes only)."""
    prefix = f"{key}."
    return {m.name[len(prefix):]: m.data
            for m in bf.iter_tar(shard_path, wanted=lambda name: name.startswith(prefix),
                                 max_member_bytes=MAX_MEMBER_BYTES)
            if m.data is not None}


def _image_caption(record: dict) -> dict[str, Any]:
    return {k: record.get(k) for k in ("yaw", "pitch", "roll", "quality", "quality_model",
                                        "clip_id", "source", "frame_index")}


def load_contact_sheet(shards_dir: Path, identities: pd.DataFrame, identity_id: str,
                       requested: bool, thumb_size: int) -> ContactSheet:
    """An identity's selected crops (thumbnails) with their pose and quality, or a note why not."""
    rows = identities[identities["identity_id"] == identity_id]
    if not len(rows):
        return ContactSheet(identity_id, requested, None,
                            note="not in the identities manifest (unknown id or taken down)")
    row = rows.iloc[0].to_dict()
    sheet = ContactSheet(identity_id, requested, row)
    if row["status"] != Status.KEPT:
        sheet.note = f"dropped: {row.get('reason')} ({row.get('message') or 'no message'})"
        return sheet
    shard_path = shards_dir / str(row["shard"])
    try:
        members = read_sample_members(shard_path, str(row["key"]))
        record = json.loads(members[JSON_EXT]) if JSON_EXT in members else {}
        images = {int(im["index"]): im for im in record.get("images", [])
                  if isinstance(im, dict) and "index" in im}
        for index in range(IMAGES_PER_IDENTITY):
            if image_ext(index) not in members:
                continue
            jpeg, width = thumbnail_jpeg(members[image_ext(index)], thumb_size)
            sheet.images.append(SheetImage(index, jpeg, width,
                                           _image_caption(images.get(index, {}))))
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as exc:
        sheet.note = f"could not read {shard_path}: {type(exc).__name__}: {exc}"
        return sheet
    if len(sheet.images) != IMAGES_PER_IDENTITY and sheet.note is None:
        sheet.note = (f"{len(sheet.images)} of {IMAGES_PER_IDENTITY} crops found for key "
                      f"{row['key']} in {shard_path}")
    return sheet


def load_contact_sheets(config: ReportConfig, identities: pd.DataFrame) -> list[ContactSheet]:
    chosen = choose_identities(identities, config.identities, config.seed, config.identity)
    bar = _progress(chosen, len(chosen), "contact sheets", config.progress and bool(chosen))
    return [load_contact_sheet(config.shards_dir, identities, ident, requested,
                               config.thumb_size) for ident, requested in bar]


@dataclass
class MismatchSheet:
    """An identity that lost clips to another person: what was kept, what was rejected."""

    kept: ContactSheet
    rejected: list[SheetImage] = field(default_factory=list)
    note: str | None = None


def mismatch_identities(tables: BuildTables, limit: int) -> list[str]:
    from curation.records import Reason

    clips = tables.clips
    lost = clips[clips["reason"] == Reason.IDENTITY_MISMATCH]
    return sorted(set(lost["identity_id"].dropna()))[:max(limit, 0)]


def cut_rejected_faces(tables: BuildTables, identity_id: str, thumb_size: int
                       ) -> tuple[list[SheetImage], str | None]:
    """Up to MISMATCH_FACES_SHOWN `identity_mismatch` faces of an identity, cut from the source
    videos (frame and box from the faces manifest), spread over its rejected clips."""
    import numpy as np
    from PIL import Image

    from curation.faces.decoding import open_frames
    from curation.records import Reason

    faces = tables.faces
    rejected = faces[(faces["identity_id"] == identity_id)
                     & (faces["reason"] == Reason.IDENTITY_MISMATCH)].sort_values(
        ["clip_id", "frame_index"])
    if not len(rejected):
        return [], "no identity_mismatch face rows"
    step = max(1, len(rejected) // MISMATCH_FACES_SHOWN)
    chosen = rejected.iloc[::step].head(MISMATCH_FACES_SHOWN)
    clips = tables.clips.set_index(["source", "clip_id"])
    images: list[SheetImage] = []
    problems: list[str] = []
    for index, row in enumerate(chosen.itertuples(index=False)):
        try:
            clip = clips.loc[(row.source, row.clip_id)]
            clip = clip.iloc[0] if isinstance(clip, pd.DataFrame) else clip
            with open_frames(clip["video_path"]) as source:
                frame = source.read([int(row.frame_index)])[0]
            x0, y0, x1, y1 = (float(v) for v in row.bbox)
            pad = 0.25 * max(x1 - x0, y1 - y0)
            h, w = frame.shape[:2]
            box = (max(0, int(x0 - pad)), max(0, int(y0 - pad)), min(w, int(x1 + pad)),
                   min(h, int(y1 + pad)))
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(frame[box[1]:box[3], box[0]:box[2]])).save(
                buffer, format="PNG")
            jpeg, width = thumbnail_jpeg(buffer.getvalue(), thumb_size)
            images.append(SheetImage(index, jpeg, width, {
                "clip_id": row.clip_id, "source": row.source, "frame_index": row.frame_index,
                "identity_distance": _round(row.identity_distance, 3)}))
        except Exception as exc:  # noqa: BLE001 - a moved video loses a picture, not the report
            problems.append(f"{row.clip_id}: {type(exc).__name__}: {exc}")
    note = None
    if problems:
        note = (f"{len(problems)} rejected face(s) could not be cut from their source videos "
                f"(moved or unreadable): {problems[0]}")
    return images, note


def load_mismatch_sheets(config: ReportConfig, tables: BuildTables) -> list[MismatchSheet]:
    sheets = []
    for identity_id in mismatch_identities(tables, config.identities):
        kept = load_contact_sheet(config.shards_dir, tables.identities, identity_id, False,
                                  config.thumb_size)
        rejected, note = cut_rejected_faces(tables, identity_id, config.thumb_size)
        sheets.append(MismatchSheet(kept, rejected, note))
    return sheets


def sheets_summary(sheets: list[ContactSheet]) -> list[dict]:
    return [{"identity_id": s.identity_id, "requested": s.requested,
             "status": (s.row or {}).get("status"), "note": s.note,
             "images": [{"index": im.index, **im.caption} for im in s.images]} for s in sheets]


# --- HTML ---------------------------------------------------------------------------------------

CSS = """
body { font-family: sans-serif; margin: 20px; color: #222; max-width: 1240px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #ddd; padding-top: 12px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
tr.total td { font-weight: bold; background: #fafafa; }
.muted { color: #666; font-size: 13px; } .note { color: #a61e4d; }
img.plot { max-width: 100%; border: 1px solid #eee; }
.sheet { border: 1px solid #ddd; padding: 8px; margin: 12px 0; }
.crops { display: flex; flex-wrap: wrap; gap: 6px; }
figure { margin: 0; font-size: 11px; text-align: center; width: 136px;
         overflow-wrap: anywhere; }
figure img { display: block; margin: 0 auto 2px; }
nav a { margin-right: 14px; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def json_script(element_id: str, payload: Any) -> str:
    """A JSON data block that cannot close its script element early."""
    text = json.dumps(payload, sort_keys=True, indent=1, allow_nan=False, default=str)
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


def _table(header: list[str], rows: list[list[Any]], left: int = 2,
           total: list[Any] | None = None) -> str:
    def cells(values: list[Any], tag: str) -> str:
        return "".join(f'<{tag}{" class=l" if i < left else ""}>{esc(v)}</{tag}>'
                       for i, v in enumerate(values))
    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    if total is not None:
        body += f'<tr class="total">{cells(total, "td")}</tr>'
    return f"<table><tr>{cells(header, 'th')}</tr>{body}</table>"


def _by_source_split(nested: dict) -> list[tuple[str, str, dict]]:
    return [(src, spl, v) for src, splits in sorted(nested.items())
            for spl, v in sorted(splits.items())]


def clips_table(counts: dict) -> str:
    rows_in = _by_source_split(counts["clips"])
    reasons = sorted({r for *_, v in rows_in for r in v["not_ok"]})
    rows = [[src, spl, v["read"], v["ok"], *(v["not_ok"].get(r, 0) for r in reasons)]
            for src, spl, v in rows_in]
    total = ["total", "", *(sum(r[i] for r in rows) for i in range(2, 4 + len(reasons)))]
    return _table(["source", "split", "clips read", "ok", *(f"not ok: {r}" for r in reasons)],
                  rows, total=total)


def identities_table(counts: dict) -> str:
    rows_in = _by_source_split(counts["identities"])
    reasons = sorted({r for *_, v in rows_in for r in v["dropped"]})
    rows = [[src, spl, v["kept"], sum(v["dropped"].values()),
             *(v["dropped"].get(r, 0) for r in reasons)] for src, spl, v in rows_in]
    return _table(["source", "split", "kept", "dropped", *(f"dropped: {r}" for r in reasons)],
                  rows)


def faces_table(counts: dict) -> str:
    rows = [[src, spl, v["considered"], v["candidates"], v["selected"]]
            for src, spl, v in _by_source_split(counts["faces"])]
    total = ["total", "", *(sum(r[i] for r in rows) for i in range(2, 5))]
    return _table(["source", "split", "faces considered", "candidates", "selected"], rows,
                  total=total)


def quality_table(counts: dict) -> str:
    rows = [[src, v["model"], v["scored"], v["selected"], _fmt(v["median_scored"]),
             _fmt(v["median_selected"])] for src, v in sorted(counts["quality"].items())]
    return _table(["source", "model", "scored candidates", "selected", "median scored",
                   "median selected"], rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _plot(png: bytes, alt: str) -> str:
    return f'<img class="plot" alt="{esc(alt)}" src="{data_uri(png, "image/png")}">'


def _listed(value: Any) -> list:
    return [] if value is None else list(value)


def sheet_html(sheet: ContactSheet) -> str:
    row = sheet.row or {}
    # list columns come back from Parquet as arrays: never test them for truth
    sources = ", ".join(map(str, _listed(row.get("sources")))) or "-"
    videos = ", ".join(map(str, _listed(row.get("source_video_ids")))) or "-"
    tag = " (named on the command line)" if sheet.requested else ""
    head = (f"<h3>{esc(sheet.identity_id)}{esc(tag)}</h3>"
            f'<div class="muted">split <b>{esc(row.get("split", "-"))}</b> &middot; sources '
            f"{esc(sources)} &middot; source ids {esc(videos)} &middot; key "
            f"{esc(row.get('key', '-'))} &middot; shard {esc(row.get('shard', '-'))}</div>")
    figures = []
    for im in sheet.images:
        c = im.caption
        figures.append(
            f'<figure><img alt="{esc(sheet.identity_id)} crop {im.index}" '
            f'width="{im.width}" src="{data_uri(im.jpeg, "image/jpeg")}"><figcaption>'
            f"#{im.index} yaw {_deg(c.get('yaw'))} pitch {_deg(c.get('pitch'))} "
            f"roll {_deg(c.get('roll'))}<br>q {esc(_fmt(_round(c.get('quality'), 3)))} "
            f"({esc(c.get('quality_model'))})<br>{esc(c.get('source'))} "
            f"{esc(c.get('clip_id'))}</figcaption></figure>")
    note = f'<p class="note">{esc(sheet.note)}</p>' if sheet.note else ""
    return f'<div class="sheet">{head}{note}<div class="crops">{"".join(figures)}</div></div>'


def mismatch_html(sheet: MismatchSheet) -> str:
    """The kept crops (from the shard) above the rejected faces (cut from the source videos)."""
    figures = []
    for im in sheet.rejected:
        c = im.caption
        figures.append(
            f'<figure><img alt="{esc(sheet.kept.identity_id)} rejected face {im.index}" '
            f'width="{im.width}" src="{data_uri(im.jpeg, "image/jpeg")}"><figcaption>'
            f"{esc(c.get('source'))} {esc(c.get('clip_id'))} frame {esc(c.get('frame_index'))}"
            f"<br>distance {esc(_fmt(c.get('identity_distance')))}</figcaption></figure>")
    note = f'<p class="note">{esc(sheet.note)}</p>' if sheet.note else ""
    return (f"{sheet_html(sheet.kept)}<div class=sheet><b>rejected as identity_mismatch</b> "
            f'(cut from the source videos){note}<div class="crops">{"".join(figures)}</div>'
            "</div>")


def identity_html(counts: dict, kept: pd.DataFrame, mismatches: list[MismatchSheet]) -> str:
    ident = counts["identity"]
    groups = ident["duplicate_groups"]
    across = set(ident["duplicate_groups_across_splits"])
    rows = [[g, len(members), ", ".join(members), "yes" if g in across else "no"]
            for g, members in sorted(groups.items())]
    summary = _table(["figure", "value"], [[k, v] for k, v in ident.items()
                                           if not isinstance(v, dict | list)], left=1)
    return (f"<p>Identity model: <b>{esc(ident['model'] or '-')}</b>. An identity is a source "
            "id; its faces are grouped into people by their embeddings, the dominant person is "
            "kept, others are rejected as identity_mismatch. Consistency: the largest cosine "
            "distance of a kept identity's embedded faces to their mean.</p>"
            f"{summary}{_plot(plots.consistency_png(kept), 'identity consistency')}"
            f"<h3>Identities that lost clips to identity_mismatch ({len(mismatches)})</h3>"
            + "".join(mismatch_html(m) for m in mismatches)
            + f"<h3>Duplicate groups ({len(groups)}; across splits: {len(across)}; removed "
            f"from their minority split: {ident['removed_as_duplicates_across_splits']})</h3>"
            + _table(["group", "identities", "members", "across splits"], rows, left=3))


def _deg(value: Any) -> str:
    return "-" if value is None else f"{float(value):+.0f}&deg;"


def run_html(run: dict) -> str:
    if not run:
        return '<p class="note">run.json not found: the build has not finished.</p>'
    if "error" in run and len(run) == 1:
        return f'<p class="note">{esc(run["error"])}</p>'
    parts = [_table(["field", "value"], [[k, run.get(k)] for k in
                                         ("config_hash", "plan_fingerprint", "finished_at")],
                    left=1)]
    arguments = run.get("arguments") or {}
    parts.append("<h3>Configuration</h3>" + _table(
        ["argument", "value"], [[k, json.dumps(v, default=str)] for k, v in
                                sorted(arguments.items())], left=2))
    models = run.get("models") or {}
    parts.append("<h3>Model files</h3>" + _table(
        ["model", "field", "value"], [[name, k, v] for name, info in sorted(models.items())
                                      for k, v in sorted((info or {}).items())], left=3))
    packages = run.get("packages") or {}
    parts.append("<h3>Versions</h3>" + _table(["package", "version"],
                                              sorted(packages.items()), left=2))
    parts.append("<h3>Shards and timings</h3><pre>" + esc(json.dumps(
        {"shards": run.get("shards"), "timings_s": run.get("timings_s"),
         "argv": run.get("argv")}, indent=1, default=str)) + "</pre>")
    return "".join(parts)


SECTIONS = (("counts", "Counts"), ("pose", "Head pose"), ("quality", "Quality"),
            ("size", "Face size"), ("identity", "Identity"), ("sheets", "Contact sheets"),
            ("run", "Run"))


def render_html(config: ReportConfig, tables: BuildTables, counts: dict,
                sheets: list[ContactSheet], mismatches: list[MismatchSheet] | None = None
                ) -> str:
    faces = tables.faces
    cand = faces[candidate_mask(faces)]
    sel = faces[faces["selected"].astype(bool)]
    kept = tables.identities[tables.identities["status"] == Status.KEPT]
    models = {s: v["model"] for s, v in counts["quality"].items()}
    totals = counts["totals"]
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in SECTIONS)
    min_size = counts["face_size"]["min_face_size"]
    body = [
        f"<h1>MFHQ build report</h1><div class=muted>{esc(config.output)} &middot; finished "
        f"{esc(tables.run.get('finished_at', '-'))} &middot; config "
        f"{esc(tables.run.get('config_hash', '-'))}</div><nav>{nav}</nav>",
        f'<h2 id="counts">Counts</h2><p>{totals["clips_read"]} clips read '
        f'({totals["clips_ok"]} ok); {totals["identities"]} identities planned, '
        f'{totals["identities_kept"]} kept; {totals["faces_considered"]} faces considered, '
        f'{totals["faces_candidates"]} candidates, {totals["faces_selected"]} selected; '
        f'{totals["shards"]} shards with {totals["shard_samples"]} samples.</p>'
        f'<p class=muted>Split "{UNASSIGNED}": clips rejected while enumerating, before '
        f"identities were assigned to a split. Candidates are faces not rejected as "
        f"{', '.join(sorted(REJECTED_FACE_REASONS))}.</p>"
        f"<h3>Clips</h3>{clips_table(counts)}"
        f"<h3>Identities</h3><p class=muted>An identity with clips from several sources counts "
        f"once for each.</p>{identities_table(counts)}"
        f"<h3>Faces</h3>{faces_table(counts)}",
        f'<h2 id="pose">Head pose</h2>'
        f"{_plot(plots.pose_coverage_png(cand, sel), 'yaw/pitch histograms and roll')}"
        f"{_plot(plots.pose_spread_png(kept), 'per-identity pose spread')}",
        f'<h2 id="quality">Quality</h2>{quality_table(counts)}'
        f"{_plot(plots.quality_png(faces[faces['quality'].notna()], sel, models), 'quality')}",
        f'<h2 id="size">Face size</h2><p>Minimum face size of this build: '
        f'{esc("-" if min_size is None else f"{min_size:g}")} px; {esc(_fmt(counts["face_size"]["below_min"]))} considered '
        f"faces below it.</p>{_plot(plots.face_size_png(faces, sel, min_size), 'face size')}",
        f'<h2 id="identity">Identity</h2>{identity_html(counts, kept, mismatches or [])}',
        f'<h2 id="sheets">Contact sheets</h2><p class=muted>{len(sheets)} identities: named '
        f"ones, then a sample of kept identities drawn with seed {config.seed}.</p>"
        + "".join(sheet_html(s) for s in sheets),
        f'<h2 id="run">Run</h2>{run_html(tables.run)}',
        json_script("counts", counts),
        json_script("contact-sheets", sheets_summary(sheets)),
    ]
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<title>MFHQ build report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")


# --- entry points -------------------------------------------------------------------------------

def write_report(config: ReportConfig) -> Path:
    """Read the build, write the HTML report, return its path."""
    tables = read_build(config)
    counts = compute_counts(tables)
    sheets = load_contact_sheets(config, tables.identities)
    page = render_html(config, tables, counts, sheets, load_mismatch_sheets(config, tables))
    path = config.report_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def build_parser(prog: str = "mfhq report") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write a self-contained HTML audit report of an MFHQ build.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", required=True, type=Path,
                        help="the build's --output folder (holds manifests/ and shards/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="HTML file to write (default: OUTPUT/report.html)")
    parser.add_argument("--identities", type=int, default=6,
                        help="kept identities sampled for contact sheets")
    parser.add_argument("--identity", action="append", default=[], metavar="ID",
                        help="an identity id to always show (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the identity sample")
    parser.add_argument("--thumb-size", type=int, default=128, help="thumbnail size in px")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    return parser


def parse_args(argv: list[str] | None = None, prog: str = "mfhq report") -> ReportConfig:
    ns = build_parser(prog).parse_args(argv)
    if ns.identities < 0 or ns.thumb_size < 16:
        build_parser(prog).error("--identities must be >= 0 and --thumb-size >= 16")
    return ReportConfig(output=ns.output.resolve(), out=ns.out, identities=ns.identities,
                        identity=list(ns.identity), seed=ns.seed, thumb_size=ns.thumb_size,
                        progress=ns.progress)


def main(argv: list[str] | None = None, prog: str = "mfhq report") -> int:
    config = parse_args(argv, prog)
    try:
        path = write_report(config)
    except (SetupError, FileNotFoundError) as exc:    # no build there: say so, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
