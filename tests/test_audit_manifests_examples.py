"""The README's manifest queries run as written: pandas and DuckDB on the demo build's folder,
and the same queries plus the object-storage examples on a real S3 API (moto's server on
127.0.0.1) holding the demo build's manifests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _s3_helpers import s3_server  # noqa: F401

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(heading: str, language: str) -> list[str]:
    """The fenced `language` blocks of the README section under `heading` (up to the next
    heading)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading) + len(heading)
    ends = [i for i in (text.find("\n### ", start), text.find("\n## ", start)) if i > 0]
    section = text[start:min(ends) if ends else None]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _statements(sql: str) -> list[str]:
    kept = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in kept.split(";") if s.strip()]


def _run_queries(build: str, register_s3: bool) -> None:
    import duckdb

    (pandas_code,) = _blocks("### Example queries", "python")
    exec(compile(pandas_code.replace("BUILD", build), "README pandas example", "exec"), {})
    (sql,) = _blocks("### Example queries", "sql")
    con = duckdb.connect()
    if register_s3:
        import fsspec

        con.register_filesystem(fsspec.filesystem("s3"))
    for statement in _statements(sql.replace("BUILD", build)):
        con.sql(statement).fetchall()      # every query runs (the demo build may match none)


def test_the_readme_queries_run_on_the_demo_build(demo_build):
    _run_queries(str(demo_build.paths.output), register_s3=False)


def test_the_readme_queries_and_object_storage_examples_run_on_s3(demo_build, s3_server):  # noqa: F811
    bucket = s3_server.bucket("mfhq-audit")
    manifests = demo_build.manifests_dir
    for path in sorted(manifests.rglob("*.parquet")):
        s3_server.upload(path, bucket, f"mfhq/manifests/{path.relative_to(manifests)}")
    _run_queries(f"s3://{bucket}/mfhq", register_s3=True)
    for code in _blocks("### Manifests in object storage", "python"):
        exec(compile(code.replace("BUCKET", bucket), "README object storage example", "exec"), {})


def test_the_object_storage_examples_name_no_real_endpoint():
    for code in _blocks("### Manifests in object storage", "python"):
        assert "amazonaws.com" not in code and "endpoint_url" not in code
    assert _blocks("### Manifests in object storage", "python"), "the section lost its examples"


@pytest.mark.parametrize("heading", ["### Example queries", "### Manifests in object storage"])
def test_each_example_section_has_code(heading):
    assert _blocks(heading, "python")
