"""Command line of the demo corpus generator."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoCorpusConfig:
    out: Path
    seed: int = 0
    with_bad_inputs: bool = False
    size: int = 512
    identities: int = 0          # total wanted; 0 = the real faces only
    workers: int | None = None
    clip_seconds: float | None = None     # None = the default 3.52 s
    verbose: bool = False        # library output on the terminal instead of OUT.democorpus.log


def parse_args(argv: list[str] | None = None, prog: str = "mfhq democorpus") -> DemoCorpusConfig:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Build the demo corpus: videos of real faces (from photos shipped in our "
                    "dependencies) with simulated head motion, laid out like CelebV-HQ, "
                    "CelebV-Text, VFHQ, TalkingHead-1KH and a plain folder source.")
    parser.add_argument("out", type=Path, help="output folder (replaced if it holds a corpus)")
    parser.add_argument("--seed", type=int, default=0, help="ids, motion and noise (default 0)")
    parser.add_argument("--with-bad-inputs", action="store_true",
                        help="add broken and hostile inputs, listed in corpus.json")
    parser.add_argument("--size", type=int, default=512,
                        help="frame size of processed clips in pixels (default 512)")
    parser.add_argument("--identities", type=int, default=0,
                        help="total identities; beyond the real faces (9), documented variants "
                             "of them are added (mirrored, colour-shifted, re-cropped)")
    parser.add_argument("--workers", type=int, default=None,
                        help="render processes (default: min(2, CPU count))")
    parser.add_argument("--clip-seconds", type=float, default=None, metavar="S",
                        help="length of the good clips in seconds (default 3.52; real datasets "
                             "have 3-60 s clips); head motion repeats its sweeps over the clip")
    parser.add_argument("--verbose", action="store_true",
                        help="show library output (mediapipe) on the terminal instead of in "
                             "OUT.democorpus.log beside the corpus")
    args = parser.parse_args(argv)
    return DemoCorpusConfig(**vars(args))


def main(argv: list[str] | None = None, prog: str = "mfhq democorpus") -> int:
    from curation.democorpus.build import build_demo_corpus
    from curation.democorpus.faces_source import SourceFaceError
    from mfhq_contract.terminal import quiet_terminal, terminal

    config = parse_args(argv, prog)
    started = time.perf_counter()
    log = config.out.parent / f"{config.out.name}.democorpus.log"
    with quiet_terminal(log, enabled=not config.verbose):
        try:
            summary = build_demo_corpus(config.out, config.seed, config.with_bad_inputs,
                                        config.size, extra_identities=0, workers=config.workers,
                                        total_identities=config.identities,
                                        clip_seconds=config.clip_seconds)
        except (SourceFaceError, FileExistsError, ValueError) as error:
            print(f"error: {error}", file=terminal())
            return 2
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in config.out.rglob("*") if p.is_file())
    print(f"demo corpus in {config.out}: {len(summary['identities'])} identities, "
          f"{len(summary['clips'])} clips, {len(summary['bad_inputs'])} bad inputs, "
          f"{size / 1e6:.1f} MB, {seconds:.1f} s")
    return 0
