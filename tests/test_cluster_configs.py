"""The cluster configs shipped in cluster/, checked offline: the launcher YAML against the schema that ships with
ray (after Ray's own default merging), the KubeRay manifests against a pinned list of KubeRay v1 fields."""
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"

# KubeRay v1 (ray.io/v1) fields, pinned from the CRDs of KubeRay 1.5 (RayCluster, RayJob); `None`: free-form value.
POD_TEMPLATE = None  # a core/v1 PodTemplateSpec: checked by Kubernetes, not here
RAYCLUSTER_SPEC = {
    "rayVersion": None, "enableInTreeAutoscaling": None, "autoscalerOptions": None, "suspend": None,
    "managedBy": None, "gcsFaultToleranceOptions": None, "headServiceAnnotations": None,
    "authOptions": {"mode": None},
    "headGroupSpec": {"serviceType": None, "headService": None, "enableIngress": None, "rayStartParams": None,
                      "template": POD_TEMPLATE},
    "workerGroupSpecs": [{"groupName": None, "replicas": None, "minReplicas": None, "maxReplicas": None,
                          "idleTimeoutSeconds": None, "suspend": None, "numOfHosts": None,
                          "rayStartParams": None, "template": POD_TEMPLATE, "scaleStrategy": None}],
}
RAYJOB_SPEC = {
    "entrypoint": None, "runtimeEnvYAML": None, "metadata": None, "jobId": None, "rayClusterSpec": RAYCLUSTER_SPEC,
    "clusterSelector": None, "submissionMode": None, "submitterPodTemplate": None, "submitterConfig": None,
    "shutdownAfterJobFinishes": None, "ttlSecondsAfterFinished": None, "activeDeadlineSeconds": None,
    "entrypointNumCpus": None, "entrypointNumGpus": None, "entrypointResources": None, "suspend": None,
    "backoffLimit": None, "deletionStrategy": None, "managedBy": None,
}
TOP = {"apiVersion": None, "kind": None, "metadata": None}


def unknown_fields(doc, allowed, path=""):
    if allowed is None:
        return []
    if isinstance(allowed, list):
        return [e for i, item in enumerate(doc) for e in unknown_fields(item, allowed[0], f"{path}[{i}]")]
    bad = [f"{path}.{k}" for k in doc if k not in allowed]
    return bad + [e for k, v in doc.items() if k in allowed for e in unknown_fields(v, allowed[k], f"{path}.{k}")]


def test_launcher_yaml_is_valid_for_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "gpu-cluster.aws.yaml").read_text())
    validate_config(prepare_config(dict(raw)))
    # and the schema does reject a wrong field (the check is not vacuous)
    bad = yaml.safe_load((CLUSTER / "gpu-cluster.aws.yaml").read_text())
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(bad))
    # exposure: dashboard on loopback; the same explicit auth mode on every node
    head = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for cmds in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        start = [c for c in cmds if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start)
    # the torch split: CPU wheels on the head, the default (CUDA) wheel on the GPU workers
    assert any("whl/cpu" in c for c in raw["head_setup_commands"])
    assert not any("whl/cpu" in c for c in raw["worker_setup_commands"])


@pytest.mark.parametrize("name,kind,spec", [("raycluster.yaml", "RayCluster", RAYCLUSTER_SPEC),
                                            ("rayjob.yaml", "RayJob", RAYJOB_SPEC)])
def test_kuberay_manifests_use_known_fields(name, kind, spec):
    doc = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    assert unknown_fields(doc, {**TOP, "spec": spec}) == []
    assert unknown_fields({"spec": {"headGroupSpec": {"rayStartParam": {}}}}, {"spec": RAYCLUSTER_SPEC}) == \
        [".spec.headGroupSpec.rayStartParam"]  # a typo is caught


def test_raycluster_exposure_and_versions():
    import ray

    doc = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())["spec"]
    assert doc["rayVersion"] == ray.__version__
    assert doc["authOptions"]["mode"] == "token"
    assert doc["headGroupSpec"]["serviceType"] == "ClusterIP"
