"""Spawner backends, chosen by ``REXEC_BACKEND``.  See ``base.py`` for the contract."""

from __future__ import annotations

import importlib

from spawner.backends.base import Backend, WorkerHandle, WorkerSpec
from spawner.config import SpawnerSettings

# name -> "module:Class"; imported on demand so the kubernetes client loads only when used.
BACKENDS: dict[str, str] = {
    "local": "spawner.backends.local:LocalBackend",
    "kubernetes": "spawner.backends.kubernetes:KubernetesBackend",
}


def load_backend(settings: SpawnerSettings) -> Backend:
    try:
        target = BACKENDS[settings.backend]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"Unknown spawner backend {settings.backend!r}; use one of: {known}.")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(settings)


__all__ = ["BACKENDS", "Backend", "WorkerHandle", "WorkerSpec", "load_backend"]
