"""The duplicate pass across identities at MFHQ's size: driver time and peak memory.

    python bench/duplicates_scale.py                        # 134,000 identities (the paper's)
    python bench/duplicates_scale.py --identities 20000 --baseline-identities 2000

Writes the identities manifest of a finished build (256 identities per shard part, ArcFace-size
512-d unit means, a few planted duplicates in one split) through the real writers, then runs the
real pass (`resolve_duplicates`: read the means, exact blocked search, groups, the recorded
`duplicate_group`) in a fresh process each, and prints its wall time and peak RSS.

Baseline, in the same run: the pass as it was before `mean_embedding` (every face embedding of
the faces manifest read into the driver and averaged per identity), at `--baseline-identities`
with `--faces-per-identity` embedded faces each, beside ours at the same size; the last lines
project both to the full size (the baseline's memory grows with the faces, ours with the
identities).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))     # appended: a PYTHONPATH checkout wins

PER_SHARD = 256
DIM = 512
PLANTED = 40


def write_manifests(output: Path, n: int, faces_per_identity: int = 0, seed: int = 0) -> None:
    """Identities parts (and, for the baseline, faces parts) of a finished build of n identities."""
    from curation import build_folder as bf
    from curation import manifests
    from mfhq_contract import shard_name
    from mfhq_faces.embedders import normalise_rows

    rng = np.random.default_rng(seed)
    means = normalise_rows(rng.standard_normal((n, DIM)).astype(np.float32))
    # duplicates: another id's mean seen through other faces, in the same split (train), so the
    # pass records groups and removes nothing
    sources = rng.choice(n, size=PLANTED, replace=False)
    targets = rng.choice(np.setdiff1d(np.arange(n), sources), size=PLANTED, replace=False)
    means[targets] = normalise_rows(means[sources] + 0.02 * rng.standard_normal(
        (PLANTED, DIM)).astype(np.float32) / np.sqrt(DIM))
    folder = bf.BuildFolder(str(output))
    for index, start in enumerate(range(0, n, PER_SHARD)):
        shard = shard_name("train", index)
        rows, faces = [], []
        for i in range(start, min(n, start + PER_SHARD)):
            ident = f"folder:p{i:07d}"
            rows.append({"identity_id": ident, "key": f"p{i:07d}", "split": "train",
                         "shard": shard, "status": "kept", "n_persons": 1,
                         "mean_embedding": None if faces_per_identity else means[i].tolist()})
            for _ in range(faces_per_identity):   # faces whose mean is this identity's
                faces.append({"identity_id": ident, "clip_id": "c", "source": "folder",
                              "frame_index": 0, "status": "candidate", "selected": False,
                              "reason": "not_selected", "embedding": means[i].tolist()})
        paths = folder.part_paths(shard)
        bf.write_parquet_atomic(manifests.to_table("identities", rows), paths["identities"])
        if faces:
            bf.write_parquet_atomic(manifests.to_table("faces", faces), paths["faces"])


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    """This process's peak resident memory (MB): VmHWM, which starts afresh at exec (getrusage's
    ru_maxrss does not: a child inherits its parent's peak at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(output: str) -> dict:
    """One pass in this (fresh) process: seconds, groups, peak RSS and the pass's own growth
    over the process after its imports."""
    from curation import build_folder as bf
    from curation.faces.identity import IdentityConfig
    from curation.pipeline.identity_check import resolve_duplicates

    class Config:
        identity = IdentityConfig(model="arcface")

    base = rss_mb()
    started = time.perf_counter()
    result = resolve_duplicates(bf.BuildFolder(output), Config())
    seconds = time.perf_counter() - started
    return {"identities": result.identities, "groups": len(result.groups),
            "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb(), 1),
            "pass_mb": round(peak_mb() - base, 1)}


def run_child(output: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", str(output)], check=True,
                          capture_output=True, text=True, timeout=3600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_pass(output: Path) -> dict:
    """The pre-`mean_embedding` pass: every face embedding read, averaged per identity."""
    code = f"""
import json, sys, time
sys.path.append({str(REPO)!r})
sys.path.append({str(Path(__file__).parent)!r})
from duplicates_scale import peak_mb, rss_mb
from curation import build_folder as bf
from curation.pipeline.identity_check import duplicate_pairs, group_pairs, identity_means
base = rss_mb()
t = time.perf_counter()
faces = bf.read_manifest({str(output / 'manifests')!r}, "faces", ["identity_id", "embedding", "reason"])
ids, means = identity_means(faces)
groups = group_pairs(len(ids), duplicate_pairs(means, 0.5))
print(json.dumps({{"identities": len(ids), "groups": len(groups),
                  "seconds": round(time.perf_counter() - t, 2),
                  "peak_rss_mb": round(peak_mb(), 1), "pass_mb": round(peak_mb() - base, 1)}}))
"""
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, timeout=3600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=134_000)
    parser.add_argument("--baseline-identities", type=int, default=4_000)
    parser.add_argument("--faces-per-identity", type=int, default=16,
                        help="embedded faces per identity in the baseline's faces manifest "
                             "(the build embeds up to 16 per clip track)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.child:
        print(json.dumps(child(ns.child)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = ns.baseline_identities
        olds = []
        for size in (n, 2 * n):   # two sizes: the growth per identity, without import costs
            write_manifests(tmp / f"old{size}", size, ns.faces_per_identity)
            olds.append(baseline_pass(tmp / f"old{size}"))
        write_manifests(tmp / "new", n)
        new_small = run_child(tmp / "new")
        old = olds[0]
        print(f"at {n:,} identities: baseline (faces manifest, {ns.faces_per_identity} faces "
              f"each) {old['seconds']} s, the pass's memory {old['pass_mb']} MB (process peak "
              f"{old['peak_rss_mb']} MB); ours (mean_embedding) {new_small['seconds']} s, "
              f"{new_small['pass_mb']} MB (peak {new_small['peak_rss_mb']} MB); groups "
              f"{old['groups']} / {new_small['groups']}")
        per_identity_mb = (olds[1]["pass_mb"] - olds[0]["pass_mb"]) / n
        per_identity_s = (olds[1]["seconds"] - olds[0]["seconds"]) / n
        started = time.perf_counter()
        write_manifests(tmp / "full", ns.identities)
        print(f"wrote {ns.identities:,} identities in {time.perf_counter() - started:.1f} s")
        ours = run_child(tmp / "full")
        print(f"at {ns.identities:,} identities: ours {ours['seconds']} s, the pass's memory "
              f"{ours['pass_mb']} MB, driver process peak {ours['peak_rss_mb']} MB, "
              f"{ours['groups']} groups of {PLANTED} planted")
        # the baseline holds every face embedding in pandas: its memory grows with the faces
        print(f"baseline projected to {ns.identities:,} identities from its growth between "
              f"{n:,} and {2 * n:,}: +{per_identity_mb * 1024:.1f} kB and "
              f"{per_identity_s * 1000:.2f} ms per identity, i.e. "
              f"~{olds[0]['peak_rss_mb'] + per_identity_mb * (ns.identities - n):,.0f} MB peak "
              f"and ~{per_identity_s * ns.identities:,.0f} s before the search; ours measured: "
              f"{ours['peak_rss_mb']} MB peak, {ours['seconds']} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
