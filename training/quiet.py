"""Our messages on the terminal, native library output in a log file.

mediapipe / TF Lite (FaceMesh, used by the evaluation's pose error) write lines such as
`W0000 ... inference_feedback_manager.cc` and `INFO: Created TensorFlow Lite XNNPACK delegate`
straight to file descriptor 2 from C++, where Python cannot filter them.

Contract: inside `library_output_to(log_file)`, descriptors 1 and 2 point at `log_file`
(appended), while `sys.stdout` and `sys.stderr` are new file objects on copies of the terminal's
descriptors, so everything Python prints (our rows, tables, progress bars, errors) still reaches
the terminal and only native output goes to the log. It does nothing when stdout/stderr are not
the process's descriptors 1 and 2 (pytest's capture, notebooks) or with `enabled=False`
(`--verbose`). The trainer keeps its own copy rather than importing the curation half's.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


def _on_fd(stream, fd: int) -> bool:
    try:
        return stream is not None and stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def library_output_to(log_file: str | Path, enabled: bool = True) -> Iterator[Path | None]:
    """See the module doc; yields the log file, or None when nothing was redirected."""
    if not enabled or not (_on_fd(sys.stdout, 1) and _on_fd(sys.stderr, 2)):
        yield None
        return
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    old = sys.stdout, sys.stderr
    new_out = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding=old[0].encoding,
                        errors="backslashreplace")
    new_err = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding=old[1].encoding,
                        errors="backslashreplace")
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout, sys.stderr = new_out, new_err
    try:
        yield log_file
    finally:
        new_out.flush()
        new_err.flush()
        sys.stdout, sys.stderr = old
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
        new_out.close()
        new_err.close()
