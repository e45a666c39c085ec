"""The MFHQ build: configuration, planning, face selection, shard assembly and the Ray runner.

    config      one nested BuildConfig tree and the command line on top of it
    plan        enumerate sources -> identities -> splits -> shard specs
    selection   pose over-clustering and the choice of N faces
    shard       one shard: analyse clips, select, write tar + manifest parts (plain Python)
    tar_writer  deterministic, atomic WebDataset tars
    output      the output folder: refuse, overwrite, resume
    pool        the Ray actor pool that builds shards
    finalize    shards table, run record, summary
    runner      the whole build, start to end
"""
