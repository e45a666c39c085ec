"""A takedown list the build cannot use is one message and exit 2, never a traceback.

The real command runs (`python -m curation.build_mfhq`, `python -m mfhq build`) with a list
that does not exist (a path, and a URL on a real S3 API: moto's server on 127.0.0.1) and with
one that is not UTF-8 text; the other ways a list is unusable are checked on `read_takedown`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _s3_helpers import s3_server  # noqa: F401 - the fixture

from curation.errors import SetupError
from curation.takedowns import TakedownListError, read_takedown

REPO = Path(__file__).resolve().parent.parent
BUCKET = "mfhq-takedown-lists"
FLAGS = ["--quality-model", "piqe", "--face-detector", "mediapipe", "--identity-model", "none",
         "--no-progress", "--num-cpus", "1"]
CLI_TIME_LIMIT_S = 300


def run_build(command: list[str], source: Path, takedown: str, output: Path,
              env: dict | None = None) -> subprocess.CompletedProcess:
    source.mkdir(parents=True, exist_ok=True)   # an empty folder source: only the list is wrong
    return subprocess.run([sys.executable, *command, "--source", f"folder={source}",
                           "--takedown", takedown, "--output", str(output), *FLAGS],
                          cwd=REPO, capture_output=True, text=True, timeout=CLI_TIME_LIMIT_S,
                          env=dict(os.environ, **(env or {})))


def assert_one_message(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_a_takedown_file_that_does_not_exist_ends_the_build_with_one_message_and_exit_2(
        tmp_path):
    missing = tmp_path / "no" / "such" / "takedown.txt"
    result = run_build(["-m", "curation.build_mfhq"], tmp_path / "src", str(missing), tmp_path / "out")
    assert_one_message(result, str(missing), "does not exist", "--takedown")


def test_a_takedown_url_that_is_missing_ends_mfhq_build_with_one_message_and_exit_2(
        s3_server, tmp_path):  # noqa: F811 - the fixture
    s3_server.bucket(BUCKET)
    url = f"s3://{BUCKET}/lists/takedown.txt"
    result = run_build(["-m", "mfhq", "build"], tmp_path / "src", url, tmp_path / "out",
                       env=s3_server.env)
    assert_one_message(result, url, "does not exist")


def test_a_takedown_file_that_is_not_text_ends_the_build_with_one_message_naming_the_line(
        tmp_path):
    listed = tmp_path / "takedown.txt"
    listed.write_bytes(b"yt:abc\nclip\xff\xfe1\n")
    result = run_build(["-m", "curation.build_mfhq"], tmp_path / "src", str(listed),
                       tmp_path / "out")
    assert_one_message(result, str(listed), "line 2 is not UTF-8")


def test_a_takedown_path_that_is_a_folder_or_binary_is_a_setup_error(tmp_path):
    with pytest.raises(TakedownListError, match="is a folder"):
        read_takedown(tmp_path)
    binary = tmp_path / "list.bin"
    binary.write_bytes(b"abc\n\0\x01\x02")
    with pytest.raises(SetupError, match="NUL byte on line 2"):
        read_takedown(binary)


def test_a_takedown_file_with_a_byte_order_mark_or_windows_lines_keeps_every_id(tmp_path):
    listed = tmp_path / "takedown.txt"
    listed.write_bytes("yt:abc\r\nfolder:Zoë # comment\r\n\r\n".encode("utf-8-sig"))
    assert read_takedown(listed) == {"yt:abc", "folder:Zoë"}
