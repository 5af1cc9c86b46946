"""The Kubernetes objects the backend creates, as plain dicts (what goes over the wire, and
what the tests validate against the Kubernetes schema), and the resource arithmetic.

Per worker: a Secret holding the worker's registration secret (the pod reads it through
``secretKeyRef``, so it never appears in the pod spec) and a Pod.  The pod runs as a non-root
user with a read-only root filesystem, no privilege escalation and no capabilities, no
service-account token, and writable ``/tmp`` only.  Extra requirements are installed by an
init container into an ``emptyDir`` put first on the worker's ``PYTHONPATH``, so the status
can say "installing requirements" from the pod's own state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rexec_magic.contract import Env, folder_name
from spawner.errors import InvalidRequest

APP = "rexec-worker"
MANAGED_BY = "rexec-spawner"
L_NAME = "app.kubernetes.io/name"
L_MANAGED = "app.kubernetes.io/managed-by"
L_USER = "rexec.io/user"
L_POOL = "rexec.io/pool"
L_REQS = "rexec.io/requirements"
A_USER = "rexec.io/user-id"
# What a restarted spawner needs to adopt the pod (the nonce is not secret: the registration
# secret is an HMAC of it under the worker key, and lives in the Secret).
A_USERNAME = "rexec.io/username"
A_NONCE = "rexec.io/nonce"
A_REQUIREMENTS = "rexec.io/requirements"
A_OPTIONS = "rexec.io/options"
SECRET_KEY = "secret"  # noqa: S105 - the key name inside the Secret, not a value
EXTRA_DIR = "/opt/rexec/extra"
# The worker's own folder: its working directory, on a volume of its own (an emptyDir that
# outlives restarts of the worker container, or the operator's ``k8s_work_volume``).
WORK_DIR = "/home/rexec/work"
ALIVE_FILE = "/tmp/rexec-alive"  # noqa: S108 - inside the pod's own emptyDir
POLICY_NAME = "rexec-workers"


def parse_quantity(value: Any, what: str) -> Decimal:
    """A Kubernetes quantity ("500m", "2", "4Gi", 1.5) as a number; InvalidRequest if not.

    The parsing is the official client's (``kubernetes.utils.parse_quantity``: every suffix
    the API accepts); this adds the sentence and the rule that a resource must be positive.
    """
    from kubernetes.utils import parse_quantity as k8s_quantity

    try:
        if isinstance(value, bool):
            raise ValueError(value)
        number = k8s_quantity(value)
    except (ValueError, TypeError, ArithmeticError):
        raise InvalidRequest(
            f"The {what} {value!r} is not a quantity like 2, 500m or 4Gi."
        ) from None
    if number <= 0:
        raise InvalidRequest(f"The {what} must be more than 0.")
    return number


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` merged into a copy of ``base``: the operator's extraPodConfig and
    extraContainerConfig (kubespawner's extra_pod_config / extra_container_config).

    Mappings merge key by key; lists of objects that all have a ``name`` (env, volumes,
    volumeMounts, containers...) merge by name, as ``kubectl``'s strategic merge does, so an
    extra variable is added instead of replacing the worker's own; any other value replaces.
    """
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = deep_merge(old, value)
        elif _named_list(old) and _named_list(value):
            merged = {item["name"]: item for item in old}
            for item in value:
                prev = merged.get(item["name"])
                merged[item["name"]] = deep_merge(prev, item) if prev else item
            out[key] = list(merged.values())
        else:
            out[key] = value
    return out


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value)


def network_policy_manifest(namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The chart's worker NetworkPolicy (``REXEC_K8S_NETWORK_POLICY``) for a user namespace."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": POLICY_NAME,
            "namespace": namespace,
            "labels": {L_MANAGED: MANAGED_BY},
        },
        "spec": spec,
    }


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    gpu: int = 0

    def as_k8s(self) -> dict[str, Any]:
        amounts: dict[str, str] = {"cpu": self.cpu, "memory": self.memory}
        limits = dict(amounts)
        if self.gpu:
            limits["nvidia.com/gpu"] = str(self.gpu)
        return {"requests": amounts, "limits": limits}


def clamp_resources(options: dict[str, Any], settings: Any) -> Resources:
    """The spawn options' cpu/memory/gpu, each at most the operator's maximum."""
    cpu = options.get("cpu", settings.k8s_cpu)
    memory = options.get("memory", settings.k8s_memory)
    if parse_quantity(cpu, "cpu") > parse_quantity(settings.k8s_max_cpu, "maximum cpu"):
        cpu = settings.k8s_max_cpu
    if parse_quantity(memory, "memory") > parse_quantity(settings.k8s_max_memory, "max memory"):
        memory = settings.k8s_max_memory
    gpu = options.get("gpu", 0)
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        raise InvalidRequest(f"The gpu option {gpu!r} must be a whole number (0 or more).")
    return Resources(str(cpu), str(memory), min(gpu, settings.k8s_max_gpu))


def spawn_annotations(spec: Any) -> dict[str, str]:
    """The spawn a pod serves, as annotations: a restarted spawner adopts it from these."""
    return {
        A_USER: spec.user,
        A_USERNAME: spec.username,
        A_NONCE: spec.nonce,
        A_REQUIREMENTS: json.dumps(list(spec.requirements.lines)),
        A_OPTIONS: json.dumps(spec.options, sort_keys=True),
    }


def labels(user_label: str, requirements_digest: str, pool: bool) -> dict[str, str]:
    return {
        L_NAME: APP,
        L_MANAGED: MANAGED_BY,
        L_USER: user_label,
        L_REQS: requirements_digest,
        L_POOL: "true" if pool else "false",
    }


def namespace_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {L_MANAGED: MANAGED_BY}},
    }


def secret_manifest(
    name: str, namespace: str, secret: str, meta_labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "stringData": {SECRET_KEY: secret},
    }


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_manifest(
    *,
    name: str,
    namespace: str,
    user_id: str,
    meta_labels: dict[str, str],
    image: str,
    settings: Any,
    resources: Resources,
    secret_name: str,
    registration_user: str,
    nonce: str,
    pool: bool,
    install: list[str],
) -> dict[str, Any]:
    """The worker pod.  ``install``: requirement lines the init container pip-installs."""
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    work_source = dict(settings.k8s_work_volume or {}) or {"emptyDir": {}}
    volumes.append({"name": "work", **work_source})
    work_mount = {"name": "work", "mountPath": WORK_DIR}
    if settings.k8s_work_volume:  # one volume for everyone: each user gets a folder on it
        work_mount["subPath"] = folder_name(user_id)
    env: list[dict[str, Any]] = [
        {"name": Env.BROKER_WORKER_URL, "value": settings.broker_worker_url},
        {"name": Env.WORKER_USER, "value": registration_user},
        {"name": Env.WORKER_NONCE, "value": nonce},
        {
            "name": Env.WORKER_SECRET,
            "valueFrom": {"secretKeyRef": {"name": secret_name, "key": SECRET_KEY}},
        },
        {"name": Env.WORKER_ALIVE_FILE, "value": ALIVE_FILE},
        {"name": "HOME", "value": "/tmp"},  # noqa: S108
        {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},  # noqa: S108
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if pool:
        env.append({"name": Env.WORKER_POOL, "value": "1"})
    init: list[dict[str, Any]] = []
    if install:
        volumes.append({"name": "extra", "emptyDir": {}})
        mounts.append({"name": "extra", "mountPath": EXTRA_DIR})
        env.append({"name": "PYTHONPATH", "value": EXTRA_DIR})
        init.append(
            {
                "name": "install",
                "image": image,
                "imagePullPolicy": settings.k8s_image_pull_policy,
                "command": [
                    "python",
                    "-m",
                    "pip",
                    "install",
                    "--no-cache-dir",
                    "--no-input",
                    "--disable-pip-version-check",
                    "--target",
                    EXTRA_DIR,
                    *install,
                ],  # fmt: skip
                "env": [{"name": "HOME", "value": "/tmp"}],  # noqa: S108
                "resources": resources.as_k8s(),
                "securityContext": _security_context(),
                "volumeMounts": mounts,
            }
        )
    uid = settings.k8s_worker_uid
    spec: dict[str, Any] = {
        # The kubelet restarts a crashed worker (CrashLoopBackOff shows a real crash loop);
        # exit 0 (told to stop, superseded) ends the pod.
        "restartPolicy": "OnFailure",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": max(1, int(settings.stop_grace_s)),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": volumes,
        "containers": [
            {
                "name": "worker",
                "image": image,
                "imagePullPolicy": settings.k8s_image_pull_policy,
                "command": ["python", "-m", "worker_image.worker"],
                "workingDir": WORK_DIR,
                "env": env,
                "resources": resources.as_k8s(),
                "securityContext": _security_context(),
                "volumeMounts": [*mounts, work_mount],
                "readinessProbe": {
                    "exec": {"command": ["python", "-m", "worker_image.ready"]},
                    "periodSeconds": 5,
                    "failureThreshold": 2,
                },
            }
        ],
    }
    if init:
        spec["initContainers"] = init
    if settings.k8s_node_selector:
        spec["nodeSelector"] = dict(settings.k8s_node_selector)
    if settings.k8s_tolerations:
        spec["tolerations"] = list(settings.k8s_tolerations)
    if settings.k8s_extra_container_config:
        spec["containers"][0] = deep_merge(
            spec["containers"][0], settings.k8s_extra_container_config
        )
    if settings.k8s_extra_pod_config:
        spec = deep_merge(spec, settings.k8s_extra_pod_config)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta_labels,
            "annotations": {A_USER: user_id},
        },
        "spec": spec,
    }
