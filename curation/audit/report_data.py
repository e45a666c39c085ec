"""The report's data: the build's tables read once, and every count, summary and choice the
report shows, as plain dicts and DataFrames (no HTML, no images).

`read_build(config)` -> `BuildTables`; `compute_counts(tables)` -> the nested counts that the
HTML tables show and embed as JSON; `identity_summary`, `choose_identities` pick what to show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from curation import build_folder as bf
from curation.records import FACE_REJECTIONS, Status

# Faces rejected before pose clustering; every other face row is a usable candidate.
REJECTED_FACE_REASONS = frozenset(r.value for r in FACE_REJECTIONS)
UNASSIGNED = "unassigned"          # split of clips rejected before planning
UNKNOWN = "unknown"                # a null source or reason
FACE_COLUMNS = ["identity_id", "source", "clip_id", "face_size", "yaw", "pitch", "roll",
                "quality", "quality_model", "selected", "image_index", "reason", "split",
                "frame_index", "bbox", "identity_distance"]


@dataclass
class ReportConfig(bf.BuildFolders):
    output: str | Path                    # the build's --output folder or store URL
    out: Path | None = None               # the HTML file (default: <output>/report.html)
    identities: int = 6                   # identities sampled for contact sheets
    identity: list[str] = field(default_factory=list)   # identities always shown
    seed: int = 0
    thumb_size: int = 128
    progress: bool = True

    @property
    def report_path(self) -> Path:
        if self.out is not None:
            return self.out
        # a build on a store: the report is written here, not into the node's mirror
        return Path("report.html") if self.on_store else self.output_root / "report.html"


@dataclass
class BuildTables:
    clips: pd.DataFrame
    faces: pd.DataFrame
    identities: pd.DataFrame
    shards: pd.DataFrame
    run: dict[str, Any]
    manifests_dir: Path | None = None     # for takedowns.parquet (identity section)


# --- reading ------------------------------------------------------------------------------------

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
    # No progress bars here: reading the manifests takes well under a second at demo size and
    # seconds at MFHQ's; the contact sheets, which read shards and source videos, have one.
    return BuildTables(
        clips=bf.read_manifest(config.manifests_dir, "clips"),
        faces=bf.read_manifest(config.manifests_dir, "faces", FACE_COLUMNS),
        identities=bf.read_manifest(config.manifests_dir, "identities"),
        shards=bf.read_manifest(config.manifests_dir, "shards"),
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


def codec_counts(clips: pd.DataFrame) -> dict:
    """Clips per video codec and the decoder that read them, with their outcomes (YouTube's
    downloads mix H.264, VP9 and AV1: a codec that loses clips shows here). Clips rejected
    before they were opened have no codec (`unknown`)."""
    if "codec" not in clips.columns:      # a build from before the codec columns
        return {}
    codec = _labelled(clips, "codec", UNKNOWN)
    decoder = _labelled(clips, "decoder", UNKNOWN)
    ok = clips["status"] == Status.OK
    read = _nested_counts([codec, decoder])
    good = _nested_counts([codec[ok], decoder[ok]])
    return {c: {d: {"read": n, "ok": good.get(c, {}).get(d, 0)} for d, n in by.items()}
            for c, by in read.items()}


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
            "median_scored": round_or_none(cand_q.median()) if len(cand_q) else None,
            "median_selected": round_or_none(sel_q.median()) if len(sel_q) else None}
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
            "selected_smallest": round_or_none(selected.min()) if len(selected) else None}


def round_or_none(value: Any, digits: int = 4) -> float | None:
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
        "codecs": codec_counts(tables.clips),
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
        "consistency_median": round_or_none(consistency.median()) if len(consistency) else None,
        "consistency_max": round_or_none(consistency.max()) if len(consistency) else None,
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
