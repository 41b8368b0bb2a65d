"""cluster.yaml (`ray up`) and configs/kuberay/rayjob.yaml (KubeRay), checked without a cluster.

cluster.yaml goes through the two steps `ray up` runs on it before it talks to the cloud:
Ray's `prepare_config` (merges Ray's AWS defaults.yaml, the setup commands and per-type
worker counts; it needs no boto3) and `validate_config` (Ray's cluster JSON schema plus its
cross-field checks). What follows in `ray up` (`_bootstrap_config`: IAM, key pair, AMI,
instance types) calls AWS through boto3 and is not run here.

The RayJob is checked for its structure; no KubeRay CRD schema ships in a package this
project installs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "configs" / "kuberay" / "rayjob.yaml"
IMAGE_ROOT = "/home/ray/rnn-orch/"  # where the RayJob's image holds the repository


def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def prepared() -> dict:
    return prepare_config(cluster())


def rayjob() -> dict:
    return yaml.safe_load(RAYJOB_YAML.read_text())


def ray_minor() -> str:
    return ".".join(ray.__version__.split(".")[:2])


def lines_setting(path: Path, key: str) -> list[str]:
    """Raw lines that set `key:` (not comment lines)."""
    pattern = re.compile(rf"^\s*(- )?{re.escape(key)}:")
    return [line for line in path.read_text().splitlines() if pattern.match(line)]


def train_command(text: str) -> list[str]:
    """The `rnn-orch train ...` command in `text`, backslash continuations joined."""
    lines = [line.lstrip("#").strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if "rnn-orch train" in line)
    command = [lines[start]]
    while command[-1].endswith("\\"):
        start += 1
        command.append(lines[start])
    words = shlex.split(" ".join(part.rstrip("\\") for part in command))
    return words[words.index("rnn-orch"):]


def assert_valid_experiment(command: list[str]) -> None:
    assert command[:2] == ["rnn-orch", "train"], command
    path = command[2].removeprefix(IMAGE_ROOT)
    load_config(ROOT / path, command[3:])  # raises ConfigError naming a bad key


# --- cluster.yaml -------------------------------------------------------------------------

def test_cluster_yaml_passes_rays_own_validation():
    config = prepared()
    validate_config(config)
    assert config["provider"]["type"] == "aws"


def test_rays_validation_rejects_a_broken_cluster_yaml():
    """The check above bites: a misspelt key and impossible worker counts fail it."""
    misspelt = cluster()
    misspelt["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(misspelt))

    too_many = prepared()
    too_many["available_node_types"]["gpu_worker"]["min_workers"] = 99
    with pytest.raises(ValueError, match="min_workers"):
        validate_config(too_many)


def test_head_advertises_no_cpus_or_gpus():
    config = prepared()
    head = config["available_node_types"][config["head_node_type"]]
    # The launcher passes these to the head's `ray start` as RAY_OVERRIDE_RESOURCES.
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in start and "--num-gpus=0" in start
    assert head["max_workers"] == 0


def test_gpu_workers_scale_from_zero():
    workers = prepared()["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0
    assert workers["max_workers"] >= 1
    assert re.match(r"(g|p)\d", workers["node_config"]["InstanceType"])


def test_dashboard_listens_on_localhost_only():
    config = prepared()
    start = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not any("0.0.0.0" in command for command in start)
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_token_authentication_on_every_node():
    config = prepared()
    starts = [command
              for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
              if "ray start" in command]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token" in command for command in starts)
    # Every node gets the same token as the laptop that submits jobs.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_cluster_image_matches_this_ray():
    image = cluster()["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray_minor()}.")


@pytest.mark.parametrize("key", ["region", "InstanceType", "ImageId", "min_workers",
                                 "max_workers", "image"])
def test_keys_a_user_changes_carry_a_comment(key):
    lines = lines_setting(CLUSTER_YAML, key)
    assert lines, f"cluster.yaml sets no {key}"
    for line in lines:
        assert "#" in line, f"cluster.yaml: no comment on {line.strip()!r}"


def test_header_names_storage_bucket_and_tracking_server():
    header = CLUSTER_YAML.read_text().split("\ncluster_name:")[0]
    assert "run.storage_path=s3://" in header
    assert "tracking.uri=http://" in header


def test_header_submits_through_the_dashboard_tunnel():
    header = CLUSTER_YAML.read_text().split("\ncluster_name:")[0]
    assert "ray dashboard cluster.yaml" in header
    assert "RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265" in header
    assert_valid_experiment(train_command(header))


# --- configs/kuberay/rayjob.yaml ----------------------------------------------------------

def test_rayjob_structure():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster_spec = spec["rayClusterSpec"]
    assert cluster_spec["enableInTreeAutoscaling"] is True
    assert cluster_spec["authOptions"] == {"mode": "token"}
    assert cluster_spec["rayVersion"].startswith(f"{ray_minor()}.")

    head = cluster_spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]

    (workers,) = cluster_spec["workerGroupSpecs"]
    assert workers["minReplicas"] == 0
    assert workers["replicas"] == 0
    assert workers["maxReplicas"] >= 1
    worker_container = workers["template"]["spec"]["containers"][0]
    assert worker_container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert worker_container["image"] == head_container["image"]


def test_rayjob_entrypoint_is_a_valid_experiment():
    command = shlex.split(rayjob()["spec"]["entrypoint"])
    assert "scaling.use_gpu=true" in command
    assert any(word.startswith("run.storage_path=s3://") for word in command)
    assert any(word.startswith("tracking.uri=http://") for word in command)
    num_workers = int(next(word for word in command if word.startswith("scaling.num_workers="))
                      .split("=")[1])
    assert num_workers <= rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]
    assert_valid_experiment(command)


@pytest.mark.parametrize("key", ["image", "minReplicas", "maxReplicas"])
def test_rayjob_keys_a_user_changes_carry_a_comment(key):
    lines = lines_setting(RAYJOB_YAML, key)
    assert lines, f"rayjob.yaml sets no {key}"
    for line in lines:
        assert "#" in line, f"rayjob.yaml: no comment on {line.strip()!r}"


def test_yaml_files_parse_as_one_document():
    for path in (CLUSTER_YAML, RAYJOB_YAML):
        assert len(list(yaml.safe_load_all(path.read_text()))) == 1, path
