"""Spawner settings, read from ``REXEC_*`` environment variables (or passed by ``rexec up``)."""

from __future__ import annotations

from pydantic import SecretStr

from broker.config import AuthSettings


class SpawnerSettings(AuthSettings):
    host: str = "127.0.0.1"
    spawner_port: int = 8765
    backend: str = "local"  # "local" (subprocesses); "kubernetes" comes with the chart
    # Where clients reach the broker (returned by /broker-config) ...
    broker_url: str = "tcp://127.0.0.1:30001"
    # ... where workers reach it, and the admin control port the spawner asks for readiness.
    broker_worker_url: str = "tcp://127.0.0.1:5560"
    broker_control_url: str = "tcp://127.0.0.1:30002"
    worker_key: SecretStr = SecretStr("")  # HMAC key shared with the broker
    admin_secret: SecretStr = SecretStr("")  # for the broker's control port
    state_dir: str | None = None  # worker logs and per-requirements package dirs
    worker_start_timeout_s: float = 60.0
    max_restarts: int = 5  # crash loop: more restarts than this within restart_window_s -> failed
    restart_window_s: float = 60.0
    log_file: str | None = None
    # How often the broker's control port is asked whether a starting worker registered.
    ready_poll_s: float = 0.05
    # SIGTERM, then SIGKILL after this long.
    stop_grace_s: float = 3.0
    # Local backend: the module run as ``python -m <worker_module>``.
    worker_module: str = "worker_image.worker"
    # Local backend: extra ``pip install`` arguments (e.g. "--index-url URL" or "--no-index").
    pip_args: str = ""
    install_timeout_s: float = 900.0
