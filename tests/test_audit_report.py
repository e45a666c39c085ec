"""The audit report of the demo build: renders in headless Chromium, every image decodes, no
reference leaves the page, and its numbers equal pandas computations on the manifests."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curation import build_folder, manifests
from curation.audit.report import ReportConfig, choose_identities, main, write_report
from curation.records import FACE_REJECTIONS

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
MISSING_CHROMIUM = ("chromium is not installed: install Debian's `chromium` package "
                    "(scripts/setup_env.sh does; or `apt-get install -y chromium`)")
UNKNOWN_ID = "nobody:not-in-this-build"
MAX_REPORT_BYTES = 5 * 1024 * 1024


def chromium_binary() -> str:
    """Chromium's path; fails under CI=true and skips elsewhere when it is missing."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(MISSING_CHROMIUM)
        pytest.skip(MISSING_CHROMIUM)
    return binary


def run_chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           *args], capture_output=True, text=True, timeout=180, check=False)


class _Refs(HTMLParser):
    """Every src/href/srcset/action attribute, every element id, and the JSON data blocks."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.alts: list[str] = []
        self.json: dict[str, object] = {}
        self._json_id: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for name in ("src", "href", "srcset", "action", "poster", "data"):
            if attrs.get(name) is not None:
                self.refs.append((tag, name, attrs[name]))
        if tag == "img":
            self.images.append(attrs.get("src") or "")
            self.alts.append(attrs.get("alt") or "")
        if tag == "script" and attrs.get("type") == "application/json":
            self._json_id = attrs.get("id")

    def handle_data(self, data):
        if self._json_id is not None:
            self.json[self._json_id] = json.loads(data)
            self._json_id = None


@pytest.fixture(scope="module")
def report(demo_build, tmp_path_factory):
    """The demo build's report with one dropped and one unknown identity named, parsed."""
    idents = build_folder.read_manifest(demo_build.manifests_dir, "identities")
    dropped = sorted(idents.loc[idents["status"] != "kept", "identity_id"])
    named = dropped[:1] + [UNKNOWN_ID]
    out = tmp_path_factory.mktemp("report") / "report.html"
    argv = ["--output", str(demo_build.paths.output), "--out", str(out), "--identities", "4",
            "--no-progress"]
    for identity in named:
        argv += ["--identity", identity]
    assert main(argv) == 0
    parser = _Refs()
    text = out.read_text(encoding="utf-8")
    parser.feed(text)
    return {"path": out, "html": text, "parsed": parser, "named": named, "build": demo_build}


def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    result = run_chromium([f"--screenshot={shot}", "--window-size=1280,4000",
                           report["path"].as_uri()], tmp_path)
    assert shot.exists(), result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the screenshot is (nearly) blank"


def test_every_image_decodes_in_chromium_and_in_pil(report, tmp_path):
    # The browser's view: a copy of the page with a probe that lists images that did not load.
    probe = ("<script>window.addEventListener('load', () => { const bad = [...document.images]"
             ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);"
             "document.body.setAttribute('data-broken', JSON.stringify(bad));"
             "document.body.setAttribute('data-images', String(document.images.length)); });"
             "</script>")
    probed = tmp_path / "probed.html"
    probed.write_text(report["html"].replace("</body>", probe + "</body>"), encoding="utf-8")
    result = run_chromium(["--dump-dom", "--virtual-time-budget=10000", probed.as_uri()],
                          tmp_path)
    images = re.search(r'data-images="(\d+)"', result.stdout)
    broken = re.search(r'data-broken="([^"]*)"', result.stdout)
    assert images and broken, f"probe did not run: {result.stderr[-2000:]}"
    assert int(images.group(1)) == len(report["parsed"].images)
    assert json.loads(broken.group(1).replace("&quot;", '"')) == []
    # Pillow's view: every embedded image is a complete PNG or JPEG.
    plots = sheets = crops = 0
    for src, alt in zip(report["parsed"].images, report["parsed"].alts, strict=True):
        match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", src)
        assert match, src[:80]
        with Image.open(io.BytesIO(base64.b64decode(match.group(2), validate=True))) as image:
            assert image.format.lower() == match.group(1)
            image.load()
        plots += match.group(1) == "png"
        sheets += match.group(1) == "jpeg"
        if match.group(1) == "jpeg":     # a kept crop, or a face rejected as identity_mismatch
            assert re.search(r" (crop|rejected face) \d+$", alt), alt
            crops += " crop " in alt
    assert plots == 5       # pose coverage, pose spread, quality, face size, identity consistency
    kept_sheets = [s for s in report["parsed"].json["contact-sheets"] if s["status"] == "kept"]
    # 8 crops per kept contact sheet, and 8 per kept identity shown beside its rejected faces
    assert crops >= 8 * len(kept_sheets) > 0 and crops % 8 == 0
    assert sheets > crops


def test_no_reference_leaves_the_page(report):
    parsed = report["parsed"]
    assert parsed.refs, "expected images and in-page links"
    for tag, name, value in parsed.refs:
        if value.startswith("#"):
            assert value[1:] in parsed.ids, f"<{tag} {name}> points to a missing anchor {value}"
        else:
            assert value.startswith("data:"), f"<{tag} {name}> points outside: {value[:80]}"
    assert not re.search(r"url\(\s*['\"]?(?!data:)", report["html"]), "CSS url() outside"
    assert "<link" not in report["html"] and "@import" not in report["html"]


def test_report_size_is_reasonable(report):
    assert report["path"].stat().st_size < MAX_REPORT_BYTES


def _read(manifests_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(manifests_dir / name)


def _per_source_split(frame: pd.DataFrame, source_col: str = "source") -> pd.DataFrame:
    return frame.assign(src=frame[source_col].fillna("unknown"),
                        spl=frame["split"].fillna("unassigned"))


def test_counts_equal_pandas_on_the_manifests(report):
    counts = report["parsed"].json["counts"]
    mdir = report["build"].manifests_dir
    clips = _per_source_split(_read(mdir, "clips"))
    for (src, spl), group in clips.groupby(["src", "spl"]):
        entry = counts["clips"][src][spl]
        bad = group[group["status"] != "ok"]
        assert entry["read"] == len(group)
        assert entry["ok"] == int((group["status"] == "ok").sum())
        assert entry["not_ok"] == bad["reason"].fillna("unknown").value_counts().to_dict()
    assert sum(v["read"] for s in counts["clips"].values() for v in s.values()) == len(clips)

    raw = _read(mdir, "clips")
    by_codec = raw.assign(codec=raw["codec"].fillna("unknown"),
                          decoder=raw["decoder"].fillna("unknown"))
    for (codec, decoder), group in by_codec.groupby(["codec", "decoder"]):
        assert counts["codecs"][codec][decoder] == {
            "read": len(group), "ok": int((group["status"] == "ok").sum())}
    assert "h264" in counts["codecs"]     # the demo corpus's videos
    assert "Clips per codec" in report["html"]

    idents = _read(mdir, "identities")
    exploded = _per_source_split(idents.explode("sources"), "sources")
    for (src, spl), group in exploded.groupby(["src", "spl"]):
        entry = counts["identities"][src][spl]
        assert entry["kept"] == int((group["status"] == "kept").sum())
        dropped = group[group["status"] != "kept"]
        assert entry["dropped"] == dropped["reason"].fillna("unknown").value_counts().to_dict()
    assert sum(len(s) for s in counts["identities"].values()) == \
        exploded.groupby(["src", "spl"]).ngroups

    faces = _per_source_split(_read(mdir, "faces"))
    rejected = {reason.value for reason in FACE_REJECTIONS}
    for (src, spl), group in faces.groupby(["src", "spl"]):
        assert counts["faces"][src][spl] == {
            "considered": len(group), "candidates": int((~group["reason"].isin(rejected)).sum()),
            "selected": int(group["selected"].sum())}

    totals = counts["totals"]
    assert totals["clips_read"] == len(clips) and totals["faces_considered"] == len(faces)
    assert totals["faces_selected"] == int(faces["selected"].sum()) == 8 * int(
        (idents["status"] == "kept").sum())
    assert totals["identities_kept"] == int((idents["status"] == "kept").sum())
    assert totals["shard_samples"] == int(pd.read_parquet(mdir / "shards.parquet")["samples"].sum())

    run = json.loads((mdir / "run.json").read_text())
    assert totals["faces_selected"] == run["counts"]["faces_selected"]
    limit = run["arguments"]["analysis"]["min_face_size"]
    assert counts["face_size"]["min_face_size"] == limit
    assert counts["face_size"]["below_min"] == int((faces["face_size"] < limit).sum())

    scored = faces[faces["quality"].notna()]
    for src, entry in counts["quality"].items():
        mine = scored[scored["source"] == src]
        assert entry["scored"] == len(mine)
        assert entry["model"] == ", ".join(sorted(mine["quality_model"].unique())) == "piqe"
        if len(mine):
            assert entry["median_scored"] == pytest.approx(mine["quality"].median(), abs=1e-4)


def test_contact_sheets_show_the_selected_faces(report):
    sheets = report["parsed"].json["contact-sheets"]
    mdir = report["build"].manifests_dir
    idents = _read(mdir, "identities")
    faces = _read(mdir, "faces")
    expected = choose_identities(idents, 4, 0, report["named"])
    assert [(s["identity_id"], s["requested"]) for s in sheets] == expected
    by_id = {s["identity_id"]: s for s in sheets}
    assert by_id[UNKNOWN_ID]["images"] == [] and "not in the identities" in by_id[UNKNOWN_ID]["note"]
    for name in report["named"][:-1]:
        assert by_id[name]["images"] == [] and by_id[name]["note"].startswith("dropped:")
    kept = [s for s in sheets if s["status"] == "kept"]
    assert len(kept) == 4
    for sheet in kept:
        assert sheet["note"] is None
        chosen = faces[(faces["identity_id"] == sheet["identity_id"]) & faces["selected"]]
        chosen = chosen.set_index("image_index").sort_index()
        assert [im["index"] for im in sheet["images"]] == list(range(8)) == list(chosen.index)
        for im in sheet["images"]:
            row = chosen.loc[im["index"]]
            assert im["clip_id"] == row["clip_id"] and im["source"] == row["source"]
            for key in ("yaw", "pitch", "roll", "quality"):
                assert im[key] == pytest.approx(row[key], abs=1e-3), key
        assert f"<h3>{html.escape(sheet['identity_id'])}</h3>" in report["html"]


def test_identity_sample_is_seeded():
    idents = pd.DataFrame({"identity_id": [f"id{i}" for i in range(20)],
                           "status": ["kept"] * 15 + ["dropped"] * 5})
    first = choose_identities(idents, 5, seed=3, named=["id17"])
    assert first == choose_identities(idents, 5, seed=3, named=["id17"])
    assert first[0] == ("id17", True) and len(first) == 6
    assert all(i.startswith("id") and int(i[2:]) < 15 for i, req in first[1:])
    assert first != choose_identities(idents, 5, seed=4, named=["id17"])


def test_report_of_a_build_that_never_finished(tmp_path):
    """Only the enumeration part and no run.json: the report still renders and says so."""
    mdir = tmp_path / "build" / "manifests"
    rows = [{"source": "vfhq", "clip_id": "c<script>", "status": "skipped",
             "reason": "video_missing", "stage": "enumeration"}]
    build_folder.write_parquet_atomic(manifests.to_table("clips", rows),
                                 mdir / "clips" / manifests.ENUMERATION_PART)
    path = write_report(ReportConfig(output=tmp_path / "build", progress=False))
    parser = _Refs()
    text = path.read_text(encoding="utf-8")
    parser.feed(text)
    counts = parser.json["counts"]
    assert counts["clips"] == {"vfhq": {"unassigned": {"read": 1, "ok": 0,
                                                        "not_ok": {"video_missing": 1}}}}
    assert counts["totals"]["faces_considered"] == 0 and parser.json["contact-sheets"] == []
    assert "run.json not found" in text and "<script>" not in text.replace(
        '<script type="application/json"', "")


def test_missing_build_folder_is_one_clear_error(tmp_path, capsys):
    assert main(["--output", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "pass the build's --output folder" in capsys.readouterr().err
