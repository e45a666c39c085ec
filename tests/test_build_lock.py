"""One build per output (issue 24 (k)): the output lock between real processes.

The holders are real Python processes that take the lock through `BuildLock.acquire`, as a
build's driver does; they are stopped with SIGKILL (a killed build) or SIGSTOP (a frozen one
whose heartbeat cannot run). Nothing is patched. The whole-build cases are in
test_build_lock_builds.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.build_folder import BuildLock, OutputLocked
from curation.build_folder.lock import LOCK_FILE, LockHolder

REPO = Path(__file__).resolve().parent.parent

# Takes the lock, says so, then checks it every 0.1 s until told to stop (stdin closes) or it is
# lost; prints what happened and exits 0 (released) or 3 (lost).
HOLDER = """
import sys, time
from curation.build_folder import BuildLock, LockLost
lock = BuildLock.acquire(sys.argv[1], "the test output", lease_s=float(sys.argv[2]))
print("held", flush=True)
try:
    while True:
        lock.check()
        time.sleep(0.1)
        if sys.argv[3] == "once":
            sys.stdin.read()
            lock.release()
            print("released", flush=True)
            sys.exit(0)
except LockLost as err:
    print("lost:", err, flush=True)
    sys.exit(3)
"""


def _holder(manifests: Path, lease_s: float, mode: str = "loop") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(manifests), str(lease_s), mode],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "held"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_a_second_build_is_refused_with_one_message_naming_the_holder(tmp_path):
    holder = _holder(tmp_path / "manifests", lease_s=60.0)
    try:
        with pytest.raises(OutputLocked) as refused:
            BuildLock.acquire(tmp_path / "manifests", str(tmp_path))
        message = str(refused.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, started " in message
        assert str(tmp_path) in message and "\n" not in message
    finally:
        _stop(holder)


def test_a_lock_left_by_a_sigkilled_holder_on_this_machine_is_taken_over_at_once(tmp_path):
    holder = _holder(tmp_path / "manifests", lease_s=600.0)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (tmp_path / "manifests" / LOCK_FILE).exists(), "a killed holder releases nothing"
    started = time.monotonic()
    with BuildLock.acquire(tmp_path / "manifests", lease_s=600.0) as lock:
        assert time.monotonic() - started < 5.0, "waited for the lease of a dead process"
        assert LockHolder.from_bytes((tmp_path / "manifests" / LOCK_FILE).read_bytes()
                                     ).token == lock.holder.token
    assert not (tmp_path / "manifests" / LOCK_FILE).exists()


def test_a_killed_holder_its_parent_has_not_reaped_yet_is_gone_too(tmp_path):
    holder = _holder(tmp_path / "manifests", lease_s=600.0)
    holder.send_signal(signal.SIGKILL)
    stat = Path(f"/proc/{holder.pid}/stat")
    deadline = time.monotonic() + 30
    while stat.read_text().split(") ")[1][0] != "Z":      # a zombie until we wait for it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        BuildLock.acquire(tmp_path / "manifests", lease_s=600.0).release()
    finally:
        holder.wait(timeout=30)


def test_a_frozen_holder_keeps_the_lock_for_its_lease_then_loses_it_and_stops(tmp_path):
    lease = 2.0
    holder = _holder(tmp_path / "manifests", lease_s=lease)
    try:
        time.sleep(lease)              # renewed meanwhile: still held after a whole lease
        with pytest.raises(OutputLocked):
            BuildLock.acquire(tmp_path / "manifests", lease_s=lease)
        holder.send_signal(signal.SIGSTOP)   # alive, but its heartbeat cannot run
        deadline = time.monotonic() + 30 * lease
        while True:
            try:
                lock = BuildLock.acquire(tmp_path / "manifests", lease_s=lease)
                break
            except OutputLocked:
                assert time.monotonic() < deadline, "the lease never expired"
                time.sleep(0.2)
        try:
            holder.send_signal(signal.SIGCONT)
            out, _ = holder.communicate(timeout=30 * lease)
            assert holder.returncode == 3, out
            assert f"lost its lock of the output the test output to pid {os.getpid()}" in out
            lock.check()               # the new holder keeps it
        finally:
            lock.release()
    finally:
        holder.send_signal(signal.SIGCONT)
        _stop(holder)


def test_release_gives_the_lock_back_and_the_next_build_takes_it(tmp_path):
    holder = _holder(tmp_path / "manifests", lease_s=60.0, mode="once")
    out, _ = holder.communicate("", timeout=30)
    assert out.strip() == "released" and holder.returncode == 0
    with BuildLock.acquire(tmp_path / "manifests"):
        pass
    assert not any((tmp_path / "manifests").iterdir())


def test_a_holder_never_removes_a_lock_that_is_not_its_own(tmp_path):
    first = BuildLock.acquire(tmp_path / "manifests", lease_s=0.5)
    first._stop.set()                  # its heartbeat stops, as in a stalled process
    time.sleep(1.0)
    second = BuildLock.acquire(tmp_path / "manifests", lease_s=60.0)
    first.release()                    # must leave the second's lock alone
    assert LockHolder.from_bytes((tmp_path / "manifests" / LOCK_FILE).read_bytes()
                                 ).token == second.holder.token
    second.release()


def test_a_build_whose_manifests_record_an_internal_error_does_not_exit_0():
    from curation.executor.runner import EXIT_INTERNAL_ERRORS, EXIT_OK, exit_code
    from curation.pipeline.finalize import BuildSummary

    def summary(clips: dict, identities: dict) -> BuildSummary:
        return BuildSummary("s", "m", "h", 1, 1, 0, [], {
            "clips_not_ok_by_reason": clips, "identities_dropped_by_reason": identities}, {})

    assert exit_code(summary({"no_face": 2}, {"too_few_faces": 1})) == EXIT_OK
    assert exit_code(summary({"internal_error": 1}, {})) == EXIT_INTERNAL_ERRORS
    assert exit_code(summary({}, {"internal_error": 1})) == EXIT_INTERNAL_ERRORS


def test_a_takedown_is_refused_while_a_build_holds_the_output(tmp_path, capsys):
    """A takedown rewrites shards and manifests: it takes the same lock as a build."""
    from curation.audit import takedown

    (tmp_path / "manifests").mkdir()
    listing = tmp_path / "takedown.txt"
    listing.write_text("yt:M2Ohb0FAaJU\n")
    holder = _holder(tmp_path / "manifests", lease_s=60.0)
    try:
        assert takedown.main([str(listing), "--output", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "Traceback" not in err
    finally:
        _stop(holder)
    assert takedown.main([str(listing), "--output", str(tmp_path)]) == 0   # free again
    assert not (tmp_path / "manifests" / LOCK_FILE).exists()
