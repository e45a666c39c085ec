"""Data pipeline throughput per worker, against what one training step consumes.

    python bench/loader.py                       # 512 px crops decoded to 224 and 512 px
    python bench/loader.py --shards 'shards/train/mfhq-train-{000000..000009}.tar'

Without --shards it writes MFHQ-format shards of real faces (tests/_shard_helpers.py) at the
contract's crop size (512 px) into a temp folder. One process = one DataLoader worker: the rate is
samples (identities: 8 JPEG + 8 PNG decoded, resized, few-to-many) per second. `--train-rate`
is the samples/s a training step consumes (bench/trainer.py's figure); the table shows how many
workers keep up with it. Prints a table, then one final line of figures.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from training.config import DataConfig  # noqa: E402
from training.data import IdentityStream  # noqa: E402


def rate(urls: str, size: int, samples: int, batch_size: int) -> float:
    config = DataConfig(image_size=size, shuffle_buffer=8, workers=0, samples_per_epoch=samples)
    stream = IdentityStream(urls, config, batch_size, seed=0)
    start = time.perf_counter()
    count = sum(batch["inputs"].shape[0] for batch in stream)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="shard URLs (default: write 512 px test shards)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512], help="model resolutions")
    p.add_argument("--samples", type=int, default=48, help="identities timed per size")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-rate", type=float, default=0.0,
                   help="samples/s one training process consumes (from bench/trainer.py)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        urls = args.shards
        if not urls:
            from _shard_helpers import brace_pattern, write_shards
            urls = brace_pattern(write_shards(Path(tmp), per_shard=4, size=512))
        rows = [(size, rate(urls, size, args.samples, args.batch_size)) for size in args.sizes]
    print(f"{'size':>5}  {'samples/s/worker':>16}  {'images/s/worker':>15}  workers needed")
    for size, r in rows:
        need = math.ceil(args.train_rate / r) if args.train_rate else "n/a"
        print(f"{size:>5}  {r:>16.1f}  {r * 16:>15.1f}  {need}")
    print("RESULT " + " ".join(f"samples_per_s_worker@{s}={r:.1f}" for s, r in rows)
          + (f" train_rate={args.train_rate}" if args.train_rate else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
