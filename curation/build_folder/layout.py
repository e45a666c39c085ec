"""The build folder's layout: every file and folder name, and the paths of one build.

    shards/<split>/mfhq-<split>-NNNNNN.tar   WebDataset shards (mfhq_contract)
    manifests/clips|faces|identities/part-<split>-NNNNNN.parquet   one part per shard
    manifests/clips/part-enumeration.parquet clips rejected before analysis
    manifests/shards.parquet                 one row per written shard
    manifests/plan.json, run.json            the plan (with the config hash) and the run record
    manifests/takedowns.parquet              salted hashes of removed ids (curation.takedowns)
    logs/                                    third-party output of every process (not an output)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curation import manifests
from curation.build_folder.store import mirror_root
from curation.errors import BuildFolderError
from mfhq_contract import SPLITS, shard_name, storage
from mfhq_contract.storage import is_url

PLAN_FILE = "plan.json"
RUN_FILE = "run.json"
SHARDS_TABLE = "shards.parquet"
LOGS_DIR = "logs"


class BuildFolders:
    """The folders of a build named by `output`: OUTPUT/shards, OUTPUT/manifests, OUTPUT/logs,
    or ./shards, ./manifests, ./logs when `output` is empty. A mixin of every config that works
    on a build folder (build, verify, report, takedown).

    An `output` that is a store URL (`s3://bucket/mfhq`) names the same folders in this node's
    mirror of it (`store.mirror_root`), whose files are published to the store."""

    output: str | None

    @property
    def output_root(self) -> Path:
        """The local folder holding shards/, manifests/ and logs/ (for a store: its mirror)."""
        if self.output and is_url(self.output):
            return mirror_root(self.output)
        return storage.local_path(self.output) if self.output else Path(".")

    @property
    def on_store(self) -> bool:
        return bool(self.output) and is_url(self.output)

    @property
    def shards_dir(self) -> Path:
        return self.output_root / "shards" if self.output else Path("shards")

    @property
    def manifests_dir(self) -> Path:
        return self.output_root / "manifests" if self.output else Path("manifests")

    @property
    def logs_dir(self) -> Path:
        return self.output_root / LOGS_DIR if self.output else Path(LOGS_DIR)


@dataclass(frozen=True)
class BuildFolder(BuildFolders):
    """A build folder with absolute paths (what Ray workers on other nodes are handed)."""

    output: str | None

    @classmethod
    def of(cls, folders: BuildFolders) -> BuildFolder:
        if folders.on_store:
            return cls(str(folders.output).rstrip("/"))
        return cls(str(folders.output_root.resolve()))

    @property
    def plan_path(self) -> Path:
        return self.manifests_dir / PLAN_FILE

    @property
    def run_path(self) -> Path:
        return self.manifests_dir / RUN_FILE

    @property
    def shards_table_path(self) -> Path:
        return self.manifests_dir / SHARDS_TABLE

    @property
    def enumeration_part(self) -> Path:
        return self.manifests_dir / "clips" / manifests.ENUMERATION_PART

    def tar_path(self, shard: str) -> Path:
        return self.shards_dir / shard

    def part_paths(self, shard: str) -> dict[str, Path]:
        return manifests.part_paths(self.manifests_dir, shard)


def shard_of_part(part: Path) -> str | None:
    """'part-train-000003.parquet' -> 'train/mfhq-train-000003.tar' (None for other files)."""
    stem = part.name.removeprefix("part-").removesuffix(".parquet")
    split, _, index = stem.partition("-")
    if split not in SPLITS or not index.isdigit():
        return None
    return shard_name(split, int(index))


def require_manifests(folders: BuildFolders) -> Path:
    """The manifests folder of a finished build, or BuildFolderError saying what to pass.
    For an output on a store, its manifests are brought into the mirror first."""
    from curation.build_folder.store import sync_down

    sync_down(folders.manifests_dir)
    if not folders.manifests_dir.is_dir():
        raise BuildFolderError(
            f"no manifests folder at {folders.manifests_dir}: pass the build's --output folder "
            "(the one holding manifests/ and shards/)")
    return folders.manifests_dir
