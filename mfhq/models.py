"""`mfhq models`: every model file the build and the trainer read, and fetching the missing ones.

    mfhq models                  list them: found / missing / bundled, path, sha256, how to get
    mfhq models fetch [NAME ...] download the missing published ones (buffalo_l, topiq_nr-face)
                                 into the folders their libraries read, verified

The list takes the same path flags as `mfhq build` and `mfhq train` (defaults: the build's,
and the trainer's `paper` preset), so it answers "would this command find its files?". Fetching
downloads only what insightface and pyiqa themselves publish, from their own addresses (or a
--mirror: a server, a bucket prefix or a folder holding the same file names): the CLIP backbone
and FLUX.1-dev are large, gated or in several layouts, and are listed with where to get them.
"""

from __future__ import annotations

import argparse
import json
import sys

from curation.errors import SetupError
from curation.models_fetch import (
    MIRROR_ENV,
    PUBLISHED,
    Integrity,
    destinations,
    fetch_published,
    source_address,
)
from curation.pipeline.models import MISSING, ModelFile, build_model_files, model_file

FETCH_HELP = "\n".join(
    f"  {m.name:<14} {m.file_name} from {m.library}: {m.url}\n"
    f"  {'':<14} checked by {m.integrity.value}"
    + (f" ({m.digest})" if m.digest else
       f" and the presence of {', '.join(m.members)}" if m.members else "")
    for m in PUBLISHED.values())

EPILOG = f"""\
published models (mfhq models fetch NAME):
{FETCH_HELP}

Downloads go to a hidden .part file beside the destination; its size and checksum are checked
before it is renamed into place (a mismatch is refused and nothing is left behind). Transient
network errors are retried and the download resumes; a machine that cannot reach the address
gets one message naming the address and the destination: copy the file there by hand, or pass
--mirror (or ${MIRROR_ENV}) naming a folder, http(s) server or bucket (s3://bucket/prefix) that
holds the same file names. insightface publishes no digest for buffalo_l.zip: pin yours with
--sha256 buffalo_l=HEX.
"""


def trainer_model_files(backbone_weights: str, flux: str, prompt_embeds: str,
                        eval_arcface: str, hash_files: bool = True) -> list[ModelFile]:
    """The trainer's model files (`mfhq train` / `mfhq eval` flags), as rows."""
    return [
        model_file("clip-vit-h-14", "mfhq train --backbone-weights", backbone_weights,
                   "not fetched: a ViT-H/14 CLIP checkpoint in timm, open_clip or transformers "
                   "layout (README: Training Omni-ID)", hash_files),
        model_file("flux.1-dev", "mfhq train --flux", flux,
                   "not fetched: black-forest-labs/FLUX.1-dev from Hugging Face (gated: accept "
                   "its licence there), diffusers layout", hash_files),
        model_file("flux-prompt-embeds", "mfhq train --prompt-embeds", prompt_embeds,
                   "made once by python -m training.prompt_embeds --flux FLUX_DIR", hash_files),
        model_file("arcface-eval", "mfhq eval --arcface / mfhq train --eval-arcface",
                   eval_arcface, "buffalo_l", hash_files),
    ]


def all_model_files(args: argparse.Namespace) -> list[ModelFile]:
    build = build_model_files(args.insightface_root, args.quality_weights,
                              args.identity_weights, hash_files=not args.no_sha256)
    arcface = next(row.path for row in build if row.name == "arcface")
    return build + trainer_model_files(args.backbone_weights, args.flux, args.prompt_embeds,
                                       args.eval_arcface or arcface,
                                       hash_files=not args.no_sha256)


def format_table(rows: list[ModelFile]) -> str:
    lines = []
    for row in rows:
        lines.append(f"{row.state:<8} {row.name:<19} {row.path}")
        detail = f"sha256 {row.sha256}" if row.sha256 else ""
        lines.append(f"{'':<8} {'':<19} used by: {row.used_by}" + (f"; {detail}" if detail
                                                                     else ""))
        if row.state == MISSING:
            how = (f"mfhq models fetch {row.fetch}" if row.fetch in PUBLISHED else row.fetch)
            lines.append(f"{'':<8} {'':<19} get it: {how}")
    return "\n".join(lines)


def build_parser(prog: str = "mfhq models") -> argparse.ArgumentParser:
    from training.config import paper

    trainer = paper()
    p = argparse.ArgumentParser(prog=prog, description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", choices=("list", "fetch"), default="list",
                   help="list (default) or fetch")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"fetch: which published models ({', '.join(PUBLISHED)}; default all)")
    paths = p.add_argument_group("where the commands look (the same flags as theirs)")
    paths.add_argument("--insightface-root", default=None, metavar="DIR",
                       help="holds models/buffalo_l/ (default: ~/.insightface)")
    paths.add_argument("--quality-weights", default=None, metavar="PATH",
                       help="TOPIQ-face checkpoint (default: pyiqa's cache, $TORCH_HOME/hub/"
                            "pyiqa/); fetch puts it there, or in this file's folder")
    paths.add_argument("--identity-weights", default=None, metavar="PATH",
                       help="ArcFace ONNX (default: buffalo_l's w600k_r50.onnx)")
    paths.add_argument("--backbone-weights", default=trainer.backbone.weights, metavar="PATH",
                       help="CLIP backbone (default: the paper preset's %(default)s)")
    paths.add_argument("--flux", default=trainer.flow.flux_path, metavar="PATH",
                       help="FLUX.1-dev folder or file (default: %(default)s)")
    paths.add_argument("--prompt-embeds", default=trainer.flow.prompt_embeds, metavar="PATH",
                       help="prompt embeddings (default: %(default)s)")
    paths.add_argument("--eval-arcface", default="", metavar="PATH",
                       help="ArcFace ONNX of the evaluation (default: buffalo_l's)")
    p.add_argument("--json", action="store_true", help="list: one JSON array instead of a table")
    p.add_argument("--no-sha256", action="store_true",
                   help="list: do not hash found files (FLUX.1-dev is ~24 GB)")
    fetching = p.add_argument_group("fetch")
    fetching.add_argument("--mirror", default=None, metavar="URL",
                          help=f"fetch from URL/<file name> instead of the published address: "
                               f"http(s)://, s3://bucket/prefix, gs://, or a folder "
                               f"(default: ${MIRROR_ENV})")
    fetching.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX",
                          help="require this sha256 of NAME's download (replaces the published "
                               "check's digest)")
    fetching.add_argument("--timeout", type=float, default=60.0, metavar="S",
                          help="seconds one network read may wait (default: %(default)s)")
    fetching.add_argument("--time-limit", type=float, default=3600.0, metavar="S",
                          help="seconds one download may take in all (default: %(default)s)")
    fetching.add_argument("--retries", type=int, default=4,
                          help="retries after a transient network error (default: %(default)s)")
    return p


def parse_pins(pins: list[str]) -> dict[str, str]:
    out = {}
    for pin in pins:
        name, _, digest = pin.partition("=")
        if name not in PUBLISHED or len(digest) != 64:
            raise SetupError(f"--sha256 {pin!r}: expected NAME=HEX with NAME one of "
                             f"{', '.join(PUBLISHED)} and a 64-hex-digit sha256")
        out[name] = digest.lower()
    return out


def fetch(args: argparse.Namespace) -> int:
    names = args.names or list(PUBLISHED)
    unknown = [n for n in names if n not in PUBLISHED]
    if unknown:
        raise SetupError(f"unknown model {', '.join(unknown)}: mfhq models fetch takes "
                         f"{', '.join(PUBLISHED)}")
    pins = parse_pins(args.sha256)
    from pathlib import Path

    topiq_dir = Path(args.quality_weights).expanduser().parent if args.quality_weights else None
    for name in names:
        model = PUBLISHED[name]
        if topiq_dir is not None and name == "topiq_nr-face" and \
                Path(args.quality_weights).name != model.file_name:
            raise SetupError(f"--quality-weights {args.quality_weights}: fetch writes pyiqa's "
                             f"file name {model.file_name}; name that file, or leave the flag out")
        targets = destinations(model, args.insightface_root, topiq_dir)
        print(f"{name}: {source_address(model, args.mirror)} -> "
              f"{', '.join(map(str, targets))}", file=sys.stderr)
        fetched = fetch_published(model, insightface_root=args.insightface_root,
                                  topiq_dir=topiq_dir, mirror=args.mirror,
                                  sha256=pins.get(name, ""), timeout_s=args.timeout,
                                  time_limit_s=args.time_limit, retries=args.retries)
        for item in fetched:
            verb = "downloaded" if item.downloaded else "already there"
            print(f"{verb:<13} {item.path}  sha256 {item.sha256}")
        if model.integrity is Integrity.ZIP_CRC and name not in pins and \
                any(item.downloaded for item in fetched):
            print(f"note: {model.library} publishes no digest for {model.file_name}; its "
                  f"members' CRC-32s were checked", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None, prog: str = "mfhq models") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        if args.action == "fetch":
            return fetch(args)
        if args.names:
            raise SetupError(f"mfhq models list takes no names (got {' '.join(args.names)}); "
                             f"did you mean mfhq models fetch?")
        rows = all_model_files(args)
        print(json.dumps([r.as_dict() for r in rows], indent=1) if args.json
              else format_table(rows))
        missing = [r.name for r in rows if r.state == MISSING]
        if missing and not args.json:
            print(f"\n{len(missing)} missing: {', '.join(missing)}", file=sys.stderr)
        return 0
    except SetupError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2



if __name__ == "__main__":
    sys.exit(main())
