"""`rlhf launch k8s`: the rendered RayJob validates against KubeRay's CRD schema (tests/data/kuberay, the served
version's openAPIV3Schema, checked strictly as `kubectl apply` does: unknown fields are errors) for several recipe
shapes, the ConfigMap carries the resolved recipe, bad flags are refused by name, and --apply without a cluster
fails with a clear message."""

from __future__ import annotations

import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from launch import k8s
from launch.common import make_job
from rlhf.cli import _parser, main
from rlhf.config import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes" / "grpo_tiny_cpu.yaml")
CRD = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayjobs.yaml"


def to_json_schema(node):
    """OpenAPI v3 (Kubernetes structural schema) -> JSON schema: int-or-string becomes anyOf[integer, string],
    `nullable` adds null, and an object with `properties` rejects other keys unless it preserves unknown fields."""
    if isinstance(node, list):
        return [to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def rayjob_schema() -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(CRD.read_text(), Loader=loader)
    served = [v for v in crd["spec"]["versions"] if v["served"] and v["name"] == "v1"]
    assert served, "the CRD serves no v1"
    schema = to_json_schema(served[0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)  # built once: jsonschema.validate() re-checks the schema every call


def render(*argv: str, overrides: tuple[str, ...] = ()) -> list[dict]:
    args = _parser().parse_args(["launch", "k8s", RECIPE, *overrides, *argv])
    job = make_job(RECIPE, args.overrides, load_recipe(RECIPE, args.overrides))
    return list(yaml.safe_load_all(k8s.render(k8s.manifests(job, args))))


SHAPES = {
    "one CPU pod": (),
    "multi-node GPU": ("--worker-replicas", "4", "--worker-gpu", "8", "--worker-cpu", "64", "--worker-memory",
                       "512Gi", "--head-cpu", "8", "--head-memory", "32Gi", "--image", "ghcr.io/me/rlhf:1.0"),
    "CPU workers, custom namespace and name": ("--worker-replicas", "2", "--namespace", "ml-team", "--name",
                                               "grpo-run-7", "--ttl", "60", "--active-deadline", "7200"),
    "outputs on a PVC": ("--output-pvc", "rlhf-runs", "--output-mount", "/mnt/runs", "--worker-replicas", "1"),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_rayjob_validates_against_the_crd(rayjob_schema, shape):
    configmap, rayjob = render(*SHAPES[shape])
    rayjob_schema.validate(rayjob)
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["entrypoint"] == "rlhf train /etc/rlhf/recipe.yaml ray.address=auto"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert mounts["recipe"] == "/etc/rlhf"
    assert {"name": "recipe", "configMap": {"name": configmap["metadata"]["name"]}} in head["volumes"]
    assert configmap["metadata"]["namespace"] == rayjob["metadata"]["namespace"]


def test_configmap_holds_the_resolved_recipe():
    configmap, _ = render(overrides=("run.steps=7",))
    assert configmap["apiVersion"] == "v1" and configmap["kind"] == "ConfigMap"
    assert set(configmap["data"]) == {"recipe.yaml"}
    recipe = yaml.safe_load(configmap["data"]["recipe.yaml"])
    assert recipe["run"]["steps"] == 7 and recipe["rewards"][0]["name"] == "correct"


def test_gpu_workers_request_and_limit_gpus():
    _, rayjob = render("--worker-replicas", "3", "--worker-gpu", "8", "--worker-memory", "100Gi")
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3
    res = group["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "8", "memory": "100Gi", "nvidia.com/gpu": 8}


def test_no_workers_means_no_worker_group():
    _, rayjob = render()
    assert "workerGroupSpecs" not in rayjob["spec"]["rayClusterSpec"]


def test_the_converted_schema_is_a_valid_json_schema(rayjob_schema):
    jsonschema.Draft7Validator.check_schema(rayjob_schema.schema)


def test_schema_conversion_rejects_bad_manifests(rayjob_schema):
    """The validation can fail: an unknown field, a bad quantity and a missing required key are each caught."""
    _, rayjob = render("--worker-replicas", "1")
    bad_field = yaml.safe_load(yaml.safe_dump(rayjob))
    bad_field["spec"]["shutdownAfterJobFinish"] = True
    bad_quantity = yaml.safe_load(yaml.safe_dump(rayjob))
    bad_quantity["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resources"]["limits"]["memory"] = "lots"
    missing = yaml.safe_load(yaml.safe_dump(rayjob))
    del missing["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    for manifest in (bad_field, bad_quantity, missing):
        with pytest.raises(jsonschema.ValidationError):
            rayjob_schema.validate(manifest)


@pytest.mark.parametrize("argv, flag", [
    (("--worker-memory", "lots"), "--worker-memory"),
    (("--namespace", "My_NS"), "--namespace"),
    (("--name", "Bad_Name"), "--name"),
    (("--worker-replicas", "-1"), "--worker-replicas"),
    (("--output-mount", "outputs"), "--output-mount"),
])
def test_bad_flags_are_refused_by_name(capsys, argv, flag):
    assert main(["launch", "k8s", RECIPE, "--dry-run", *argv]) == 1
    assert f"error: {flag}" in capsys.readouterr().err


def test_dry_run_prints_two_documents(capsys):
    assert main(["launch", "k8s", RECIPE, "--dry-run", "--apply"]) == 0
    out, err = capsys.readouterr()
    assert [d["kind"] for d in yaml.safe_load_all(out)] == ["ConfigMap", "RayJob"]
    assert "run.output_dir='runs/grpo_tiny_cpu' is relative" in err


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_apply_without_a_cluster_fails_clearly(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    assert main(["launch", "k8s", RECIPE, "--apply"]) == 1
    err = capsys.readouterr().err
    assert "kubectl apply -f -` failed" in err and "kubectl config current-context" in err
