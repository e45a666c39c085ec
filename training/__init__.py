"""Omni-ID trainer."""
