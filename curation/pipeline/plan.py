"""The build plan: enumerate every source, apply the takedown list, group clips into identities,
tie identities that share a source video, assign splits and shards.

Everything here runs on the driver and is deterministic: the same inputs and settings give the
same plan (and so the same shards), whatever the machine or the order the file system lists.

A plan has generations: the first build is generation 0; an incremental rerun
(`curation.pipeline.incremental`) keeps every unchanged identity in its shard and puts new and
changed identities into new shards of the next generation. `plan.json` records, per shard, its
generation and each identity's digest (what its clips are), which is what the next rerun
compares against.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from curation.records import ClipRecord, Reason, Status
from curation.takedowns import read_takedown, split_takedown
from mfhq_contract import sample_key, shard_name

HASH_SPACE = float(1 << 64)


@dataclass
class IdentityPlan:
    identity_id: str
    key: str
    split: str
    clips: list[ClipRecord]

    @property
    def sources(self) -> list[str]:
        return sorted({c.source for c in self.clips})

    @property
    def source_video_ids(self) -> list[str]:
        return sorted({c.source_video_id for c in self.clips})

    @property
    def digest(self) -> str:
        """What this identity's sample is made from: every clip and the fields the analysis
        reads (file, raw or processed, range, box hint). A changed digest means the identity
        gained or lost a clip, or a clip's video or range changed: it must be built again."""
        digest = hashlib.sha256()
        for c in self.clips:
            digest.update(repr((c.source, c.clip_id, c.video_path, c.is_raw, c.start_sec,
                                c.end_sec, c.start_frame, c.end_frame, c.bbox_hint,
                                c.bbox_hint_normalized)).encode("utf-8", "surrogatepass"))
        return digest.hexdigest()[:16]


@dataclass
class ShardSpec:
    """One unit of work: the identities of one output shard."""

    split: str
    index: int
    identities: list[IdentityPlan]
    # "source:clip_id" -> why it is not analysed (set by the runner after a worker died on it)
    poisoned: dict[str, str] = field(default_factory=dict)
    generation: int = 0                 # the plan generation that added this shard

    @property
    def name(self) -> str:
        """Path relative to the shards folder, e.g. 'train/mfhq-train-000000.tar'."""
        return shard_name(self.split, self.index)


@dataclass
class Plan:
    shards: list[ShardSpec]
    rejected_clips: list[ClipRecord]          # failed/skipped at enumeration (incl. takedown)
    n_clips: int
    n_identities_total: int                   # before --limit
    sources: list[tuple[str, str]] = field(default_factory=list)
    # Set when recorded takedowns were taken out of an enumerated plan: the fingerprint stays
    # the one of the sources as enumerated, so a resume is still the same build.
    base_fingerprint: str | None = None
    generation: int = 0
    # One record per incremental rerun that changed the plan (curation.pipeline.incremental).
    generations: list[dict] = field(default_factory=list)

    @property
    def identities(self) -> list[IdentityPlan]:
        return [ident for shard in self.shards for ident in shard.identities]

    def fingerprint(self) -> str:
        """A hash of the shard assignment and every clip in it (detects changed sources)."""
        if self.base_fingerprint:
            return self.base_fingerprint
        digest = hashlib.sha256()
        for shard in self.shards:
            digest.update(shard.name.encode())
            for ident in shard.identities:
                digest.update(b"\0" + ident.identity_id.encode())
                for clip in ident.clips:
                    digest.update(b"\1" + f"{clip.source}:{clip.clip_id}:{clip.video_path}".encode())
        return digest.hexdigest()[:16]

    def to_json(self) -> dict:
        return {
            "fingerprint": self.fingerprint(),
            "n_clips": self.n_clips,
            "n_identities_total": self.n_identities_total,
            "n_rejected_clips": len(self.rejected_clips),
            "generation": self.generation,
            "generations": self.generations,
            # digests: what each identity was built from (the next incremental rerun compares)
            "shards": [{"name": s.name, "split": s.split, "generation": s.generation,
                        "identities": [i.identity_id for i in s.identities],
                        "digests": {i.identity_id: i.digest for i in s.identities}}
                       for s in self.shards],
        }


# --- splits -------------------------------------------------------------------------------

def stable_fraction(text: str) -> float:
    """A stable number in [0, 1) from a string (sha1; never Python's salted hash())."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:16], 16) / HASH_SPACE


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # Deterministic root: the smaller id.
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo


def split_groups(identity_videos: dict[str, set[str]]) -> dict[str, str]:
    """{identity: its group's root}: identities connected through common source video ids are
    one group (union-find); a group's members must share a split."""
    uf = _UnionFind()
    for identity, videos in identity_videos.items():
        uf.find("i:" + identity)
        for video in videos:
            uf.union("i:" + identity, "v:" + video)
    return {identity: uf.find("i:" + identity) for identity in identity_videos}


def assign_splits(identity_videos: dict[str, set[str]], test_fraction: float) -> dict[str, str]:
    """Split of every identity; identities sharing a source video id share a split.

    The group of identities connected through common source video ids (`split_groups`) goes to
    'test' when the smallest stable hash of its source video ids is below `test_fraction`, so
    no source video and no identity is in both splits.
    """
    roots = split_groups(identity_videos)
    group_min: dict[str, float] = {}
    for identity, videos in identity_videos.items():
        h = min((stable_fraction(v) for v in videos), default=stable_fraction(identity))
        group_min[roots[identity]] = min(group_min.get(roots[identity], 1.0), h)
    return {identity: "test" if group_min[roots[identity]] < test_fraction else "train"
            for identity in identity_videos}


# --- shards -------------------------------------------------------------------------------

def make_shards(identities: list[IdentityPlan], per_shard: int) -> list[ShardSpec]:
    """Identities sorted by id within each split, cut into shards of `per_shard`."""
    shards = []
    for split in ("train", "test"):
        members = sorted((i for i in identities if i.split == split), key=lambda i: i.identity_id)
        for index, start in enumerate(range(0, len(members), per_shard)):
            shards.append(ShardSpec(split, index, members[start:start + per_shard]))
    return shards


def plan_from_records(records: Iterable[ClipRecord], *, takedown: set[str], test_fraction: float,
                      identities_per_shard: int, limit: int | None, group_fn=None) -> Plan:
    """The plan from already-enumerated clip records.

    `group_fn(ok_records) -> {identity_id: [records]}` is the sources' identity rule
    (default: by `ClipRecord.identity_id`).
    """
    records = list(records)
    ok = [r for r in records if r.ok]
    rejected = [r for r in records if not r.ok]
    ok, removed = split_takedown(ok, takedown)
    rejected.extend(removed)
    groups = (group_fn or group_by_identity_id)(ok)
    groups = {ident: sorted(clips, key=lambda c: (c.source, c.clip_id))
              for ident, clips in groups.items() if clips}
    grouped = {(c.source, c.clip_id) for clips in groups.values() for c in clips}
    rejected.extend(dataclasses.replace(
        c, status=Status.FAILED, reason=Reason.METADATA_ENTRY_INVALID.value,
        message="the identity rule gave this clip no identity") for c in ok
        if (c.source, c.clip_id) not in grouped)
    n_total = len(groups)
    ids = sorted(groups)
    if limit is not None:
        ids = ids[:limit]
    splits = assign_splits({i: {c.source_video_id or i for c in groups[i]} for i in ids},
                           test_fraction)
    identities = [IdentityPlan(i, sample_key(i), splits[i], groups[i]) for i in ids]
    rejected.sort(key=lambda c: (c.source, c.clip_id, c.reason or ""))
    return Plan(make_shards(identities, identities_per_shard), rejected, len(records), n_total)


def group_by_identity_id(records: Iterable[ClipRecord]) -> dict[str, list[ClipRecord]]:
    groups: dict[str, list[ClipRecord]] = defaultdict(list)
    for record in records:
        groups[record.identity_id].append(record)
    return dict(groups)


def enumerate_sources(sources: list[tuple[str, str]]) -> list[ClipRecord]:
    """All clip records of all sources (including failed ones), in source order."""
    from curation.sources import enumerate_source

    records: list[ClipRecord] = []
    for kind, root in sources:
        records.extend(enumerate_source(kind, root))   # a path or a store URL, as given
    return records


@dataclass
class PlanConfig:
    """How identities become splits and shards."""

    identities_per_shard: int = 256   # samples per tar shard
    test_fraction: float = 0.02       # share of source videos held out (stable hash of the id)
    limit: int | None = None          # only the first N identities (sorted by id): smoke runs


def build_plan(sources: list[tuple[str, str]], config: PlanConfig,
               takedown_file: str | None = None) -> Plan:
    """Enumerate the sources and plan the build (raises SourceError on unusable roots)."""
    from curation.sources import group_identities

    plan = plan_from_records(
        enumerate_sources(sources), takedown=read_takedown(takedown_file),
        test_fraction=config.test_fraction, identities_per_shard=config.identities_per_shard,
        limit=config.limit, group_fn=group_identities)
    plan.sources = list(sources)
    return plan


def plan_json_bytes(plan: Plan, config_hash: str, config: dict) -> bytes:
    body = {"config_hash": config_hash, "config": config, "plan": plan.to_json()}
    return json.dumps(body, sort_keys=True, indent=1).encode()
