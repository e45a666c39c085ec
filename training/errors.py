"""Errors a user can fix, and how the commands report them.

Contract: an `InputError` (or a `FileNotFoundError`, e.g. a missing weight file) raised by
`mfhq train|eval|encode` names the input and what to do in its message. `report_errors` turns it
into one line on stderr (`error: ...`) and exit code 2; with `--verbose` the traceback is shown
as well. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from mfhq_contract.terminal import terminal


class InputError(Exception):
    """A bad or missing input (file, URL, flag value); the message says what to do."""


USER_ERRORS = (InputError, FileNotFoundError)


def report_errors(run: Callable[[], int], verbose: bool) -> int:
    """`run()`'s exit code, or 2 after one line for a user error (the traceback with verbose)."""
    try:
        return run()
    except USER_ERRORS as exc:
        if verbose:
            traceback.print_exc()
        message = str(exc) if not isinstance(exc, FileNotFoundError) or not exc.filename \
            else f"{exc.strerror}: {exc.filename}"
        print(f"error: {message}", file=terminal())
        return 2
