"""`rlhf launch k8s RECIPE --image IMG [...] [--apply]`: a KubeRay RayJob, with the recipe in a ConfigMap.

Renders two Kubernetes objects as one multi-document YAML: a ConfigMap NAME-recipe holding the resolved recipe,
and a RayJob (apiVersion ray.io/v1, needs the KubeRay operator) whose Ray cluster has a head pod (the ConfigMap
mounted at /etc/rlhf/recipe.yaml; the job's driver runs there) and --worker-replicas worker pods with CPU, memory
and nvidia.com/gpu requests = limits. The entrypoint is `rlhf train /etc/rlhf/recipe.yaml ray.address=auto`; the
cluster is deleted when the job ends (shutdownAfterJobFinishes, after --ttl seconds). The image needs this package
and ray[default] (docker/Dockerfile builds one).

Without --apply the manifest is printed (pipe it to `kubectl apply -f -`); --apply runs `kubectl apply -f -`
against kubectl's current context. Pods are ephemeral: give --output-pvc CLAIM (a ReadWriteMany volume, mounted at
--output-mount in every pod) and set run.output_dir under it, or the checkpoints go with the cluster.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

import yaml

from launch.common import Job, LaunchError, output_dir_note, require_executable, run_tool, train_command, warn

HELP = "render a KubeRay RayJob (+ a ConfigMap with the recipe); print it or kubectl apply it"
DESCRIPTION = __doc__
RECIPE_MOUNT = "/etc/rlhf"
RECIPE_KEY = "recipe.yaml"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
MAX_NAME = 47  # KubeRay appends suffixes to a RayJob's name for its cluster and pods


def add_arguments(parser: Any) -> None:
    parser.add_argument("--image", default="rlhf-platform:latest",
                        help="container image with this package and ray[default] (default rlhf-platform:latest, "
                        "built from docker/Dockerfile)")
    parser.add_argument("--namespace", default="default", help="Kubernetes namespace (default 'default')")
    parser.add_argument("--name", default=None, help="the RayJob's name (default: run.name, made DNS-safe)")
    parser.add_argument("--head-cpu", default="2", help="head pod CPU request = limit (default 2)")
    parser.add_argument("--head-memory", default="8Gi", help="head pod memory request = limit (default 8Gi)")
    parser.add_argument("--worker-replicas", type=int, default=0,
                        help="worker pods (default 0: everything runs in the head pod)")
    parser.add_argument("--worker-cpu", default="8", help="CPU per worker pod (default 8)")
    parser.add_argument("--worker-gpu", type=int, default=0, help="nvidia.com/gpu per worker pod (default 0)")
    parser.add_argument("--worker-memory", default="32Gi", help="memory per worker pod (default 32Gi)")
    parser.add_argument("--ttl", type=int, default=600,
                        help="seconds the finished cluster is kept before deletion (default 600)")
    parser.add_argument("--active-deadline", type=int, default=None,
                        help="seconds after which the job is failed and its cluster deleted (default: none)")
    parser.add_argument("--output-pvc", default=None, help="PersistentVolumeClaim for run.output_dir, mounted "
                        "in every pod at --output-mount")
    parser.add_argument("--output-mount", default="/outputs", help="where --output-pvc is mounted (default /outputs)")
    parser.add_argument("--apply", action="store_true", help="kubectl apply -f - (current kubectl context)")


def k8s_name(job: Job, args: Any) -> str:
    """The RayJob's name: --name as given (checked), else run.name lower-cased with other characters as '-'."""
    if args.name is not None:
        name = args.name
    else:
        name = re.sub(r"[^a-z0-9-]+", "-", job.recipe.run.name.lower()).strip("-")[:MAX_NAME].strip("-") or "rlhf"
    if len(name) > MAX_NAME or not DNS_LABEL.match(name):
        raise LaunchError(f"--name {name!r}: a RayJob name is lower-case letters, digits and '-', starting and "
                          f"ending with a letter or digit, at most {MAX_NAME} characters")
    return name


def check(args: Any) -> None:
    """Refuse flags the API server would reject, naming the flag."""
    if not DNS_LABEL.match(args.namespace) or len(args.namespace) > 63:
        raise LaunchError(f"--namespace {args.namespace!r}: not a valid namespace name (lower-case, digits, '-')")
    for flag, value in (("--head-cpu", args.head_cpu), ("--head-memory", args.head_memory),
                        ("--worker-cpu", args.worker_cpu), ("--worker-memory", args.worker_memory)):
        if not QUANTITY.match(value):
            raise LaunchError(f"{flag} {value!r}: not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    for flag, value, low in (("--worker-replicas", args.worker_replicas, 0), ("--worker-gpu", args.worker_gpu, 0),
                             ("--ttl", args.ttl, 0)):
        if value < low:
            raise LaunchError(f"{flag} {value}: must be >= {low}")
    if args.active_deadline is not None and args.active_deadline < 1:
        raise LaunchError(f"--active-deadline {args.active_deadline}: must be >= 1")
    if not args.output_mount.startswith("/"):
        raise LaunchError(f"--output-mount {args.output_mount!r}: must be an absolute path")


def resources(cpu: str, memory: str, gpu: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpu:
        amounts["nvidia.com/gpu"] = gpu
    return {"requests": dict(amounts), "limits": dict(amounts)}


def pod_template(container: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    """A pod with one container and its volumes (/dev/shm in memory for Ray's object store and NCCL)."""
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    vols = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    for v in volumes:
        mounts.append(v["mount"])
        vols.append(v["volume"])
    return {"spec": {"containers": [{**container, "volumeMounts": mounts}], "volumes": vols}}


def output_volume(args: Any) -> list[dict[str, Any]]:
    if not args.output_pvc:
        return []
    return [{"mount": {"name": "outputs", "mountPath": args.output_mount},
             "volume": {"name": "outputs", "persistentVolumeClaim": {"claimName": args.output_pvc}}}]


def configmap(job: Job, name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-recipe", "namespace": namespace, "labels": labels(name)},
            "data": {RECIPE_KEY: job.resolved_yaml}}


def labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "rlhf", "app.kubernetes.io/instance": name}


def rayjob(job: Job, args: Any, name: str) -> dict[str, Any]:
    recipe_volume = {"mount": {"name": "recipe", "mountPath": RECIPE_MOUNT, "readOnly": True},
                     "volume": {"name": "recipe", "configMap": {"name": f"{name}-recipe"}}}
    head = {"name": "ray-head", "image": args.image, "resources": resources(args.head_cpu, args.head_memory),
            "ports": [{"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
                      {"containerPort": 10001, "name": "client"}]}
    cluster: dict[str, Any] = {
        "rayVersion": metadata.version("ray"),
        "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0"},
                          "template": pod_template(head, [recipe_volume, *output_volume(args)])},
    }
    if args.worker_replicas:
        worker = {"name": "ray-worker", "image": args.image,
                  "resources": resources(args.worker_cpu, args.worker_memory, args.worker_gpu)}
        cluster["workerGroupSpecs"] = [{
            "groupName": "workers", "replicas": args.worker_replicas, "minReplicas": args.worker_replicas,
            "maxReplicas": args.worker_replicas, "rayStartParams": {},
            "template": pod_template(worker, output_volume(args)),
        }]
    spec: dict[str, Any] = {
        "entrypoint": " ".join(train_command(f"{RECIPE_MOUNT}/{RECIPE_KEY}", job, "ray.address=auto")),
        "runtimeEnvYAML": yaml.safe_dump({"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": args.ttl,
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": cluster,
    }
    if args.active_deadline is not None:
        spec["activeDeadlineSeconds"] = args.active_deadline
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"name": name, "namespace": args.namespace, "labels": labels(name)}, "spec": spec}


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the recipe) as YAML literal blocks, so the manifest reads like the recipe file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def manifests(job: Job, args: Any) -> list[dict[str, Any]]:
    """[ConfigMap, RayJob] for `job`, checked."""
    check(args)
    name = k8s_name(job, args)
    return [configmap(job, name, args.namespace), rayjob(job, args, name)]


def render(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False, explicit_start=True)


def launch(job: Job, args: Any) -> int:
    docs = manifests(job, args)
    if args.output_pvc is None:
        warn(output_dir_note(job, "the head pod's working directory (deleted with the cluster)")
             or "note: without --output-pvc the run's outputs are deleted with the Ray cluster")
    elif not job.recipe.run.output_dir.startswith(args.output_mount.rstrip("/") + "/"):
        warn(f"note: run.output_dir={job.recipe.run.output_dir!r} is not under --output-mount {args.output_mount}; "
             f"the outputs are deleted with the cluster (set run.output_dir={args.output_mount}/NAME)")
    text = render(docs)
    if not args.apply or job.dry_run:
        print(text, end="")
        return 0
    kubectl = require_executable("kubectl", "apply the manifest")
    try:
        out = run_tool([kubectl, "apply", "-f", "-"], stdin=text, timeout=60)
    except LaunchError as e:
        raise LaunchError(f"{e}\n(is kubectl pointed at a cluster with the KubeRay operator? check "
                          "`kubectl config current-context`; or drop --apply to print the manifest)") from None
    print(out, end="")
    name, ns = docs[1]["metadata"]["name"], args.namespace
    print(f"follow it: kubectl get rayjob {name} -n {ns}; kubectl logs -n {ns} -f job/{name}")
    return 0
