"""The `mfhq` command and the demo: the only code that imports both curation and training."""
