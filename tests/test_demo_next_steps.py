"""The demo's last lines tell a new user what to open and what to run next."""

from __future__ import annotations

from mfhq.demo import demo_paths, next_steps


def test_the_demo_ends_by_naming_the_report_the_verify_command_and_the_newest_checkpoint(tmp_path):
    paths = demo_paths(tmp_path / "demo")
    (paths.shards / "train").mkdir(parents=True)
    for i in (0, 1):
        (paths.shards / "train" / f"mfhq-train-00000{i}.tar").write_bytes(b"")
    (tmp_path / "demo" / "omni-id").mkdir()
    for step in ("000030", "000060"):
        (tmp_path / "demo" / "omni-id" / f"checkpoint-{step}.pt").write_bytes(b"")
    lines = next_steps(paths).splitlines()
    assert any(str(paths.output / "report.html") in line for line in lines)
    assert any(f"mfhq verify --output {paths.output}" in line for line in lines)
    eval_line = next(line for line in lines if "mfhq eval" in line)
    assert "checkpoint-000060.pt" in eval_line and "mfhq-train-{000000..000001}.tar" in eval_line
