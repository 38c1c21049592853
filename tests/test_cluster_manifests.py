"""The cluster manifests parse and carry the fields autoscaling GPU training depends on; no credentials in them."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.local import GPU_WORKER_TYPE, fake_multinode_config

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "cluster" / "k8s"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_raycluster_autoscales_a_gpu_group_from_zero():
    rc = load(K8S / "raycluster.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    spec = rc["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"        # stage tasks never land on the head
    assert any(p["containerPort"] == 8265 for p in containers(head["template"])[0]["ports"])  # job API

    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0
    assert gpu["maxReplicas"] >= 5                          # one per style of the five-style job
    num_gpus = gpu["rayStartParams"]["num-gpus"]
    container = containers(gpu["template"])[0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == int(num_gpus) == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    # KubeRay passes rayStartParams through as strings; a bare number is rejected by the CRD.
    for group in [head, *spec["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())


def test_raycluster_takes_storage_credentials_from_a_secret():
    rc = load(K8S / "raycluster.yaml")
    templates = [rc["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in rc["spec"]["workerGroupSpecs"]]
    for template in templates:
        env = {e["name"]: e for e in containers(template)[0]["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[key]
            assert env[key]["valueFrom"]["secretKeyRef"]["key"] == key


@pytest.mark.parametrize("name, module", [("rayjob-train.yaml", "cluster.train"),
                                          ("rayjob-stylize.yaml", "batch.stylize")])
def test_rayjobs_run_our_entry_points_on_the_raycluster(name, module):
    job = load(K8S / name)
    rc = load(K8S / "raycluster.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", module]
    assert (REPO / module.replace(".", "/")).with_suffix(".py").exists()
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    assert not {k for k in runtime_env.get("env_vars", {}) if "SECRET" in k or "KEY" in k}


def test_train_rayjob_runs_the_five_style_config():
    argv = shlex.split(load(K8S / "rayjob-train.yaml")["spec"]["entrypoint"])
    config = argv[3]
    assert config == "configs/five_styles.yaml" and (REPO / config).exists()
    assert len(load(REPO / config)["styles"]) == 5


def test_stylize_rayjob_arguments_are_accepted_by_its_cli():
    from batch.stylize import parse_args
    argv = shlex.split(load(K8S / "rayjob-stylize.yaml")["spec"]["entrypoint"])
    args = parse_args(argv[3:])
    assert args.input.startswith("s3://") and args.output.startswith("s3://")
    assert args.styles.split(",") == ["cartoon", "anime", "fantasy", "illustration", "impasto"]


def test_aws_launcher_config_is_valid_and_scales_gpu_workers_from_zero():
    raw = load(REPO / "cluster" / "aws.yaml")
    config = prepare_config(raw)
    validate_config(config)                                 # Ray's own schema check for `ray up`
    assert config["provider"]["type"] == "aws"
    assert 0 < config["idle_timeout_minutes"] <= 30
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 5
    assert gpu["resources"]["GPU"] == 1
    assert re.match(r"(g5|g6|p4d|p5)\.", gpu["node_config"]["InstanceType"])


def test_fake_multinode_config_is_a_valid_autoscaler_config():
    config = fake_multinode_config("127.0.0.1:41234", head_cpus=1, gpu_workers_max=3, idle_timeout_s=6)
    validate_config(config)
    assert config["provider"] == {**config["provider"], "type": "fake_multinode", "gcs_address": "127.0.0.1:41234"}
    gpu = config["available_node_types"][GPU_WORKER_TYPE]
    assert (gpu["min_workers"], gpu["max_workers"], gpu["resources"]) == (0, 3, {"CPU": 2, "GPU": 1})
    assert config["available_node_types"]["ray.head.default"]["resources"] == {"CPU": 1}
    assert config["idle_timeout_minutes"] == pytest.approx(0.1)


def test_no_credentials_in_any_manifest():
    # An access key id, or a secret-looking value (30+ key characters) assigned to a secret key name.
    secret_like = re.compile(
        r"AKIA[0-9A-Z]{16}|(secret_access_key|secretAccessKey)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{30}", re.I)
    for path in [*K8S.glob("*.yaml"), REPO / "cluster" / "aws.yaml", REPO / "cluster" / "fake_multinode.yaml"]:
        assert not secret_like.search(path.read_text()), path
