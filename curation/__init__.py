"""MFHQ curation."""
