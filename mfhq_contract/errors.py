"""The errors both halves raise for a person to fix (not a bug): one line, exit code 2.

A `SetupError` means "fix your inputs, model files or output": every command catches it and
prints its message (which says what to do) without a traceback; anything else is a bug and
keeps its traceback. `MissingWeightsError` names the model file, where to put it, and the
offline alternative.
"""

from __future__ import annotations


class SetupError(Exception):
    """Inputs, models or outputs cannot be used as given; the message says the fix."""


class MissingWeightsError(SetupError, FileNotFoundError):
    """A model file is not where it must be (it names the file, where to put it, and the
    offline alternative)."""
