"""Resume check at many shards: the O(shards) size check against hashing every tar.

    python bench/resume_scale.py                     # 500 finished shards of ~1 MB
    python bench/resume_scale.py --shards 100 --shard-mb 4

Writes a finished build of synthetic shards through the real writers (`stage_shard`,
`write_shard_parts`, `commit_shard`; samples of real JPEG/PNG/JSON encoders, random pixels so
the bytes do not compress), then times, in the same run on the same files:

* ours: `resume_check` (Parquet footers, the identities column, the tar's size);
* baseline: `resume_check(full_hash=True)`, the check before issue 15 (and `--verify-finished`):
  every tar hashed.

The files were just written, so the baseline reads them from the page cache: its figure is a
lower bound (a cold disk or a network filesystem is slower). The last line projects both to
MFHQ's size. `write_finished_build` is also what the tests use to make such a build.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))     # appended: a PYTHONPATH checkout wins

# MFHQ at full size (README, Performance): about 200k identities, 256 per shard, 8 crops of
# 512 px (~60 kB as JPEG) + 8 masks each: ~800 shards of ~130 MB.
FULL_SHARDS = 800
FULL_SHARD_MB = 130.0


def write_finished_build(output: Path, n_shards: int, per_shard: int = 4,
                         shard_bytes: int = 1 << 20, seed: int = 0):
    """A finished build folder of `n_shards` synthetic shards; returns (BuildFolder, Plan)."""
    from curation import build_folder as bf
    from curation.pipeline.plan import plan_from_records
    from curation.pipeline.tar_writer import (
        Sample,
        commit_shard,
        encode_jpeg,
        encode_json,
        encode_png_mask,
        stage_shard,
    )
    from curation.records import ClipRecord, Status
    from mfhq_contract import JSON_EXT, image_ext, mask_ext

    folder = bf.BuildFolder(str(Path(output).resolve()))
    records = [ClipRecord(source="folder", clip_id=f"p{i:06d}_0", original_clip_id=f"p{i:06d}_0",
                          identity_id=f"folder:p{i:06d}", source_video_id=f"folder:p{i:06d}",
                          video_path=f"/data/p{i:06d}/0.mp4")
               for i in range(n_shards * per_shard)]
    plan = plan_from_records(records, takedown=set(), test_fraction=0.0,
                             identities_per_shard=per_shard, limit=None)
    rng = np.random.default_rng(seed)
    # one crop size whose random-pixel JPEG makes the shard about `shard_bytes`
    side = max(16, int((shard_bytes / per_shard / 8 / 1.2) ** 0.5))
    crops = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(8)]
    mask = np.full((side, side), 255, dtype=np.uint8)
    jpegs = [encode_jpeg(c) for c in crops]
    png = encode_png_mask(mask)
    for spec in plan.shards:
        samples, rows = [], {"clips": [], "faces": [], "identities": []}
        for ident in spec.identities:
            members = [(JSON_EXT, encode_json({"key": ident.key, "identity_id": ident.identity_id,
                                               "split": ident.split}))]
            members += [(image_ext(k), jpegs[k]) for k in range(8)]
            members += [(mask_ext(k), png) for k in range(8)]
            samples.append(Sample(ident.key, members))
            clip = ident.clips[0]
            rows["clips"].append({"source": clip.source, "clip_id": clip.clip_id,
                                  "identity_id": ident.identity_id, "status": Status.OK,
                                  "stage": "analysis", "split": spec.split, "shard": spec.name})
            rows["identities"].append({"identity_id": ident.identity_id, "key": ident.key,
                                       "split": spec.split, "shard": spec.name,
                                       "status": Status.KEPT})
        staged = stage_shard(folder.tar_path(spec.name), samples)
        bf.write_shard_parts(folder, spec.name, staged.sha256, rows)
        commit_shard(staged)
    return folder, plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=500)
    parser.add_argument("--shard-mb", type=float, default=1.0, help="size of each shard")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)

    from curation.pipeline.output import resume_check

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        t = time.perf_counter()
        folder, plan = write_finished_build(Path(tmp), args.shards,
                                            shard_bytes=int(args.shard_mb * (1 << 20)))
        written = time.perf_counter() - t
        total_mb = sum(folder.tar_path(s.name).stat().st_size for s in plan.shards) / (1 << 20)
        timings, cpu = {}, {}
        for label, full in (("ours (size + parts)", False), ("baseline (hash every tar)", True)):
            t, c = time.perf_counter(), time.process_time()
            check = resume_check(folder, plan, full_hash=full)
            timings[label], cpu[label] = time.perf_counter() - t, time.process_time() - c
            assert not check.todo and not check.rewrites, "every shard should be finished"
    # CPU seconds: both checks are single-threaded and CPU-bound (the tars are in the page
    # cache), so CPU time is what an idle core would take, whatever the machine's load.
    ours, base = cpu["ours (size + parts)"], cpu["baseline (hash every tar)"]
    hash_mb_s = total_mb / max(base - ours, 1e-9)
    print(f"{args.shards} finished shards, {total_mb:.0f} MB in all (written in {written:.1f} s)")
    print(f"{'check':<28} {'wall s':>8} {'CPU s':>8} {'CPU ms/shard':>13}")
    for label in timings:
        print(f"{label:<28} {timings[label]:>8.3f} {cpu[label]:>8.3f} "
              f"{1000 * cpu[label] / args.shards:>13.2f}")
    print(f"ratio baseline / ours (CPU): {base / ours:.1f}x; hashing ran at {hash_mb_s:.0f} MB/s "
          "per core (page cache)")
    full_ours = ours / args.shards * FULL_SHARDS
    full_base = full_ours + FULL_SHARDS * FULL_SHARD_MB / hash_mb_s
    print(f"projected to MFHQ ({FULL_SHARDS} shards of {FULL_SHARD_MB:.0f} MB): ours "
          f"{full_ours:.1f} s, baseline {full_base:.0f} s at that hash speed (a cold disk "
          "reads slower than the page cache: the baseline's real figure is higher)")
    print(f"FIGURES resume_shards={args.shards} ours_cpu_s={ours:.3f} baseline_cpu_s={base:.3f} "
          f"ratio={base / ours:.1f} projected_ours_s={full_ours:.1f} "
          f"projected_baseline_s={full_base:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
