"""Spawner settings, read from ``REXEC_*`` environment variables (or passed by ``rexec up``).

Lists and mappings (``REXEC_K8S_NODE_SELECTOR``, ``REXEC_K8S_IMAGES``...) are JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from broker.config import AuthSettings
from rexec_magic.contract import DEFAULT_HOST, Port, tcp_url
from rexec_magic.protocol import WORKER_STOP_S


class SpawnerSettings(AuthSettings):
    host: str = DEFAULT_HOST
    spawner_port: int = Field(Port.SPAWNER, description="the spawner's HTTP port")
    # The URL clients reach this spawner at (legacy discovery answers it); empty: host:port.
    spawner_public_url: str = ""
    backend: str = "local"  # "local" (subprocesses) or "kubernetes" (pods; the Helm chart)
    # Where clients reach the broker (returned by /broker-config) ...
    broker_url: str = tcp_url(DEFAULT_HOST, Port.BROKER)
    # ... where workers reach it, and the admin control port the spawner asks for readiness.
    broker_worker_url: str = tcp_url(DEFAULT_HOST, Port.WORKER)
    broker_control_url: str = tcp_url(DEFAULT_HOST, Port.CONTROL)
    # The broker's CurveZMQ public key, handed to clients by /broker-config (empty: no CURVE).
    curve_public_key: str = ""
    worker_key: SecretStr = SecretStr("")  # HMAC key shared with the broker
    admin_secret: SecretStr = SecretStr("")  # for the broker's control port
    state_dir: str | None = None  # worker logs and per-requirements package dirs
    worker_start_timeout_s: float = 60.0
    max_restarts: int = 5  # crash loop: more restarts than this within restart_window_s -> failed
    restart_window_s: float = 60.0
    log_file: str | None = None
    # How often the broker's control port is asked whether a starting worker registered.
    ready_poll_s: float = 0.05
    # SIGTERM, then SIGKILL after this long (the worker's own stop fits in it).
    stop_grace_s: float = WORKER_STOP_S
    # Local backend: the module run as ``python -m <worker_module>``.
    worker_module: str = "worker_image.worker"
    # Local backend: extra ``pip install`` arguments (e.g. "--index-url URL" or "--no-index").
    pip_args: str = ""
    install_timeout_s: float = 900.0

    # Stop every worker when the spawner shuts down (SIGTERM)?  Unset: the backend decides
    # (local: yes, `rexec up`'s Ctrl-C stops everything; kubernetes: no, an upgraded spawner
    # adopts them).  A spawner that dies (SIGKILL, crash) never takes workers with it.
    stop_workers_on_exit: bool | None = None

    # Warm pool: generic workers kept started (default image, no extra requirements); a spawn
    # that needs nothing else claims one.  0 turns the pool off.
    warm_pool_size: int = 0
    # Idle culling: a worker with no cell for this long is stopped.  0 turns culling off.
    cull_idle_seconds: float = 0.0

    # ---- kubernetes backend
    k8s_kubeconfig: str | None = None  # a kubeconfig file; unset: in-cluster config
    k8s_namespace: str = "rexec"  # where worker pods live ...
    k8s_namespace_per_user: bool = False  # ... or one namespace per user: prefix + user
    k8s_namespace_prefix: str = "rexec-server-"
    k8s_image: str = "rexec-worker:latest"  # the default worker image ...
    k8s_python: str = "3.11"  # ... and its Python (``python==X.Y`` pins are checked on it)
    k8s_images: dict[str, str] = {}  # other Pythons: {"3.12": "image"} (python==3.12 pin)
    k8s_profiles: dict[str, str] = {}  # spawn option ``profile``: {"gpu": "image"}
    k8s_image_pull_policy: str = "IfNotPresent"
    # Packages the image already has: requirements naming only these install nothing.
    k8s_image_packages: list[str] = ["numpy", "pandas", "matplotlib"]
    k8s_cpu: str = "1"  # default request (and limit) per worker ...
    k8s_memory: str = "2Gi"
    k8s_max_cpu: str = "4"  # ... and the most a spawn option may ask for
    k8s_max_memory: str = "16Gi"
    k8s_max_gpu: int = 0  # nvidia.com/gpu
    k8s_node_selector: dict[str, str] = {}
    k8s_tolerations: list[dict[str, Any]] = []
    # The workers' folders: a volume source, e.g. {"persistentVolumeClaim": {"claimName":
    # "rexec-work"}} (each user gets the sub-folder named after them).  Empty: an emptyDir per
    # pod, which survives restarts of the worker but not the pod.
    k8s_work_volume: dict[str, Any] = {}
    k8s_worker_uid: int = 1000
    k8s_api_timeout_s: float = 10.0  # each Kubernetes API call
    # One watch for all worker pods (and one for their events): each watch request asks the
    # API server to end it after this long, and the next resumes from the last version seen.
    k8s_watch_timeout_s: float = 60.0
    # Merged into every worker pod's spec / worker container (the chart's
    # worker.extraPodConfig / extraContainerConfig; kubespawner's extra_pod_config).
    k8s_extra_pod_config: dict[str, Any] = {}
    k8s_extra_container_config: dict[str, Any] = {}
    # With per-user namespaces: the worker NetworkPolicy's spec to put in each (from the chart).
    k8s_network_policy: dict[str, Any] = {}
    # Several spawners on one cluster (a second replica, an upgrade's overlap): the holder of
    # this Lease (in k8s_namespace) culls and fills the warm pool.  Empty: always this one.
    k8s_lease_name: str = "rexec-spawner"
    k8s_lease_duration_s: float = 15.0
    k8s_log_tail_lines: int = 10  # a crashed worker's last log lines, in its failure reason

    def public_url(self) -> str:
        """Where clients reach this spawner: the configured URL, never a request's Host."""
        if self.spawner_public_url:
            return self.spawner_public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.spawner_port}"
