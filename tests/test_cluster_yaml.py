"""The cluster files as an operator runs them: Ray accepts them, the dashboard is not open to
the network, GPU nodes get the GPU runtime, and the bucket variant's IAM policies allow reading
the sources and writing only under the output prefix (evaluated statement by statement)."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted((REPO / "curation").glob("cluster*.yaml"))
BUCKETS = REPO / "curation" / "cluster-buckets.yaml"
NODE_POLICY = REPO / "curation" / "cluster-buckets-node-policy.json"
HEAD_POLICY = REPO / "curation" / "cluster-buckets-head-policy.json"
GPU_INSTANCE = re.compile(r"^(g\d|p\d|gr\d)")   # AWS GPU families: g4dn, g5, g6, p4d, p5 ...
READ_ONLY_S3 = re.compile(r"^s3:(Get|List)[A-Za-z]*$")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_there_are_two_cluster_files_the_shared_filesystem_one_and_the_bucket_one():
    assert [p.name for p in CLUSTER_FILES] == ["cluster-buckets.yaml", "cluster.yaml"]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_each_cluster_file_passes_rays_own_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(load(path))))


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_the_head_binds_its_dashboard_and_job_api_to_its_loopback_only(path):
    config = load(path)
    head_start = " ".join(config["head_start_ray_commands"])
    starts = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert starts, "the head starts Ray"
    for command in starts:
        hosts = [a.split("=", 1)[1] for a in shlex.split(command)
                 if a.startswith("--dashboard-host=")]
        assert hosts == ["127.0.0.1"], f"{path.name}: {command}"
    every_command = json.dumps({k: v for k, v in config.items() if "commands" in k})
    assert "0.0.0.0" not in every_command and "0.0.0.0" not in head_start
    assert f"ray dashboard curation/{path.name}" in path.read_text(), \
        "the file says how to reach the dashboard (an SSH tunnel)"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_the_head_gives_the_cluster_the_raylet_settings_of_an_embedded_build(path):
    from curation.executor.pool import RAYLET_SYSTEM_CONFIG

    starts = [c for c in load(path)["head_start_ray_commands"] if "ray start" in c]
    given = [json.loads(a.split("=", 1)[1]) for c in starts for a in shlex.split(c)
             if a.startswith("--system-config=")]
    assert given == [RAYLET_SYSTEM_CONFIG], f"{path.name}: {starts}"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_gpu_nodes_run_every_common_setup_step_then_swap_in_the_gpu_onnxruntime(path):
    config = load(path)
    common = config["setup_commands"] + config.get("worker_setup_commands", [])
    gpu_types = {name: spec for name, spec in config["available_node_types"].items()
                 if GPU_INSTANCE.match(spec["node_config"]["InstanceType"])}
    assert gpu_types, f"{path.name} has GPU workers"
    for name, spec in gpu_types.items():
        # A node type's own list replaces setup_commands (Ray's autoscaler): it must repeat them.
        steps = spec.get("worker_setup_commands")
        assert steps, f"{name} installs nothing of its own"
        assert steps[:len(common)] == common, f"{name} skips common setup steps"
        extra = steps[len(common):]
        install = next(i for i, c in enumerate(extra) if "pip install" in c and "[gpu]" in c)
        uninstall = next(i for i, c in enumerate(extra)
                         if "pip uninstall" in c and re.search(r"\bonnxruntime\b(?!-)", c))
        reinstall = next(i for i, c in enumerate(extra)
                         if "pip install" in c and "onnxruntime-gpu" in c and "--no-deps" in c)
        assert install < uninstall < reinstall == len(extra) - 1, extra
    for name, spec in config["available_node_types"].items():
        if name not in gpu_types:
            assert not any("[gpu]" in c for c in spec.get("worker_setup_commands", [])), name


# ---------------------------------------------------------------------------------------------
# The bucket variant's policies, evaluated.


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def statements(policy: dict) -> list[dict]:
    """The policy's statements with Action and Resource always lists."""
    return [dict(s, Action=as_list(s["Action"]), Resource=as_list(s["Resource"]))
            for s in policy["Statement"]]


def allows(policy: dict, action: str, resource: str) -> bool:
    """Whether an Allow statement matches (IAM's * and ? wildcards; conditions only narrow an
    Allow, so ignoring them over-approximates, which is the safe side for these checks)."""
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    return any(any(fnmatch.fnmatchcase(action, a) for a in s["Action"])
               and any(fnmatch.fnmatchcase(resource, r) for r in s["Resource"])
               for s in statements(policy))


def s3_arn(url: str) -> str:
    return "arn:aws:s3:::" + url.removeprefix("s3://").rstrip("/")


def bucket_urls() -> dict[str, list[str]]:
    """The s3:// addresses the bucket variant's commands use (setup and the documented job)."""
    text = BUCKETS.read_text()
    return {"output": re.findall(r"--output (s3://\S+)", text),
            "sources": re.findall(r"--source \w+=(s3://\S+)", text),
            "models": sorted(set(re.findall(r"--mirror (s3://\S+)", text)))}


def test_the_bucket_cluster_names_its_sources_output_and_model_mirror():
    urls = bucket_urls()
    assert len(urls["output"]) == 1 and len(urls["sources"]) == 4 and len(urls["models"]) == 1
    config = load(BUCKETS)
    mirror = f"mfhq models fetch --mirror {urls['models'][0]}"
    assert any(mirror in c for c in config["setup_commands"])
    gpu = config["available_node_types"]["gpu_worker"]["worker_setup_commands"]
    assert any(mirror in c for c in gpu), "GPU nodes (their own list) fetch the models too"


def test_the_bucket_cluster_nodes_read_the_sources_and_models_but_never_write_there():
    policy = json.loads(NODE_POLICY.read_text())
    urls = bucket_urls()
    for url in urls["sources"] + urls["models"]:
        obj = s3_arn(url) + "/some/file.mp4"
        assert allows(policy, "s3:GetObject", obj), url
        for write in ("s3:PutObject", "s3:DeleteObject", "s3:PutObjectAcl",
                      "s3:AbortMultipartUpload", "s3:DeleteBucket", "s3:PutBucketPolicy"):
            assert not allows(policy, write, obj), f"{write} on {url}"
            assert not allows(policy, write, obj.split("/")[0]), f"{write} on {url}'s bucket"


def test_the_bucket_cluster_nodes_write_only_under_the_output_prefix():
    policy = json.loads(NODE_POLICY.read_text())
    (output,) = bucket_urls()["output"]
    prefix = s3_arn(output) + "/"
    bucket = prefix.split("/")[0]
    for action in ("s3:PutObject", "s3:GetObject", "s3:DeleteObject",
                   "s3:AbortMultipartUpload"):
        assert allows(policy, action, prefix + "shards/train/mfhq-train-000000.tar"), action
    assert allows(policy, "s3:ListBucket", bucket)
    for elsewhere in (bucket + "/other/file", bucket + "/mfhq-other/file",
                      "arn:aws:s3:::another-bucket/mfhq/file"):
        assert not allows(policy, "s3:PutObject", elsewhere), elsewhere
        assert not allows(policy, "s3:DeleteObject", elsewhere), elsewhere
    for statement in statements(policy):
        writes = [a for a in statement["Action"] if not READ_ONLY_S3.match(a)]
        assert "*" not in statement["Action"] and "s3:*" not in statement["Action"]
        assert "*" not in statement["Resource"], statement["Sid"]
        if writes:
            assert all(r.startswith(prefix) for r in statement["Resource"]), statement["Sid"]
    listing = [s for s in statements(policy) if bucket in s["Resource"]]
    assert listing and all(s["Condition"]["StringLike"]["s3:prefix"] for s in listing), \
        "listing the output bucket is limited to the prefix"


def test_the_bucket_cluster_head_may_end_only_its_own_workers_and_pass_only_the_node_role():
    policy = json.loads(HEAD_POLICY.read_text())
    config = load(BUCKETS)
    assert not any(a.startswith("s3:") for s in statements(policy) for a in s["Action"]), \
        "S3 access comes from the node policy alone"
    ending = [s for s in statements(policy)
              if {"ec2:TerminateInstances", "ec2:StopInstances"} & set(s["Action"])]
    assert ending and all(
        s["Condition"]["StringEquals"]["ec2:ResourceTag/ray-cluster-name"]
        == config["cluster_name"] for s in ending)
    profiles = {name: spec["node_config"]["IamInstanceProfile"]["Name"]
                for name, spec in config["available_node_types"].items()}
    worker_profiles = {p for name, p in profiles.items() if name != config["head_node_type"]}
    assert worker_profiles == {"mfhq-node"} and profiles["head"] == "mfhq-head"
    (passing,) = [s for s in statements(policy) if "iam:PassRole" in s["Action"]]
    assert all(r.rsplit("/", 1)[1] in worker_profiles for r in passing["Resource"])
    assert not allows(policy, "iam:PassRole", "arn:aws:iam::123456789012:role/mfhq-head")
