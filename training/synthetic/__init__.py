"""Procedural multi-view identities with known ground truth, written as MFHQ shards.

One job per module: `identity` (who a synthetic person is, and the views they are shown in),
`render` (ray-casting a view: image, mask, part labels, landmarks), `shards` (MFHQ-format tars
and the CLI, `python -m training.synthetic OUT ...`). This package re-exports their public names,
so `from training import synthetic; synthetic.render(...)` keeps working.
"""

from training.synthetic.identity import (
    MAX_YAW,
    IdentityParams,
    Part,
    ViewParams,
    identity_params,
    spread_views,
)
from training.synthetic.render import VIEW_EXTENT, RenderedView, render, render_identity, rotation
from training.synthetic.shards import (
    SyntheticConfig,
    identity_record,
    main,
    parse_args,
    sample_members,
    shard_plan,
    synthetic_identity_id,
    write_shards,
)

__all__ = [
    "MAX_YAW", "VIEW_EXTENT", "IdentityParams", "Part", "RenderedView", "SyntheticConfig",
    "ViewParams", "identity_params", "identity_record", "main", "parse_args", "render",
    "render_identity", "rotation", "sample_members", "shard_plan", "spread_views",
    "synthetic_identity_id", "write_shards",
]
