"""`mfhq train|eval|encode` as a new user meets them: a missing checkpoint, a shard URL that
matches nothing, a file that is not a shard and an unreadable image each end in one line that
names the input and what to do, exit code 2, and no traceback (the traceback with --verbose)."""

from __future__ import annotations

import pytest

from mfhq.cli import main as mfhq


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_eval_of_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "runs" / "checkpoint-00000100.pt"
    shard = tmp_path / "x.tar"
    shard.write_bytes(b"\0" * 257 + b"ustar" + b"\0" * 250)
    assert mfhq(["eval", "--checkpoint", str(missing), "--shards", str(shard)]) == 2
    line = one_error_line(capsys)
    assert str(missing) in line and "mfhq train" in line


def test_train_on_a_shard_pattern_that_matches_nothing_is_one_line_and_exit_2(tmp_path, capsys):
    pattern = str(tmp_path / "shards" / "mfhq-train-{000000..000009}.tar")
    assert mfhq(["train", "--shards", pattern, "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "matches no file" in line and "mfhq-train-000000.tar" in line


def test_train_on_a_file_that_is_not_a_shard_is_one_line_and_exit_2(tmp_path, capsys):
    notes = tmp_path / "notes.tar"
    notes.write_text("these are my notes, not a tar file\n" * 40)
    assert mfhq(["train", "--shards", str(notes), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert str(notes) in line and "not a shard" in line


def test_encode_of_an_unreadable_image_is_one_line_and_exit_2(tmp_path, capsys):
    from _shard_helpers import write_shards

    from training.config import tiny
    from training.train import train

    config = tiny()
    config.shards = str(write_shards(tmp_path / "shards", per_shard=2, size=32)[0])
    config.out, config.max_steps, config.data.image_size, config.data.n_tgt = (
        str(tmp_path / "run"), 1, 32, 2)
    summary = train(config, progress=False)
    broken = tmp_path / "face.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    capsys.readouterr()
    assert mfhq(["encode", str(broken), "--checkpoint", summary["checkpoint"],
                 "--out", str(tmp_path / "ids.pt")]) == 2
    line = one_error_line(capsys)
    assert str(broken) in line and "face crops" in line


def test_verbose_adds_the_traceback(tmp_path, capsys):
    assert mfhq(["encode", str(tmp_path / "a.png"), "--checkpoint",
                 str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o.pt"),
                 "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("command", ["train", "eval", "encode"])
def test_every_training_command_offers_verbose(command, capsys):
    with pytest.raises(SystemExit):
        mfhq([command, "--help"])
    assert "--verbose" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_sends_mediapipe_messages_to_the_log_file_not_the_terminal(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from _shard_helpers import write_shards

    from training.config import tiny
    from training.train import train

    repo = Path(__file__).resolve().parents[1]
    config = tiny()
    config.shards = str(write_shards(tmp_path / "shards", per_shard=2, size=32)[0])
    config.out, config.max_steps, config.data.image_size, config.data.n_tgt = (
        str(tmp_path / "run"), 1, 32, 2)
    summary = train(config, progress=False)
    test = write_shards(tmp_path / "test", per_shard=2, size=32, split="test", seed=3)[0]
    log = tmp_path / "eval.log"
    done = subprocess.run(
        [sys.executable, "-m", "mfhq", "eval", "--checkpoint", summary["checkpoint"],
         "--shards", str(test), "--n-inputs", "3", "--log-file", str(log)],
        cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert "W0000" not in terminal and "TensorFlow Lite" not in terminal
    assert "pose error" in done.stdout and "encoder weights: raw" in done.stdout
    assert "TensorFlow Lite" in log.read_text() or "W0000" in log.read_text()
