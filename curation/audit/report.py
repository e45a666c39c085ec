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

The report is three rooms: `report_data` (tables, counts, choices), `report_sheets` (images
from shards and source videos) and `report_html` (the page); this module is the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curation import build_folder as bf
from curation.audit.report_data import ReportConfig, compute_counts, read_build
from curation.audit.report_html import render_html
from curation.audit.report_sheets import (
    choose_identities,
    load_contact_sheets,
    load_mismatch_sheets,
)
from curation.errors import SetupError
from mfhq_contract.storage import add_options_argument, is_url, use_options_argument

__all__ = ["ReportConfig", "choose_identities", "main", "write_report"]


def write_report(config: ReportConfig) -> Path:
    """Read the build, write the HTML report, return its path."""
    bf.sync_down(config.manifests_dir)        # an output on a store: its manifests, mirrored
    tables = read_build(config)
    counts = compute_counts(tables)
    sheets = load_contact_sheets(config, tables.identities)
    page = render_html(config, tables, counts, sheets, load_mismatch_sheets(config, tables))
    path = config.report_path
    path.parent.mkdir(parents=True, exist_ok=True)
    bf.atomic_write(path, page)
    return path


def build_parser(prog: str = "mfhq report") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write a self-contained HTML audit report of an MFHQ build.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", required=True, metavar="DIR|URL",
                        help="the build's --output folder (holds manifests/ and shards/), or "
                             "its store URL (s3://bucket/mfhq)")
    parser.add_argument("--out", type=Path, default=None,
                        help="HTML file to write (default: OUTPUT/report.html; ./report.html "
                             "for a build on a store)")
    parser.add_argument("--identities", type=int, default=6,
                        help="kept identities sampled for contact sheets")
    parser.add_argument("--identity", action="append", default=[], metavar="ID",
                        help="an identity id to always show (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the identity sample")
    parser.add_argument("--thumb-size", type=int, default=128, help="thumbnail size in px")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    add_options_argument(parser, "an s3:// / gs:// --output")
    return parser


def parse_args(argv: list[str] | None = None, prog: str = "mfhq report") -> ReportConfig:
    ns = build_parser(prog).parse_args(argv)
    if ns.identities < 0 or ns.thumb_size < 16:
        build_parser(prog).error("--identities must be >= 0 and --thumb-size >= 16")
    use_options_argument(build_parser(prog), ns)
    output = ns.output if is_url(ns.output) else Path(ns.output).resolve()
    return ReportConfig(output=output, out=ns.out, identities=ns.identities,
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
