"""One build per output, with whole builds (issue 24 (k)): a second build started while a live
build holds the output is refused at once with one message naming the holder and exit code 2;
`mfhq verify` (read-only) still runs beside it; once the holder is SIGKILLed (driver and every
Ray process), the next build takes the lock over without waiting for its lease and finishes a
clean build. Three demo identities, one per shard, on 2 CPUs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from _reliability_helpers import (
    REPO,
    kill_build,
    small_build_args,
    start_build,
    temporaries,
    wait_for,
)

pytestmark = pytest.mark.slow



def _mfhq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mfhq", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.timeout(1500)
def test_a_second_build_on_a_held_output_is_refused_and_a_killed_holder_is_taken_over(
        demo_corpus, tmp_path):
    from curation.audit.verify import VerifyConfig, verify_build
    from curation.build_folder import read_manifest
    from curation.build_folder.lock import LOCK_FILE

    paths, _ = demo_corpus
    output = tmp_path / "build"
    args = small_build_args(paths, output)
    lock = output / "manifests" / LOCK_FILE
    holder = start_build(args, tmp_path / "first.log")
    try:
        wait_for(holder, lambda: lock.exists() and (output / "manifests" / "plan.json").exists(),
                 "the first build holding the output")
        second = subprocess.run([sys.executable, "-m", "curation.build_mfhq", *args], cwd=REPO,
                                capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert holder.poll() is None, "the first build ended before the second was refused"
        assert second.returncode == 2, second.stderr[-3000:]
        errors = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "another build is running on the output" in errors[0]
        assert f"pid {holder.pid} on host {socket.gethostname()}, started " in errors[0]
        assert "Traceback" not in second.stdout + second.stderr

        # Read-only commands never take the lock: verify runs (and judges) beside the build.
        checked = _mfhq("verify", "--output", str(output), "--no-images")
        assert checked.returncode in (0, 1), checked.stderr[-3000:]
        assert "another build" not in checked.stdout + checked.stderr
    finally:
        kill_build(holder)
    assert lock.exists(), "a SIGKILLed build releases nothing"

    # Same machine, holder gone: taken over at once, and the work is resumed to a clean build.
    third = start_build(args, tmp_path / "third.log")
    assert third.wait(timeout=900) == 0, (tmp_path / "third.log").read_text()[-3000:]
    assert not lock.exists() and not temporaries(output)
    assert verify_build(VerifyConfig(output=str(output), progress=False)) == []
    clips = read_manifest(output / "manifests", "clips")
    assert "internal_error" not in set(clips["reason"].dropna())
    assert (read_manifest(output / "manifests", "identities")["status"] == "kept").any()
