"""Build the MFHQ dataset (entry point).

    python curation/build_mfhq.py --source celebvhq=DIR --source vfhq=DIR ... [--output DIR]
    python -m curation.build_mfhq ...
    ray submit curation/cluster.yaml curation/build_mfhq.py -- --ray-address auto --source ...
    ray job submit --working-dir . -- python curation/build_mfhq.py --ray-address auto ...

See `--help` for every flag, `curation/runner.py` for the job itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a plain file (`ray submit` ships just the path): make the repo importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EXIT_OK = 0
EXIT_SHARDS_FAILED = 1
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    from curation.config import parse_args
    from curation.runner import BuildRefused, format_summary, run_build

    config = parse_args(argv)
    try:
        summary = run_build(config)
    except BuildRefused as err:
        print(f"build_mfhq: refused: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - one clear message for set-up problems
        if not _is_setup_error(err):
            raise
        print(f"build_mfhq: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(format_summary(summary))
    return EXIT_OK if summary.ok else EXIT_SHARDS_FAILED


def _is_setup_error(err: Exception) -> bool:
    """Errors that mean 'fix your inputs or model files', printed without a traceback."""
    if isinstance(err, FileNotFoundError):
        return True
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & {"SourceError", "MissingWeightsError"})


if __name__ == "__main__":
    sys.exit(main())
