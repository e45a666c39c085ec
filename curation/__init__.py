"""MFHQ curation: face videos in, WebDataset shards and Parquet manifests out.

One folder per job:

    sources/      dataset adapters: metadata + files on disk -> ClipRecords (one registry)
    faces/        per-clip face analysis: decode, detect, landmarks, pose, align, quality,
                  identity embedding (the models; no Ray, no build folder)
    build/        the MFHQ build: config tree, plan, selection, shard assembly, tar writer and
                  the Ray runner
    audit/        tools that work on a finished build: report, verify, takedown
    democorpus/   the built-in demo corpus (real faces from our dependencies, all four layouts)

Shared by all of them: `records` (ClipRecord, the Reason and Status enums), `errors` (the
set-up errors the commands print without a traceback), `manifests` (the Parquet schemas) and
`build_folder` (the on-disk build: names, atomic writes, hashes, readers).
`curation` never imports `training`; the shard contract both sides share is `mfhq_contract`.
"""
