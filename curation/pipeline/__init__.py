"""The MFHQ build's stages, plain Python (no Ray): each is testable on its own.

    config          one nested BuildConfig tree and the command line on top of it
    models          the model files, checked on the driver before any work
    plan            enumerate sources -> identities -> splits -> shard specs
    analyze         one clip: decode, detect, landmarks, pose, crops -> a work file
    identity_check  one person per identity; the same person across identities
    scoring         face quality in fixed requests (same scores whoever answers)
    selection       pose over-clustering and the choice of N faces
    shard           one shard: select, write tar + manifest parts
    tar_writer      deterministic, atomic WebDataset tars
    removal         identities out of finished shards (takedown, duplicates, supersede)
    output          the output folder: refuse, overwrite, resume
    incremental     what a rerun over grown sources must build
    finalize        shards table, run record, summary

How they run on a cluster (tasks, actors, time limits, retries) is `curation.executor`.
"""
