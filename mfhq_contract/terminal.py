"""Our output on the terminal, every library's output in a log file.

The libraries we call write to the process's file descriptors 1 and 2 from native code
(mediapipe / TF Lite `W0000 ...` and `INFO: Created TensorFlow Lite XNNPACK delegate`, ffmpeg's
decoder errors on broken videos, onnxruntime) and through Python logging and warnings (Ray's
start-up, pyiqa, scikit-learn). A newcomer's terminal should show our progress bars, our
warnings and our summary, and nothing else.

`quiet_terminal(log_file)` (for a command's main process) points descriptors 1 and 2 at the log
file, so everything written below Python and everything Python writes to `sys.stderr` (logging
handlers, `warnings`, library messages) goes to the log, while `sys.stdout` gets a new file
object on a copy of the terminal's descriptor: our prints and summaries reach the terminal.
Our own progress bars and error messages write to `terminal()`, the terminal's stderr. It does
nothing when stdout/stderr are not the real descriptors 1 and 2 (under pytest's capture, in a
notebook), and nothing with `enabled=False` (`--verbose`).

`send_process_output_to(log_dir)` (for Ray workers) sends all of a worker process's output to
`log_dir/worker-<host>-<pid>.log`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _is_real_stream(stream, fd: int) -> bool:
    try:
        return stream is not None and stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


_terminal_err: TextIO | None = None


def terminal() -> TextIO:
    """Where our progress bars and messages go: the terminal's stderr, also inside
    `quiet_terminal` (where `sys.stderr` leads to the log file)."""
    return _terminal_err if _terminal_err is not None else sys.stderr


@contextlib.contextmanager
def quiet_terminal(log_file: Path, enabled: bool = True) -> Iterator[Path | None]:
    """Within the block, native and library output goes to `log_file` (appended); yields the
    log file, or None when nothing was redirected."""
    global _terminal_err
    if (not enabled or _terminal_err is not None
            or not (_is_real_stream(sys.stdout, 1) and _is_real_stream(sys.stderr, 2))):
        yield None
        return
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    old_stdout = sys.stdout
    terminal_out = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding=sys.stdout.encoding,
                             errors="backslashreplace")
    terminal_err = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding=sys.stderr.encoding,
                             errors="backslashreplace")
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout, _terminal_err = terminal_out, terminal_err
    logging.captureWarnings(True)
    try:
        yield log_file
    finally:
        logging.captureWarnings(False)
        for stream in (terminal_out, terminal_err, sys.stderr):
            stream.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        sys.stdout, _terminal_err = old_stdout, None
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        terminal_out.close()
        terminal_err.close()


def send_process_output_to(log_dir: Path) -> Path:
    """Send this whole process's output (descriptors 1 and 2, Python logging) to
    `log_dir/worker-<host>-<pid>.log`; for worker processes that own no terminal."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"worker-{socket.gethostname()}-{os.getpid()}.log"
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, force=True)
    return path
