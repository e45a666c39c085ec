"""The build on Ray: how `curation.pipeline`'s stages run on one machine or a cluster.

    pool          analysis tasks per clip, assembly tasks per shard, time limits, retries
    quality_pool  the quality actors (one per GPU, CPU actors where there are none)
    runner        the whole build, start to end (`mfhq build`)

Only this package imports Ray; the stages it runs never import it.
"""
