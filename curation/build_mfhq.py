"""Build the MFHQ dataset: the script form of `mfhq build` (the code is `curation.pipeline`).

    python curation/build_mfhq.py --source celebvhq=DIR --source vfhq=DIR ... [--output DIR]
    ray submit curation/cluster.yaml curation/build_mfhq.py -- --ray-address auto --source ...
    ray job submit --working-dir . -- python curation/build_mfhq.py --ray-address auto ...

`ray submit` syncs this file alone, so it imports the installed package; run from a checkout it
makes the checkout importable first. See `--help` for every flag.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a plain file from a checkout: make the repo importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from curation.executor.runner import main as build_main

    return build_main(argv, prog="build_mfhq.py")


if __name__ == "__main__":
    sys.exit(main())
