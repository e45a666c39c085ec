"""The demo corpus: real faces from photos shipped in our dependencies, moved by simulated head
motion, degraded, and laid out exactly like CelebV-HQ, CelebV-Text, VFHQ, TalkingHead-1KH and a
plain folder source, with ground truth per frame and (optionally) a set of bad inputs.

    python -m curation.democorpus OUT [--seed N] [--with-bad-inputs] [--size PX] [--identities N]
                                      [--clip-seconds S]

The README demo, the tests of every stage and the benchmarks build on it.
"""

from curation.democorpus.build import build_demo_corpus
from curation.democorpus.cli import main

__all__ = ["build_demo_corpus", "main"]
