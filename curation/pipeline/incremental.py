"""Builds that grow: a rerun against an existing build folder with the same settings.

Contract (`grow`): given the plan of the sources as they are now (`fresh`) and the plan the
folder recorded (`plan.json`), every identity is one of

    unchanged   in both, same digest (same clips, videos, ranges): stays in its shard, untouched
    changed     in both, another digest (it gained or lost clips, a video appeared or vanished),
                or listed for a retry (`--retry-failed`): leaves its old shard and is built
                into a new shard
    new         only in the sources now: built into a new shard
    gone        only in the recorded plan (all its clips vanished): leaves its old shard

New and changed identities form new shards of the next plan generation, numbered after the
highest existing index of their split; old shards keep their names and their remaining
identities in their order. The split of an identity already in the build never changes; a new
identity that shares a source video with built ones takes their split. Nothing changed: the
recorded plan comes back as it was (same generation), and the rerun is a plain resume.

The identities that leave an old shard are taken out of it by the one shard rewrite
(`curation.pipeline.removal`, run by the resume check in `curation.pipeline.output`), and each
generation is recorded in `plan.json` (`generations`) and `run.json`. Everything here is a pure
function of the two plans: a killed rerun plans the same again and ends in the same bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from curation import build_folder as bf
from curation.pipeline.plan import IdentityPlan, Plan, ShardSpec, split_groups
from curation.records import Reason, Status
from mfhq_contract import SPLITS

# A clip whose last outcome was one of these may succeed when analysed again (`--retry-failed`);
# every other failure (an unreadable video, no face) is a property of the input.
TRANSIENT_REASONS = frozenset({Reason.VIDEO_TIMEOUT, Reason.WORKER_CRASHED, Reason.INTERNAL_ERROR})


@dataclass
class Increment:
    """What an incremental rerun changes (also its record in plan.json and run.json)."""

    generation: int
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)     # changed because of --retry-failed
    gone: list[str] = field(default_factory=list)
    shards_added: list[str] = field(default_factory=list)
    # old shard -> the identities that leave it (changed, retried or gone)
    shards_rewritten: dict[str, list[str]] = field(default_factory=dict)
    # new identities tied to built identities of both splits (kept in the smaller id's split)
    split_conflicts: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.new or self.changed or self.retried or self.gone)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        """Human-readable lines: what the rerun does (the dry run and the summary)."""
        if self.empty:
            return ["no identity is new, changed or gone: a plain resume"]
        lines = [f"generation {self.generation}: identities new {len(self.new)}, changed "
                 f"{len(self.changed)}, retried {len(self.retried)}, gone {len(self.gone)}",
                 f"shards to write {len(self.shards_added)}, shards to rewrite "
                 f"{len(self.shards_rewritten)}"]
        for what, ids in (("new", self.new), ("changed", self.changed),
                          ("retried", self.retried), ("gone", self.gone)):
            lines += [f"  {what:<8} {i}" for i in ids[:20]]
            if len(ids) > 20:
                lines.append(f"  {what:<8} ... and {len(ids) - 20} more")
        lines += [f"  write    {s}" for s in self.shards_added]
        lines += [f"  rewrite  {s} (without {len(ids)} identities)"
                  for s, ids in self.shards_rewritten.items()]
        return lines


def has_digests(previous_plan: dict) -> bool:
    """Whether a recorded plan can be grown (plans written before incremental builds cannot)."""
    shards = previous_plan.get("shards", [])
    return all(isinstance(s.get("digests"), dict) for s in shards)


def shard_index(name: str) -> int:
    """'train/mfhq-train-000012.tar' -> 12."""
    return int(name.rsplit("-", 1)[1].split(".", 1)[0])


def grow(fresh: Plan, previous_plan: dict, identities_per_shard: int,
         retry: set[str] | frozenset[str] = frozenset()) -> tuple[Plan, Increment]:
    """The plan of this rerun from the fresh plan and the recorded one (module docstring)."""
    current = {i.identity_id: i for i in fresh.identities}
    before_gen = int(previous_plan.get("generation", 0))
    old: dict[str, tuple[str, str]] = {}          # identity -> (split, digest)
    for shard in previous_plan.get("shards", []):
        for identity in shard["identities"]:
            old[identity] = (shard["split"], shard["digests"].get(identity, ""))
    inc = Increment(generation=before_gen + 1)
    for identity in sorted(current):
        if identity not in old:
            inc.new.append(identity)
        elif current[identity].digest != old[identity][1]:
            inc.changed.append(identity)
        elif identity in retry:
            inc.retried.append(identity)
    inc.gone = sorted(set(old) - set(current))
    splits = _splits(current, old, inc)

    def placed(identity: str) -> IdentityPlan:
        return dataclasses.replace(current[identity], split=splits[identity])

    leaving = set(inc.changed) | set(inc.retried) | set(inc.gone)
    shards: list[ShardSpec] = []
    top = {split: -1 for split in SPLITS}
    for shard in previous_plan.get("shards", []):
        name, split = shard["name"], shard["split"]
        top[split] = max(top[split], shard_index(name))
        stays = [placed(i) for i in shard["identities"] if i not in leaving]
        left = [i for i in shard["identities"] if i in leaving]
        if left:
            inc.shards_rewritten[name] = left
        spec = ShardSpec(split, shard_index(name), stays,
                         generation=int(shard.get("generation", 0)))
        assert spec.name == name, f"{name} is not a shard name of this format"
        shards.append(spec)
    movers = [placed(i) for i in sorted(set(inc.new) | set(inc.changed) | set(inc.retried))]
    if inc.empty:
        inc.generation = before_gen
    for split in SPLITS:
        members = [i for i in movers if i.split == split]
        for k, start in enumerate(range(0, len(members), identities_per_shard)):
            spec = ShardSpec(split, top[split] + 1 + k, members[start:start + identities_per_shard],
                             generation=inc.generation)
            shards.append(spec)
            inc.shards_added.append(spec.name)
    generations = list(previous_plan.get("generations", []))
    if not inc.empty:
        generations.append(inc.to_json())
    plan = dataclasses.replace(fresh, shards=shards, generation=inc.generation,
                               generations=generations, base_fingerprint=None)
    return plan, inc


def _splits(current: dict[str, IdentityPlan], old: dict[str, tuple[str, str]],
            inc: Increment) -> dict[str, str]:
    """Split of every current identity: its recorded split if it was built; else the recorded
    split of the built identities it shares a source video with; else the fresh assignment."""
    roots = split_groups({i: {c.source_video_id or i for c in p.clips}
                          for i, p in current.items()})
    group_splits: dict[str, dict[str, str]] = {}   # root -> {built identity: split}
    for identity, root in roots.items():
        if identity in old:
            group_splits.setdefault(root, {})[identity] = old[identity][0]
    splits = {}
    for identity, plan in current.items():
        if identity in old:
            splits[identity] = old[identity][0]
            continue
        built = group_splits.get(roots[identity])
        if not built:
            splits[identity] = plan.split
            continue
        if len(set(built.values())) > 1:
            inc.split_conflicts.append(identity)
        splits[identity] = built[min(built)]
    return splits


def retry_candidates(manifests_dir: Path) -> set[str]:
    """Identities of the build with a clip whose last recorded outcome is a transient failure
    (`TRANSIENT_REASONS`): what `--retry-failed` analyses again. Clips rejected at enumeration
    are not among them (their outcome is a property of the metadata or the files)."""
    table = bf.read_manifest_table(manifests_dir, "clips",
                                   columns=["identity_id", "status", "reason", "stage"])
    ids = set()
    for identity, status, reason, stage in zip(*(table.column(c).to_pylist() for c in
                                                 ("identity_id", "status", "reason", "stage")),
                                               strict=True):
        if (identity and status == Status.FAILED and reason in TRANSIENT_REASONS
                and stage != "enumeration"):
            ids.add(identity)
    return ids
