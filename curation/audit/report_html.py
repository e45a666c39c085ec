"""The report's HTML: one self-contained page (images as data: URIs, nothing fetched) from the
counts of `report_data` and the sheets of `report_sheets`; the counts are also embedded,
machine-readable, in `<script type="application/json" id="counts">`.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import pandas as pd

from curation.audit import plots
from curation.audit.report_data import (
    REJECTED_FACE_REASONS,
    UNASSIGNED,
    BuildTables,
    ReportConfig,
    candidate_mask,
    round_or_none,
)
from curation.audit.report_sheets import ContactSheet, MismatchSheet, sheets_summary
from curation.records import Status

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


def codecs_table(counts: dict) -> str:
    rows = [[codec, decoder, v["read"], v["ok"]]
            for codec, by in sorted(counts["codecs"].items()) for decoder, v in sorted(by.items())]
    return _table(["codec", "decoder", "clips read", "ok"], rows)


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
        figures.append(_figure(
            f"{sheet.identity_id} crop {im.index}", im,
            f"#{im.index} yaw {_deg(c.get('yaw'))} pitch {_deg(c.get('pitch'))} "
            f"roll {_deg(c.get('roll'))}<br>q {esc(_fmt(round_or_none(c.get('quality'), 3)))} "
            f"({esc(c.get('quality_model'))})<br>{esc(c.get('source'))} "
            f"{esc(c.get('clip_id'))}"))
    note = f'<p class="note">{esc(sheet.note)}</p>' if sheet.note else ""
    return f'<div class="sheet">{head}{note}<div class="crops">{"".join(figures)}</div></div>'


def _figure(alt: str, image, caption_html: str) -> str:
    """One thumbnail with its caption (`caption_html` is escaped already)."""
    return (f'<figure><img alt="{esc(alt)}" width="{image.width}" '
            f'src="{data_uri(image.jpeg, "image/jpeg")}"><figcaption>{caption_html}'
            "</figcaption></figure>")


def mismatch_html(sheet: MismatchSheet) -> str:
    """The kept crops (from the shard) above the rejected faces (cut from the source videos)."""
    figures = []
    for im in sheet.rejected:
        c = im.caption
        figures.append(_figure(
            f"{sheet.kept.identity_id} rejected face {im.index}", im,
            f"{esc(c.get('source'))} {esc(c.get('clip_id'))} frame {esc(c.get('frame_index'))}"
            f"<br>distance {esc(_fmt(c.get('identity_distance')))}"))
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
        f"<h3>Clips per codec</h3>{codecs_table(counts)}"
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
