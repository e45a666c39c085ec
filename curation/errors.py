"""The set-up errors of the curation commands.

A `SetupError` means "fix your inputs, model files or output folder": every command catches the
base class and prints its message (which says what to do) without a traceback, exit code 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SetupError(Exception):
    """Inputs, models or the output folder cannot be used as given; the message says the fix."""


class MissingWeightsError(SetupError, FileNotFoundError):
    """A model file is not where it must be (it names the file, where to put it, and the
    offline alternative)."""


class SourceError(SetupError):
    """A source root or kind cannot be read at all (problems with single entries are records)."""


class BuildRefused(SetupError):
    """The output folder holds a different build; the message says what to do."""


class BuildFolderError(SetupError):
    """A finished build's folder is missing or unreadable where a tool needs it."""


class SchedulingError(SetupError):
    """The cluster cannot run the build's tasks (no free CPUs, nodes that never join); the
    message says what the cluster has and what to change."""
