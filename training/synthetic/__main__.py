"""`python -m training.synthetic OUT ...` (see `training.synthetic.shards`)."""

from training.synthetic.shards import main

raise SystemExit(main())
