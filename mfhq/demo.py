"""The README demo (`make demo`): build the demo corpus, including bad inputs, run the full
MFHQ build on it, write the build's audit report (`curation.audit.report`), and train Omni-ID
(`tiny` preset) for a minute on the demo shards, ending with one held-out eval line.

    python -m mfhq.demo --workdir demo-output [--num-cpus N] [--seed S] [--train-steps N]

The demo corpus has small faces (about 200-300 px in 512 px frames) and no model downloads are
possible, so the demo build uses a lower --min-face-size, 256 px crops, the bundled mediapipe
detector and the PIQE quality model. Real runs use insightface SCRFD and TOPIQ
(`topiq_nr-face`), with the default --min-face-size 320 (the side of the source region that
becomes the crop; README "Face size").
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from curation.pipeline.config import BuildConfig, parse_args
from curation.sources import SOURCE_KINDS

# Demo-appropriate build flags (see the module docstring for why each differs from a real run).
DEMO_BUILD_FLAGS = [
    "--min-face-size", "160",
    "--crop-size", "256",
    "--quality-model", "piqe",
    "--face-detector", "mediapipe",
    "--identities-per-shard", "2",
    "--sample-fps", "6",
    "--test-fraction", "0.25",
    "--identity-model", "dlib",          # offline recogniser (ArcFace weights cannot be fetched)
    "--embeddings-per-track", "6",       # dlib without BLAS costs ~0.15 s a face on one core
]


@dataclass
class DemoPaths:
    workdir: Path
    corpus: Path
    output: Path

    @property
    def shards(self) -> Path:
        return self.output / "shards"

    @property
    def manifests(self) -> Path:
        return self.output / "manifests"


def demo_paths(workdir: Path | str) -> DemoPaths:
    workdir = Path(workdir).resolve()
    return DemoPaths(workdir, workdir / "corpus", workdir / "build")


def build_corpus(paths: DemoPaths, seed: int = 0) -> dict:
    """The demo corpus with bad inputs (reused when a corpus with this seed is already there)."""
    from curation.democorpus import build_demo_corpus

    summary_file = paths.corpus / "corpus.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if summary.get("seed") == seed and summary.get("with_bad_inputs"):
            return summary
    return build_demo_corpus(paths.corpus, seed=seed, with_bad_inputs=True)


def demo_build_args(paths: DemoPaths, extra: list[str] | None = None) -> list[str]:
    """The build_mfhq command-line arguments of the demo build."""
    args = []
    for kind in SOURCE_KINDS:
        if (paths.corpus / kind).is_dir():
            args += ["--source", f"{kind}={paths.corpus / kind}"]
    args += ["--takedown", str(write_demo_takedown(paths))]
    args += ["--output", str(paths.output), *DEMO_BUILD_FLAGS]
    return args + list(extra or [])


def write_demo_takedown(paths: DemoPaths) -> Path:
    """An empty takedown list (the flag is exercised; a real list names ids, one per line)."""
    path = paths.workdir / "takedown.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# ids to exclude from the build, one per line (none in the demo)\n")
    return path


def demo_config(paths: DemoPaths, extra: list[str] | None = None) -> BuildConfig:
    return parse_args(demo_build_args(paths, extra))


def run_demo_build(paths: DemoPaths, extra: list[str] | None = None):
    """Run the build on the demo corpus; returns the runner's BuildSummary."""
    from curation.executor.runner import run_build

    return run_build(demo_config(paths, extra))


def write_demo_report(paths: DemoPaths) -> Path:
    """The audit report of the demo build (`python -m curation.audit.report`); returns its path."""
    from curation.audit.report import ReportConfig, write_report

    return write_report(ReportConfig(output=paths.output))


def shard_pattern(shards_dir: Path, split: str) -> str | None:
    """A brace pattern over a split's shards (names are contiguous), or None when there are none."""
    tars = sorted((shards_dir / split).glob(f"mfhq-{split}-*.tar"))
    if not tars:
        return None
    first, last = (t.stem.rsplit("-", 1)[1] for t in (tars[0], tars[-1]))
    if first == last:
        return str(tars[0])
    return str(shards_dir / split / f"mfhq-{split}-{{{first}..{last}}}.tar")


def run_demo_training(paths: DemoPaths, steps: int) -> int:
    """A short `tiny` MTD run on the demo shards, ending with one held-out eval line."""
    from training.train import main as train_main

    train = shard_pattern(paths.shards, "train")
    if train is None:
        print("[demo] no train shards: skipping the training run", flush=True)
        return 1
    args = ["--preset", "tiny", "--stage", "mtd", "--shards", train,
            "--out", str(paths.workdir / "omni-id"), "--max-steps", str(steps)]
    test = shard_pattern(paths.shards, "test")
    if test is not None:
        args += ["--test-shards", test]
    print("[demo] mfhq train " + " ".join(args), flush=True)
    return train_main(args)


def main(argv: list[str] | None = None, prog: str = "python -m mfhq.demo") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Build the demo corpus (with bad inputs), run the full MFHQ build on it, write the audit report, and train Omni-ID (tiny preset) briefly on the demo shards.")
    parser.add_argument("--workdir", default="demo-output", help="folder for corpus and build")
    parser.add_argument("--seed", type=int, default=0, help="demo corpus seed")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs for the embedded Ray (default: all)")
    parser.add_argument("--train-steps", type=int, default=60,
                        help="steps of the short Omni-ID training run at the end (0: skip it)")
    parser.add_argument("--verbose", action="store_true",
                        help="show library output (mediapipe, ffmpeg, Ray) on the terminal "
                             "instead of in WORKDIR/logs/demo.log")
    ns = parser.parse_args(argv)

    from mfhq_contract.terminal import quiet_terminal

    paths = demo_paths(ns.workdir)
    with quiet_terminal(paths.workdir / "logs" / "demo.log", enabled=not ns.verbose) as log:
        if log is not None:
            print(f"[demo] library output (mediapipe, ffmpeg, Ray) goes to {log}", flush=True)
        return _run(paths, ns)


def _run(paths: DemoPaths, ns: argparse.Namespace) -> int:
    from curation.executor.runner import format_summary

    print(f"[demo] building the demo corpus in {paths.corpus} ...", flush=True)
    corpus = build_corpus(paths, seed=ns.seed)
    print(f"[demo] {len(corpus.get('identities', []))} identities, "
          f"{len(corpus.get('clips', []))} clips, {len(corpus.get('bad_inputs', []))} bad inputs",
          flush=True)
    extra = ["--num-cpus", str(ns.num_cpus)] if ns.num_cpus else []
    args = demo_build_args(paths, extra)
    print("[demo] mfhq build " + " ".join(args), flush=True)
    print("[demo] note: the demo uses PIQE and the mediapipe detector because no model weights "
          "can be downloaded here; real runs use TOPIQ (--quality-model topiq_nr-face, the "
          "default) and insightface SCRFD, with the default --min-face-size 320.", flush=True)
    summary = run_demo_build(paths, extra)
    print(format_summary(summary), flush=True)
    print(f"[demo] report: {write_demo_report(paths)}", flush=True)
    if not summary.ok:
        return 1
    if ns.train_steps > 0 and run_demo_training(paths, ns.train_steps) != 0:
        return 1
    print(next_steps(paths), flush=True)
    return 0


def next_steps(paths: DemoPaths) -> str:
    """The demo's last lines: what it made, what to open, what to run next."""
    out = paths.output
    train = shard_pattern(paths.shards, "train") or str(paths.shards / "train")
    saved = sorted((paths.workdir / "omni-id").glob("checkpoint-*.pt"))
    checkpoint = saved[-1] if saved else paths.workdir / "omni-id" / "checkpoint-<step>.pt"
    return "\n".join([
        "[demo] done.",
        f"  open     {out / 'report.html'}   (counts, poses, quality, contact sheets)",
        f"  shards   {paths.shards}   manifests {paths.manifests}",
        "  next     mfhq verify --output " + str(out) + "      (shards against manifests)",
        f"           mfhq eval --checkpoint {checkpoint} --shards "
        f"'{shard_pattern(paths.shards, 'test') or train}'",
        "           mfhq build --source celebvhq=/data/celebvhq ... --output /data/mfhq   "
        "(your own data; mfhq build --help)",
    ])


if __name__ == "__main__":
    sys.exit(main())
