"""`mfhq`: one command for the whole toolkit.

    mfhq build       build MFHQ from face-video datasets (Ray)      curation.executor.runner
    mfhq report      HTML audit report of a build                     curation.audit.report
    mfhq verify      check shards against manifests, byte by byte    curation.audit.verify
    mfhq takedown    remove ids from a finished build                 curation.audit.takedown
    mfhq democorpus  write the demo corpus (all four layouts)         curation.democorpus
    mfhq demo        corpus -> build -> report -> short training      mfhq.demo
    mfhq train       train the Omni-ID encoder on shards              training.train
    mfhq eval        evaluate a checkpoint on held-out shards         training.eval
    mfhq encode      face images -> identity tokens                   training.encode
    mfhq models      list the model files; fetch the missing ones     mfhq.models

Each subcommand is that module's `main(argv)` (so `python -m <module>` works the same) and is
imported only when called: `mfhq train` never imports the curation half, nor `mfhq build` torch
training code.
"""

from __future__ import annotations

import importlib
import inspect
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("curation.executor.runner", "build MFHQ from face-video datasets (Ray)"),
    "report": ("curation.audit.report", "write the HTML audit report of a build"),
    "verify": ("curation.audit.verify", "check a build's shards against its manifests"),
    "takedown": ("curation.audit.takedown", "remove ids from a finished build"),
    "democorpus": ("curation.democorpus.cli", "write the built-in demo corpus"),
    "demo": ("mfhq.demo", "demo corpus -> build -> report -> short Omni-ID training"),
    "train": ("training.train", "train the Omni-ID encoder on MFHQ shards"),
    "eval": ("training.eval", "evaluate an Omni-ID checkpoint on held-out shards"),
    "encode": ("training.encode", "encode a folder of face images into identity tokens"),
    "models": ("mfhq.models", "list the model files of the build and the trainer; fetch them"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mfhq COMMAND [ARGS ...]   (mfhq COMMAND --help for its flags)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mfhq: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    command = importlib.import_module(COMMANDS[name][0]).main
    if "prog" in inspect.signature(command).parameters:
        return int(command(rest, prog=f"mfhq {name}") or 0)
    return int(command(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
