"""A full output (issue 24 (j)): a build onto a real 1 MB tmpfs stops with one message that names
the output and says a rerun keeps what is finished (exit code 3, no traceback), leaves no
temporary file, and records no clip as failed because of the disk; after the filesystem is
grown, rerunning the same command ends byte-identical to a build that never ran out of space.

The small filesystem is real (`mount -t tmpfs -o size=1m`, grown with `remount`); the test is
skipped, saying why, where this process may not mount. Three demo identities, one per shard.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _reliability_helpers import (
    manifest_rows,
    shard_hashes,
    small_build_args,
    start_build,
    temporaries,
)

pytestmark = pytest.mark.slow



def _mount(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs at tmp_path/disk; unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _mount(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a 1 MB tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{mounted.stderr.strip()}")
    yield disk
    _mount(["umount", "-l", str(disk)])


def _run(args: list[str], log: Path) -> int:
    return start_build(args, log).wait(timeout=900)


@pytest.mark.timeout(2400)
def test_a_build_onto_a_full_disk_stops_with_one_message_and_a_rerun_with_room_ends_the_same(
        demo_corpus, small_build, tiny_disk, tmp_path):
    from curation.audit.verify import VerifyConfig, verify_build
    from curation.build_folder import is_output_full, read_manifest

    paths, _ = demo_corpus
    _, baseline_hashes, baseline_rows = small_build

    output = tiny_disk / "build"
    args = small_build_args(paths, output)
    log = tmp_path / "full.log"
    assert _run(args, log) == 3, log.read_text()[-3000:]
    said = log.read_text()
    errors = [line for line in said.splitlines() if "error:" in line]
    assert len(errors) == 1, said[-3000:]
    assert f"the output {output} is full" in errors[0] and "rerun the same command" in errors[0]
    assert "Traceback" not in said
    assert not temporaries(output)
    # No clip outcome on disk blames a clip for the disk, and no such shard is left finished.
    clips = read_manifest(output / "manifests", "clips")
    assert not any(is_output_full(m or "") for m in clips["message"])
    assert not list((output / "shards").glob("*/*.tar"))

    grown = _mount(["mount", "-o", "remount,size=512m", str(tiny_disk)])
    assert grown.returncode == 0, grown.stderr
    log = tmp_path / "rerun.log"
    assert _run(args, log) == 0, log.read_text()[-3000:]
    assert shard_hashes(output) == baseline_hashes
    assert manifest_rows(output) == baseline_rows
    assert not temporaries(output)
    assert verify_build(VerifyConfig(output=str(output), progress=False)) == []
