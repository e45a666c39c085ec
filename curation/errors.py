"""The set-up errors of the curation commands.

A `SetupError` means "fix your inputs, model files or output folder": every command catches the
base class and prints its message (which says what to do) without a traceback, exit code 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

# One definition for both halves (the trainer and the face toolkit raise them too).
from mfhq_contract.errors import MissingWeightsError, SetupError

__all__ = ["BuildFolderError", "BuildRefused", "MissingWeightsError", "SchedulingError",
           "SetupError", "SourceError"]


class SourceError(SetupError):
    """A source root or kind cannot be read at all (problems with single entries are records)."""


class BuildRefused(SetupError):
    """The output folder holds a different build; the message says what to do."""


class BuildFolderError(SetupError):
    """A finished build's folder is missing or unreadable where a tool needs it."""


class SchedulingError(SetupError):
    """The cluster cannot run the build's tasks (no free CPUs, nodes that never join); the
    message says what the cluster has and what to change."""
