"""Warm pool and idle culling with the local backend: real worker processes, a real broker.

The pool worker registers under a pool id (never routable); a spawn claims it through the
broker, and the same process becomes the user's worker with a per-user secret it receives
at claim time.  A worker the broker has seen idle for ``cull_idle_seconds`` is stopped and the
status says why.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

from broker.auth import add_static_token
from broker.broker import Broker
from spawner.app import create_app
from spawner.config import SpawnerSettings
from tests.harness import broker_in_thread, pid_alive, proc_environ, wait_for

KEY, ADMIN = "pool-test-worker-key", "pool-test-admin-secret"


@pytest.fixture
def broker() -> Iterator[Broker]:
    with broker_in_thread(KEY, ADMIN) as b:
        yield b


@pytest.fixture
def spawner(broker: Broker, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    tokens = tmp_path / "tokens.json"
    settings = SpawnerSettings(
        tokens_file=str(tokens),
        worker_key=KEY,
        admin_secret=ADMIN,
        state_dir=str(tmp_path / "state"),
        broker_worker_url=f"tcp://127.0.0.1:{broker.ports['worker']}",
        broker_control_url=f"tcp://127.0.0.1:{broker.ports['control']}",
        **request.param,
    )
    token = add_static_token(tokens, "alice")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


@pytest.mark.parametrize("spawner", [{"warm_pool_size": 1}], indirect=True)
def test_spawn_claims_the_pool_worker_and_a_replacement_starts(
    spawner: Any, broker: Broker, tmp_path: Path
) -> None:
    pool = spawner.app.state.service.pool
    wait_for(lambda: pool.ready, "a ready pool worker")
    (pool_id,) = broker.pool
    pool_pid = broker.pool[pool_id].pid
    env = proc_environ(pool_pid)
    assert env["REXEC_WORKER_POOL"] == "1" and env["REXEC_WORKER_USER"] == pool_id
    assert "alice" not in broker.workers  # nobody's cells can reach a pool worker

    assert spawner.post("/spawn", json={}).status_code == 200
    st = spawner.get("/status", params={"wait_s": 20}).json()
    assert st["state"] == "ready" and st["from_warm_pool"] is True
    assert "claimed from the warm pool" in st["message"]
    assert st["pid"] == pool_pid == broker.workers["alice"].pid  # the same process, now alice's
    assert pool_id not in broker.pool
    wait_for(lambda: pool.ready and pool_id not in pool.ready, "a replacement pool worker")
    # The claimed worker moved into alice's own folder (relative paths in her cells mean it).
    folder = tmp_path / "state" / "work" / "alice"
    wait_for(lambda: os.readlink(f"/proc/{pool_pid}/cwd") == str(folder), "the move to her folder")

    # A spawn with requirements never takes a generic pool worker.
    spawner.delete("/worker")
    wait_for(lambda: not pid_alive(pool_pid), "the claimed worker to stop")
    assert spawner.post("/spawn", json={"requirements": ["pytest"]}).status_code == 200
    st = spawner.get("/status", params={"wait_s": 20}).json()
    assert st["state"] == "ready" and st["from_warm_pool"] is False


@pytest.mark.parametrize("spawner", [{"cull_idle_seconds": 1.0}], indirect=True)
def test_idle_worker_is_stopped_and_status_says_why(spawner: Any, broker: Broker) -> None:
    assert spawner.post("/spawn", json={}).status_code == 200
    st = spawner.get("/status", params={"wait_s": 20}).json()
    assert st["state"] == "ready"
    pid = st["pid"]
    st = wait_for(
        lambda: (s := spawner.get("/status").json())["state"] == "stopped" and s, "culling"
    )
    assert st["message"] == "Your worker was stopped after 1 s idle."
    assert st["idle_culled_after_s"] == 1.0
    wait_for(lambda: not pid_alive(pid), "the culled worker to exit")
    # The next spawn starts a fresh worker and forgets the culling.
    spawner.post("/spawn", json={})
    st = spawner.get("/status", params={"wait_s": 20}).json()
    assert st["state"] == "ready" and st["idle_culled_after_s"] is None and st["pid"] != pid
