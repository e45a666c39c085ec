"""The identity checks in the audit tools on the demo build: the report's Identity section
(numbers equal to pandas on the manifests, rejected faces cut from the source videos beside the
kept crops, duplicate groups) and `verify` catching an edited embedding or a split-spanning
duplicate group."""

from __future__ import annotations

import html
import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation import build_folder, manifests
from curation.audit.report import main as report_main
from curation.audit.verify import VerifyConfig, verify_build
from curation.records import Reason


@pytest.fixture(scope="module")
def identity_report(demo_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert report_main(["--output", str(demo_build.paths.output), "--out", str(out),
                        "--identities", "2", "--no-progress"]) == 0
    text = out.read_text(encoding="utf-8")
    counts = json.loads(html.unescape(re.search(
        r'<script type="application/json" id="counts">(.*?)</script>', text, re.S).group(1)))
    return text, counts["identity"]


def test_the_identity_section_counts_equal_the_manifests(identity_report, demo_build):
    _, figures = identity_report
    clips = build_folder.read_manifest(demo_build.manifests_dir, "clips")
    faces = build_folder.read_manifest(demo_build.manifests_dir, "faces")
    idents = build_folder.read_manifest(demo_build.manifests_dir, "identities")
    kept = idents[idents.status == "kept"]
    assert figures["model"] == "dlib"
    assert figures["clips_identity_mismatch"] == int((clips.reason == Reason.IDENTITY_MISMATCH)
                                                     .sum()) >= 2
    assert figures["faces_identity_mismatch"] == int((faces.reason == Reason.IDENTITY_MISMATCH)
                                                     .sum())
    assert figures["kept_with_consistency"] == int(kept.identity_consistency.notna().sum())
    assert figures["consistency_max"] == pytest.approx(kept.identity_consistency.max(), abs=1e-4)
    groups = kept[kept.duplicate_group.notna()].groupby("duplicate_group").identity_id
    assert figures["duplicate_groups"] == {g: sorted(ids) for g, ids in groups}
    assert figures["duplicate_groups_across_splits"] == []
    assert figures["removed_as_duplicates_across_splits"] == 1


def test_lost_clips_show_rejected_faces_beside_the_kept_ones(identity_report, demo_build):
    text, _ = identity_report
    cases = [c for c in demo_build.corpus["identity_cases"] if "minority_clips" in c]
    section = text[text.index('id="identity"'):text.index('id="sheets"')]
    for case in cases:
        assert html.escape(case["identity_key"]) in section
    rejected = re.findall(r'alt="[^"]+ rejected face \d+"', section)
    kept = re.findall(r'alt="[^"]+ crop \d+"', section)
    assert len(rejected) >= 2 * len(cases) and len(kept) == 8 * len(cases)


def test_verify_catches_an_edited_embedding_and_a_duplicate_group_across_splits(demo_build,
                                                                                 tmp_path):
    output = tmp_path / "build"
    shutil.copytree(demo_build.paths.output, output)
    config = VerifyConfig(output=str(output), progress=False, images=False)
    assert verify_build(config) == []
    mdir = output / "manifests"
    idents = build_folder.read_manifest(mdir, "identities")
    kept = idents[idents.status == "kept"].sort_values("identity_id")
    victim = kept.iloc[0]
    part = next((mdir / "faces").glob(manifests.part_name(victim.shard)))
    table = pq.read_table(part)
    rows = table.to_pylist()
    edited = next(r for r in rows if r["identity_id"] == victim.identity_id
                  and r["embedding"] is not None and r["selected"])
    edited["embedding"] = list(-np.asarray(edited["embedding"]))     # another "person"
    build_folder.write_parquet_atomic(manifests.to_table("faces", rows, table.schema.metadata),
                                      part)
    other = kept[kept.split != victim.split].iloc[0]
    part = next((mdir / "identities").glob(manifests.part_name(other.shard)))
    table = pq.read_table(part)
    rows = table.to_pylist()
    for row in rows:
        if row["identity_id"] == other.identity_id:
            row["duplicate_group"] = "dup-test"
    build_folder.write_parquet_atomic(manifests.to_table("identities", rows,
                                                         table.schema.metadata), part)
    part = next((mdir / "identities").glob(manifests.part_name(victim.shard)))
    table = pq.read_table(part)
    rows = table.to_pylist()
    for row in rows:
        if row["identity_id"] == victim.identity_id:
            row["duplicate_group"] = "dup-test"
    build_folder.write_parquet_atomic(manifests.to_table("identities", rows,
                                                         table.schema.metadata), part)
    problems = "\n".join(verify_build(config))
    assert f"{victim.identity_id}: identity_consistency" in problems
    assert "duplicate group dup-test has kept identities in both splits" in problems
