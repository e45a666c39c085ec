"""Configuration of an MFHQ build: the `BuildConfig` dataclass and the argparse CLI on top of it.

Every flag of `python curation/build_mfhq.py` is a field here. Fields split into two kinds:
those that change what the build produces (hashed into `config_hash`, recorded in the plan
file, so a rerun into the same output folder with different values is refused) and those that
only change how it runs (Ray address, CPU/GPU counts, actors, `--overwrite`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

SOURCE_KINDS_HELP = "celebvhq, vfhq, talkinghead1kh, celebvtext, folder"
QUALITY_MODELS = ("topiq_nr-face", "piqe")
FACE_DETECTORS = ("insightface", "mediapipe")

# Fields that do not change the build's output: left out of the config hash.
RUNTIME_FIELDS = frozenset(
    {"output", "shards_dir", "manifests_dir", "ray_address", "num_cpus", "num_gpus", "actors",
     "gpus_per_actor", "overwrite", "progress", "quality_batch_size"}
)


class BuildFolders:
    """The two folders of a build named by `output`: OUTPUT/shards and OUTPUT/manifests, or
    ./shards and ./manifests when `output` is empty (shared by the build, verify and takedown)."""

    output: str | None

    @property
    def shards_dir(self) -> Path:
        return Path(self.output) / "shards" if self.output else Path("shards")

    @property
    def manifests_dir(self) -> Path:
        return Path(self.output) / "manifests" if self.output else Path("manifests")


@dataclass
class BuildConfig(BuildFolders):
    """All settings of one MFHQ build (see `build_parser` for the meaning of each)."""

    sources: list[tuple[str, str]] = field(default_factory=list)   # (kind, directory)
    output: str | None = None
    min_face_size: int = 448
    images_per_identity: int = 8
    pose_clusters: int = 12
    scored_per_cluster: int = 2
    sample_fps: float = 2.0
    max_frames_per_clip: int = 48
    detect_max_side: int = 640
    crop_size: int = 512
    clip_time_limit_s: float = 300.0
    quality_model: str = "topiq_nr-face"
    quality_weights: str | None = None
    quality_batch_size: int = 8
    face_detector: str = "insightface"
    insightface_root: str | None = None
    identities_per_shard: int = 256
    test_fraction: float = 0.02
    takedown: str | None = None
    seed: int = 0
    limit: int | None = None
    ray_address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Raise ValueError with a user-facing message for settings that cannot work."""
        if not self.sources:
            raise ValueError("no --source given: pass at least one KIND=DIR "
                             f"(kinds: {SOURCE_KINDS_HELP})")
        if self.images_per_identity < 1:
            raise ValueError("--images-per-identity must be >= 1")
        if self.pose_clusters < self.images_per_identity:
            raise ValueError(f"--pose-clusters ({self.pose_clusters}) must be at least "
                             f"--images-per-identity ({self.images_per_identity}): each selected "
                             "face comes from a different pose cluster")
        if self.scored_per_cluster < 1:
            raise ValueError("--scored-per-cluster must be >= 1")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError("--test-fraction must be between 0 and 1")
        if self.identities_per_shard < 1:
            raise ValueError("--identities-per-shard must be >= 1")
        if self.sample_fps <= 0 or self.crop_size < 16 or self.min_face_size < 1:
            raise ValueError("--sample-fps must be > 0, --crop-size >= 16, --min-face-size >= 1")
        if self.quality_model not in QUALITY_MODELS:
            raise ValueError(f"--quality-model must be one of {QUALITY_MODELS}")
        if self.face_detector not in FACE_DETECTORS:
            raise ValueError(f"--face-detector must be one of {FACE_DETECTORS}")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1")

    def resolved_sources(self) -> list[tuple[str, str]]:
        return [(kind, str(Path(path).expanduser().resolve())) for kind, path in self.sources]

    def output_affecting(self) -> dict:
        """The settings that determine the build's output, JSON-able, sources resolved."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in RUNTIME_FIELDS}
        values["sources"] = [list(s) for s in self.resolved_sources()]
        values["takedown_sha256"] = _file_sha256(self.takedown) if self.takedown else None
        values["takedown"] = str(Path(self.takedown).resolve()) if self.takedown else None
        if self.quality_weights:
            values["quality_weights"] = str(Path(self.quality_weights).resolve())
        return values

    def config_hash(self) -> str:
        blob = json.dumps(self.output_affecting(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> dict:
        values = dataclasses.asdict(self)
        values["sources"] = [list(s) for s in self.sources]
        values["shards_dir"] = str(self.shards_dir)
        values["manifests_dir"] = str(self.manifests_dir)
        return values


def _file_sha256(path: str | os.PathLike) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _source_arg(text: str) -> tuple[str, str]:
    kind, sep, path = text.partition("=")
    if not sep or not kind or not path:
        raise argparse.ArgumentTypeError(f"--source expects KIND=DIR, got {text!r} "
                                         f"(kinds: {SOURCE_KINDS_HELP})")
    return kind.strip().lower(), path


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' only where there is a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `curation/build_mfhq.py`; every flag maps to a BuildConfig field."""
    d = BuildConfig()
    p = argparse.ArgumentParser(
        prog="build_mfhq.py",
        description=(
            "Build the MFHQ dataset: read face-video datasets, pick "
            f"{d.images_per_identity} pose-diverse, high-quality aligned faces per identity, "
            "and write WebDataset shards plus Parquet manifests. Runs on an embedded local Ray "
            "by default, or on a cluster with --ray-address auto (see curation/cluster.yaml). "
            "Rerunning with the same arguments resumes: finished shards are kept."),
        formatter_class=_HelpFormatter,
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--source", dest="sources", action="append", type=_source_arg, default=[],
                    metavar="KIND=DIR",
                    help=f"a dataset to read; repeat for several. KIND is one of "
                         f"{SOURCE_KINDS_HELP} ('folder': one subfolder of videos per identity)")
    io.add_argument("--output", default=None, metavar="DIR",
                    help="write shards to DIR/shards and manifests to DIR/manifests "
                         "(default: ./shards and ./manifests)")
    io.add_argument("--takedown", default=None, metavar="FILE",
                    help="text file of ids to exclude, one per line ('#' comments): identity "
                         "ids, source video ids (e.g. YouTube ids), clip ids or SOURCE:CLIP_ID")
    io.add_argument("--overwrite", action="store_true",
                    help="allow a different configuration to replace an existing build in the "
                         "output folder (its shards and manifests are deleted)")

    sel = p.add_argument_group("face selection")
    sel.add_argument("--min-face-size", type=int, default=d.min_face_size, metavar="PX",
                     help="reject faces whose box side is smaller than PX in the source frame")
    sel.add_argument("--images-per-identity", type=int, default=d.images_per_identity,
                     metavar="N", help="faces per identity, each from a different pose cluster")
    sel.add_argument("--pose-clusters", type=int, default=d.pose_clusters, metavar="K",
                     help="k-means clusters over (yaw, pitch, roll) per identity; must be >= "
                          "--images-per-identity; capped by the number of candidates")
    sel.add_argument("--scored-per-cluster", type=int, default=d.scored_per_cluster, metavar="N",
                     help="candidates per pose cluster (the sharpest) that the quality model "
                          "scores; the rest are recorded as not_scored")
    sel.add_argument("--sample-fps", type=float, default=d.sample_fps, metavar="F",
                     help="frames sampled per second of video (uniform in time)")
    sel.add_argument("--max-frames-per-clip", type=int, default=d.max_frames_per_clip,
                     metavar="N", help="upper bound on sampled frames per clip")
    sel.add_argument("--detect-max-side", type=int, default=d.detect_max_side, metavar="PX",
                     help="longest side of the downscaled frame used for face detection")
    sel.add_argument("--crop-size", type=int, default=d.crop_size, metavar="PX",
                     help="side of the aligned square face crops and masks")
    sel.add_argument("--clip-time-limit", dest="clip_time_limit_s", type=float,
                     default=d.clip_time_limit_s, metavar="SEC",
                     help="per-clip time limit for decoding and analysis (video_timeout)")

    models = p.add_argument_group("models")
    models.add_argument("--quality-model", choices=QUALITY_MODELS, default=d.quality_model,
                        help="face quality model (pyiqa); topiq_nr-face needs its weights file, "
                             "piqe needs none")
    models.add_argument("--quality-weights", default=None, metavar="PATH",
                        help="TOPIQ weights file (default: pyiqa's location under "
                             "$TORCH_HOME/hub/pyiqa/)")
    models.add_argument("--quality-batch-size", type=int, default=d.quality_batch_size,
                        metavar="N", help="crops per quality-model forward pass")
    models.add_argument("--face-detector", choices=FACE_DETECTORS, default=d.face_detector,
                        help="insightface SCRFD (needs buffalo_l/det_10g.onnx) or mediapipe "
                             "(bundled, no download)")
    models.add_argument("--insightface-root", default=None, metavar="DIR",
                        help="insightface model root holding models/buffalo_l/ "
                             "(default: ~/.insightface)")

    split = p.add_argument_group("splits and shards")
    split.add_argument("--identities-per-shard", type=int, default=d.identities_per_shard,
                       metavar="N", help="identities (samples) per tar shard")
    split.add_argument("--test-fraction", type=float, default=d.test_fraction, metavar="P",
                       help="fraction of source videos held out for the test split (by a stable "
                            "hash of the source video id)")
    split.add_argument("--seed", type=int, default=d.seed, metavar="S",
                       help="seed for pose clustering")
    split.add_argument("--limit", type=int, default=None, metavar="N",
                       help="process only the first N identities (sorted by id): smoke runs")

    run = p.add_argument_group("execution (Ray)")
    run.add_argument("--ray-address", default=None, metavar="ADDRESS",
                     help="join a running Ray cluster ('auto' or host:port); default: start an "
                          "embedded local Ray sized to this machine")
    run.add_argument("--num-cpus", type=int, default=None, metavar="N",
                     help="CPUs for the embedded local Ray (default: all)")
    run.add_argument("--num-gpus", type=int, default=None, metavar="N",
                     help="GPUs for the embedded local Ray (default: all visible)")
    run.add_argument("--actors", type=int, default=None, metavar="N",
                     help="shard-building actors, each holding its own models (default: one "
                          "per CPU of the Ray cluster)")
    run.add_argument("--gpus-per-actor", type=float, default=None, metavar="G",
                     help="GPU share per actor when the cluster has GPUs (default: GPUs/actors)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="hide the progress bar (shown on stderr unless this flag is given; "
                          "progress=%(default)s)")
    return p


def parse_args(argv: list[str] | None = None) -> BuildConfig:
    """Parse the command line into a validated BuildConfig (exits with usage on bad input)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    config = BuildConfig(**vars(ns))
    try:
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    return config
