"""Tools that read or rewrite a finished build: `report` (HTML for auditors), `verify` (shards
against manifests, byte by byte) and `takedown` (remove ids from shards and manifests)."""
