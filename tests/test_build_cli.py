"""The build's command line, the cluster config and per-clip fault isolation."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from curation.build_folder import BuildFolder
from curation.pipeline.config import BuildConfig, build_parser, parse_args
from curation.records import ClipRecord, Reason

REPO = Path(__file__).resolve().parent.parent
ISSUE_FLAGS = [
    "--source", "--output", "--min-face-size", "--images-per-identity", "--pose-clusters",
    "--sample-fps", "--quality-model", "--quality-weights", "--face-detector",
    "--insightface-root", "--identities-per-shard", "--test-fraction", "--takedown", "--seed",
    "--ray-address", "--num-cpus", "--num-gpus", "--limit", "--crop-size", "--overwrite",
]


@pytest.mark.parametrize("how", [["curation/build_mfhq.py"], ["-m", "curation.build_mfhq"]])
def test_help_documents_every_flag(how):
    out = subprocess.run([sys.executable, *how, "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    options = [s for a in build_parser()._actions for s in a.option_strings]
    for flag in set(ISSUE_FLAGS) | set(options):
        assert flag in out, flag
    for action in build_parser()._actions:
        assert action.help, action.option_strings


def test_arguments_map_to_the_config():
    config = parse_args(["--source", "celebvhq=/a", "--source", "VFHQ=/b", "--output", "o",
                         "--min-face-size", "300", "--pose-clusters", "10", "--limit", "3",
                         "--ray-address", "auto", "--quality-model", "piqe"])
    assert config.sources == [("celebvhq", "/a"), ("vfhq", "/b")]
    assert config.shards_dir == Path("o/shards") and config.manifests_dir == Path("o/manifests")
    assert (config.analysis.min_face_size, config.selection.pose_clusters,
            config.plan.limit) == (300, 10, 3)
    assert config.ray.address == "auto" and config.quality.model == "piqe"
    assert BuildConfig(sources=[("folder", "x")]).shards_dir == Path("shards")


def test_config_hash_ignores_runtime_settings_only():
    base = parse_args(["--source", "folder=/x"])
    same = parse_args(["--source", "folder=/x", "--num-cpus", "3", "--ray-address", "auto"])
    other = parse_args(["--source", "folder=/x", "--seed", "1"])
    assert base.config_hash() == same.config_hash() != other.config_hash()


@pytest.mark.parametrize("argv", [[], ["--source", "nodir"],
                                  ["--source", "folder=/x", "--pose-clusters", "4"],
                                  ["--source", "folder=/x", "--test-fraction", "2"]])
def test_bad_arguments_exit_with_usage(argv):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2


def test_missing_source_and_missing_weights_are_one_clear_error(tmp_path):
    cmd = [sys.executable, "curation/build_mfhq.py", "--output", str(tmp_path / "o"),
           "--no-progress"]
    r = subprocess.run(cmd + ["--source", f"vfhq={tmp_path / 'nope'}", "--quality-model", "piqe",
                              "--face-detector", "mediapipe"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd + ["--source", f"vfhq={tmp_path}", "--quality-weights",
                              str(tmp_path / "topiq.pth")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "topiq.pth" in r.stderr and "Traceback" not in r.stderr


def test_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "curation" / "cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head"
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    assert any("pip install" in c and "-e ~/mfhq" in c for c in prepared["setup_commands"])
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["cpu_worker"]["not_a_field"] = 1
    with pytest.raises(Exception, match="not_a_field"):
        validate_config(prepare_config(broken))


# --- per-clip fault isolation in the analysis stage ------------------------------------------

class _ExplodingAnalyzer:
    def analyze_clip(self, clip):
        raise RuntimeError(f"decoder crashed on {clip.clip_id}")


def _clip() -> ClipRecord:
    return ClipRecord(source="folder", clip_id="c", original_clip_id="c", identity_id="folder:x",
                      source_video_id="x", video_path="/nonexistent.mp4")


def _small_config(tmp: Path):
    return parse_args(["--source", f"folder={tmp}", "--quality-model", "piqe",
                       "--face-detector", "mediapipe", "--min-face-size", "64",
                       "--crop-size", "64", "--identity-model", "none"])


def test_a_clip_that_raises_is_recorded_and_the_next_clip_gets_a_fresh_analyzer(tmp_path):
    from curation.pipeline import analyze

    config, folder = _small_config(tmp_path), BuildFolder(str(tmp_path))
    analyze.load_models(config.analysis, config.identity)
    (key,) = analyze._ANALYZERS
    analyze._ANALYZERS[key] = _ExplodingAnalyzer()
    outcome = analyze.analyze_clip(config.analysis, config.identity, folder,
                                   "train/mfhq-train-000000.tar", _clip())
    assert outcome.status == "failed" and outcome.reason == Reason.INTERNAL_ERROR
    assert "decoder crashed on c" in outcome.message
    assert outcome.work is None and not list((tmp_path / "manifests").rglob("*.json"))
    # A real analyzer serves the next clip (a missing file is its own reason, not a crash).
    nxt = analyze.analyze_clip(config.analysis, config.identity, folder,
                               "train/mfhq-train-000000.tar", _clip())
    assert nxt.status == "failed" and nxt.reason != Reason.INTERNAL_ERROR
    assert not isinstance(next(iter(analyze._ANALYZERS.values())), _ExplodingAnalyzer)
