"""The spawner: its HTTP API in-process (TestClient), and the local backend with real worker
processes registering with a real broker on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

with warnings.catch_warnings():  # starlette's note about httpx vs httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

from broker.auth import add_static_token
from broker.broker import Broker
from spawner.app import create_app
from spawner.backends.local import safe_name, worker_env
from spawner.backends.local_record import WorkerRecord
from spawner.config import SpawnerSettings
from spawner.errors import INTERNAL_ERROR, InvalidRequest
from spawner.requirements import parse_requirements
from tests.harness import WAIT_S, broker_in_thread, pid_alive, proc_environ, wait_for

ROOT = Path(__file__).resolve().parent.parent
WORKER_KEY = "test-worker-key"
ADMIN_SECRET = "test-admin-secret"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "tokens.json"
    return {
        "file": str(path),
        "alice": add_static_token(path, "alice", groups=["/Science"]),
        "bob": add_static_token(path, "bob", groups=["science"]),
        "eve": add_static_token(path, "eve", groups=["visitors"]),
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def broker() -> Iterator[Broker]:
    with broker_in_thread(WORKER_KEY, ADMIN_SECRET) as b:
        yield b


@pytest.fixture
def settings_for(tmp_path: Path, tokens, broker) -> Callable[..., SpawnerSettings]:
    def make(**overrides: Any) -> SpawnerSettings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "authenticator": "static",
            "tokens_file": tokens["file"],
            "allowed_groups": "science",
            "broker_url": f"tcp://127.0.0.1:{broker.ports['broker']}",
            "broker_worker_url": f"tcp://127.0.0.1:{broker.ports['worker']}",
            "broker_control_url": f"tcp://127.0.0.1:{broker.ports['control']}",
            "worker_key": WORKER_KEY,
            "admin_secret": ADMIN_SECRET,
            "state_dir": str(tmp_path / "state"),
            "worker_start_timeout_s": WAIT_S,
            "stop_grace_s": 3.0,
        }
        values.update(overrides)
        return SpawnerSettings(**values)

    return make


@contextmanager
def running_spawner(settings: SpawnerSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def spawner(settings_for) -> Iterator[TestClient]:
    with running_spawner(settings_for()) as client:
        yield client


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture, tokens) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for key in ("alice", "bob", "eve"):
        assert tokens[key] not in text
    assert WORKER_KEY not in text and ADMIN_SECRET not in text


def spawn(client: TestClient, token: str, *requirements: str, **body: Any) -> dict[str, Any]:
    resp = client.post(
        "/spawn", json={"requirements": list(requirements), **body}, headers=bearer(token)
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_state(client: TestClient, token: str, *states: str, timeout_s: float = WAIT_S) -> dict:
    """Long-poll /status until the state is one of ``states``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get("/status", params={"wait_s": 2}, headers=bearer(token)).json()
        if status["state"] in states:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"state stayed {status['state']}: {status}")


# --------------------------------------------------------------------------- requirements
def test_parse_requirements_normalizes_and_ignores_comments():
    reqs = parse_requirements(
        ["# a comment", "", "numpy >= 1.20  # inline comment", "pandas\nrequests[socks]"], PY
    )
    assert reqs.lines == ("numpy>=1.20", "pandas", "requests[socks]")
    assert [r.name for r in reqs.packages] == ["numpy", "pandas", "requests"]
    same = parse_requirements(["pandas", "requests[socks]", "numpy>=1.20"], PY)
    assert same == reqs and same.digest(PY) == reqs.digest(PY)


@pytest.mark.parametrize("line", ["numpy>>1", "pandas==", "-e .", "what is this"])
def test_parse_requirements_names_the_bad_line(line):
    with pytest.raises(InvalidRequest) as err:
        parse_requirements(["numpy", line], PY)
    assert err.value.message.startswith(f"Invalid requirement {line!r}")


def test_python_pin():
    reqs = parse_requirements([f"python=={PY}", "numpy"], f"{PY}.3")
    assert reqs.python == f"=={PY}"
    assert [r.name for r in reqs.packages] == ["numpy"]
    assert f"python=={PY}" in reqs.lines
    parse_requirements([f"python>={PY}", f"Python=={PY}.*"], f"{PY}.3")
    with pytest.raises(InvalidRequest) as err:
        parse_requirements(["python==2.7"], f"{PY}.3")
    assert "2.7" in err.value.message and PY in err.value.message


def test_worker_environment_is_scrubbed():
    base = {
        "PATH": "/bin",
        "PYTHONPATH": "/old",
        "REXEC_WORKER_KEY": "k",
        "REXEC_ADMIN_SECRET": "a",
        "REXEC_TOKENS_FILE": "/t",
        "REXEC_LOG_LEVEL": "DEBUG",
        "JUPYTERHUB_API_TOKEN": "t",
        "AWS_SECRET_ACCESS_KEY": "s",
        "DB_PASSWORD": "p",
    }
    env = worker_env(
        base,
        broker_worker_url="tcp://127.0.0.1:1",
        user="u",
        nonce="n",
        secret_fd=7,
        pythonpath=["/env"],
    )
    assert env["PATH"] == "/bin" and env["REXEC_LOG_LEVEL"] == "DEBUG"
    assert env["PYTHONPATH"] == os.pathsep.join(["/env", "/old"])
    assert {k for k in env if k.startswith("REXEC_")} == {
        "REXEC_LOG_LEVEL",
        "REXEC_BROKER_WORKER_URL",
        "REXEC_WORKER_USER",
        "REXEC_WORKER_NONCE",
        "REXEC_WORKER_SECRET_FD",  # the number of a pipe: the secret is in no environment
    }
    assert not {"JUPYTERHUB_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD"} & set(env)


def test_log_file_names_are_safe_and_distinct():
    assert safe_name("alice") == "alice"
    odd = ["../etc/passwd", "a/b", "a_b", "user@example.org", ".hidden"]
    names = [safe_name(u) for u in odd]
    assert len(set(names)) == len(odd)
    assert all("/" not in n and not n.startswith(".") for n in names)


# --------------------------------------------------------------------------- API, no worker
def test_healthz_needs_no_token(spawner):
    assert spawner.get("/healthz").json() == {"ok": True}


def test_missing_or_bad_token_is_401(spawner):
    resp = spawner.get("/status")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in resp.json()["detail"]
    resp = spawner.get("/status", headers={"Authorization": "Basic abc"})
    assert resp.status_code == 401
    resp = spawner.post("/spawn", json={}, headers=bearer("not-a-token"))
    assert resp.status_code == 401
    assert resp.json() == {"detail": "The token is not valid."}


def test_group_policy_is_403(spawner, tokens):
    resp = spawner.get("/status", headers=bearer(tokens["eve"]))
    assert resp.status_code == 403
    assert resp.json()["detail"] == "User eve is not in a group allowed to use rexec."


def test_auth_service_down_is_503(settings_for, tokens):
    settings = settings_for(
        authenticator="auth_api", auth_api_url=f"http://127.0.0.1:{free_port()}/auth"
    )
    with running_spawner(settings) as client:
        resp = client.get("/status", headers=bearer(tokens["alice"]))
    assert resp.status_code == 503
    assert resp.json() == {"detail": "The authentication service could not be reached."}


def test_status_without_worker(spawner, tokens):
    status = spawner.get("/status", headers=bearer(tokens["alice"])).json()
    assert status["user"] == "alice" and status["state"] == "stopped"
    assert status["pid"] is None and status["python"] == PY
    resp = spawner.delete("/worker", headers=bearer(tokens["alice"]))
    assert resp.status_code == 200 and resp.json()["state"] == "stopped"


def test_invalid_requirement_is_422_naming_the_line(spawner, tokens):
    resp = spawner.post(
        "/spawn", json={"requirements": ["numpy", "numpy>>1"]}, headers=bearer(tokens["alice"])
    )
    assert resp.status_code == 422
    assert resp.json()["detail"].startswith("Invalid requirement 'numpy>>1': ")


def test_python_pin_mismatch_is_422(spawner, tokens):
    resp = spawner.post(
        "/spawn", json={"requirements": ["python==2.7"]}, headers=bearer(tokens["alice"])
    )
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert "Python ==2.7" in detail and f"Python {PY}" in detail


def test_malformed_body_is_422_with_a_sentence(spawner, tokens):
    resp = spawner.post("/spawn", json={"requirements": "numpy"}, headers=bearer(tokens["alice"]))
    assert resp.status_code == 422
    body = resp.json()
    assert body["detail"].startswith("The request is not valid: requirements: ")
    assert all("input" not in e for e in body["errors"])


def test_broker_config(spawner, tokens, broker):
    resp = spawner.get("/broker-config", headers=bearer(tokens["alice"]))
    port = broker.ports["broker"]
    assert resp.json() == {
        "broker_url": f"tcp://127.0.0.1:{port}",
        "broker_external_host": "127.0.0.1",
        "broker_external_port": port,
        "broker_external_url": f"tcp://127.0.0.1:{port}",
        "broker_curve_public_key": "",
    }


def test_openapi_documents_the_api(spawner):
    schema = spawner.get("/openapi.json").json()
    assert {"/spawn", "/status", "/worker", "/broker-config", "/healthz"} <= set(schema["paths"])
    assert schema["paths"]["/spawn"]["post"]["security"]
    assert "healthz" in str(schema["paths"]["/healthz"]) and not schema["paths"]["/healthz"][
        "get"
    ].get("security")
    assert "WorkerStatus" in schema["components"]["schemas"]
    assert spawner.get("/docs").status_code == 200


def test_unexpected_error_is_500_without_trace(spawner, tokens, caplog, monkeypatch):
    service = spawner.app.state.service

    def broken(identity):
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr(service, "status", broken)
    resp = spawner.get("/status", headers=bearer(tokens["alice"]))
    assert resp.status_code == 500
    assert resp.json() == {"detail": INTERNAL_ERROR}
    assert "must not leak" in caplog.text  # the traceback is in the log ...
    assert "must not leak" not in resp.text  # ... never in the answer


# --------------------------------------------------------------------------- real workers
def test_spawn_ready_idempotent_conflict_force_stop(spawner, tokens, tmp_path, monkeypatch):
    # Secrets in the spawner's own environment must not reach the worker.
    monkeypatch.setenv("REXEC_WORKER_KEY", WORKER_KEY)
    monkeypatch.setenv("REXEC_ADMIN_SECRET", ADMIN_SECRET)
    monkeypatch.setenv("SOME_SERVICE_TOKEN", tokens["bob"])
    alice = tokens["alice"]

    t0 = time.monotonic()
    first = spawn(spawner, alice, "packaging", "# nothing", "")
    assert first["state"] == "starting" and first["requirements"] == ["packaging"]
    ready = wait_state(spawner, alice, "ready", "failed")
    elapsed = time.monotonic() - t0
    assert ready["state"] == "ready", ready
    print(f"\nspawn to ready: {elapsed:.2f} s")
    assert ready["python"] == PY and ready["restarts"] == 0
    assert ready["ready_at"] and ready["started_at"]
    pid = ready["pid"]
    assert pid_alive(pid)

    env = proc_environ(pid)
    assert env["REXEC_WORKER_USER"] == "alice"
    assert env["REXEC_BROKER_WORKER_URL"] == spawner.app.state.settings.broker_worker_url
    assert len(env["REXEC_WORKER_NONCE"]) >= 16 and "REXEC_WORKER_SECRET" not in env
    assert "REXEC_WORKER_KEY" not in env and "REXEC_ADMIN_SECRET" not in env
    assert "SOME_SERVICE_TOKEN" not in env
    assert not any(t in v for v in env.values() for t in (WORKER_KEY, ADMIN_SECRET))
    log_file = tmp_path / "state" / "logs" / "worker-alice.log"
    assert log_file.exists()

    # Same requirements again: nothing new starts.
    again = spawn(spawner, alice, "packaging")
    assert again["pid"] == pid and again["state"] == "ready"

    # Other requirements: 409 with a sentence, the worker untouched.
    resp = spawner.post("/spawn", json={"requirements": ["pytest"]}, headers=bearer(alice))
    assert resp.status_code == 409
    assert "other requirements (packaging)" in resp.json()["detail"]
    assert pid_alive(pid)

    # force: restart with the new ones.
    forced = spawn(spawner, alice, "pytest", force=True)
    assert forced["requirements"] == ["pytest"]
    assert not pid_alive(pid)
    ready2 = wait_state(spawner, alice, "ready", "failed")
    assert ready2["state"] == "ready" and ready2["pid"] != pid
    assert proc_environ(ready2["pid"])["REXEC_WORKER_NONCE"] != env["REXEC_WORKER_NONCE"]

    # Another user gets a worker of their own.
    bob = wait_state(spawner, tokens["bob"], "stopped")
    assert bob["user"] == "bob"

    # DELETE stops the process; deleting again is fine.
    stopped = spawner.delete("/worker", headers=bearer(alice)).json()
    assert stopped["state"] == "stopped" and stopped["pid"] is None
    assert not pid_alive(ready2["pid"])
    assert spawner.delete("/worker", headers=bearer(alice)).json()["state"] == "stopped"


def test_killed_worker_is_restarted(spawner, tokens):
    alice = tokens["alice"]
    spawn(spawner, alice)
    ready = wait_state(spawner, alice, "ready", "failed")
    assert ready["state"] == "ready", ready
    old = ready["pid"]
    nonce = proc_environ(old)["REXEC_WORKER_NONCE"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not pid_alive(old), what="the worker to die")

    def back() -> dict | None:
        s = spawner.get("/status", headers=bearer(alice)).json()
        return s if s["state"] == "ready" and s["pid"] not in (None, old) else None

    status = wait_for(back, what="the restarted worker to be ready")
    assert status["restarts"] == 1
    assert proc_environ(status["pid"])["REXEC_WORKER_NONCE"] == nonce  # same nonce and secret
    assert any("restarting" in line for line in status["log_tail"])


def test_a_new_worker_keeps_the_previous_workers_log_beside_its_own(spawner, tokens, tmp_path):
    """Starting again after a stop begins a new worker log and keeps the previous one as
    ``worker-<user>.log.1``, so what the last worker said before it went is still there."""
    alice = tokens["alice"]
    spawn(spawner, alice)
    first = wait_state(spawner, alice, "ready", "failed")
    assert first["state"] == "ready", first
    assert spawner.delete("/worker", headers=bearer(alice)).json()["state"] == "stopped"
    spawn(spawner, alice)
    second = wait_state(spawner, alice, "ready", "failed")
    assert second["state"] == "ready" and second["pid"] != first["pid"]
    logs = tmp_path / "state" / "logs"
    previous = (logs / "worker-alice.log.1").read_text()
    current = (logs / "worker-alice.log").read_text()
    assert f"(pid {first['pid']})" in previous and f"(pid {first['pid']})" not in current
    assert f"(pid {second['pid']})" in current


def test_worker_told_to_stop_by_someone_else_is_not_restarted(spawner, tokens):
    alice = tokens["alice"]
    spawn(spawner, alice)
    pid = wait_state(spawner, alice, "ready", "failed")["pid"]
    os.kill(pid, signal.SIGTERM)  # the worker exits 0: it was asked to stop
    status = wait_state(spawner, alice, "stopped", "failed")
    assert status["message"].startswith("The worker exited by itself")
    assert status["restarts"] == 0 and status["pid"] is None
    assert not pid_alive(pid)


def test_crash_loop_fails_with_log_tail_and_says_how_it_last_ended(settings_for, tokens):
    """A worker that keeps dying is given up after ``max_restarts`` restarts; the failure
    says how the last one ended, and the status keeps it as ``last_exit_reason`` (it kept
    the one before: the notebook named the wrong cause, or none, for the death that ended
    its cell)."""
    alice = tokens["alice"]
    with running_spawner(settings_for(max_restarts=2, restart_window_s=60)) as client:
        spawn(client, alice)
        killed: list[int] = []

        def kill_until_failed() -> dict | None:
            s = client.get("/status", headers=bearer(alice)).json()
            if s["state"] == "failed":
                return s
            if s["pid"] and s["pid"] not in killed:
                killed.append(s["pid"])
                os.kill(s["pid"], signal.SIGKILL if len(killed) < 3 else signal.SIGABRT)
            return None

        status = wait_for(kill_until_failed, what="the crash loop to be detected")
    assert len(killed) == 3
    assert status["message"] == (
        "Worker exited 3 times in 60 s (the last time: killed by signal 6); last lines of "
        "its log are below."
    )
    assert status["last_exit_reason"] == "killed by signal 6", status
    assert status["log_tail"] and status["restarts"] == 2
    assert not any(pid_alive(p) for p in killed)


def test_rejected_secret_fails_at_once(settings_for, tokens):
    alice = tokens["alice"]
    with running_spawner(settings_for(worker_key="not-the-broker-key")) as client:
        spawn(client, alice)
        status = wait_state(client, alice, "failed", "ready")
    assert status["state"] == "failed"
    assert "REXEC_WORKER_KEY" in status["message"] and status["restarts"] == 0


def test_start_timeout_fails_and_stops_the_worker(settings_for, tokens):
    alice = tokens["alice"]
    settings = settings_for(
        worker_start_timeout_s=1.0, broker_control_url=f"tcp://127.0.0.1:{free_port()}"
    )
    with running_spawner(settings) as client:
        first = spawn(client, alice)
        pid = wait_for(lambda: client.get("/status", headers=bearer(alice)).json()["pid"])
        status = wait_state(client, alice, "failed", "ready")
    assert first["state"] == "starting"
    assert status["message"].startswith("The worker did not register with the broker within 1 s")
    assert "asking the broker's control port: " in status["message"]
    assert not pid_alive(pid)


def test_shutdown_stops_every_worker(settings_for, tokens):
    pids = []
    with running_spawner(settings_for()) as client:
        for user in ("alice", "bob"):
            spawn(client, tokens[user])
        for user in ("alice", "bob"):
            status = wait_state(client, tokens[user], "ready", "failed")
            assert status["state"] == "ready", status
            pids.append(status["pid"])
        assert all(pid_alive(p) for p in pids)
    assert not any(pid_alive(p) for p in pids)


# --------------------------------------------------------------------------- requirements
def make_wheel(directory: Path, name: str = "rexec_probe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, built by hand (no network, no build backend)."""
    dist = f"{name}-{version}"
    files = {
        f"{name}.py": "VALUE = 42\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def test_missing_requirement_is_installed_once(settings_for, tokens, tmp_path):
    wheel = make_wheel(tmp_path)
    req = f"rexec-probe @ {wheel.as_uri()}"
    with running_spawner(settings_for(pip_args="--no-index")) as client:
        spawn(client, tokens["alice"], req)
        status = wait_state(client, tokens["alice"], "ready", "failed", timeout_s=120)
        assert status["state"] == "ready", status
        pythonpath = proc_environ(status["pid"])["PYTHONPATH"].split(os.pathsep)
        env_dir = Path(pythonpath[0])
        assert env_dir.parent == tmp_path / "state" / "envs"
        assert (env_dir / "rexec_probe.py").exists()
        assert any("pip install" in line for line in status["log_tail"])
        # Bob asks for the same: the environment is reused, pip does not run again.
        spawn(client, tokens["bob"], req)
        bob = wait_state(client, tokens["bob"], "ready", "failed")
        assert bob["state"] == "ready", bob
        assert proc_environ(bob["pid"])["PYTHONPATH"].split(os.pathsep)[0] == str(env_dir)
        assert not any("pip install" in line for line in bob["log_tail"])


def test_failed_install_fails_with_pips_error(settings_for, tokens):
    with running_spawner(settings_for(pip_args="--no-index")) as client:
        spawn(client, tokens["alice"], "rexec-no-such-package-anywhere==1.0")
        status = wait_state(client, tokens["alice"], "failed", "ready", timeout_s=120)
    assert status["state"] == "failed"
    assert status["message"] == (
        "Installing the requirements failed: "
        "No matching distribution found for rexec-no-such-package-anywhere==1.0."
    )
    assert status["pid"] is None


# --------------------------------------------------------------------------- serve()
def _serve_spawner(settings: SpawnerSettings, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    proc = _start_spawner_process(settings, tmp_path)
    url = f"http://127.0.0.1:{settings.spawner_port}"

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / "spawner.out").read_text()
        try:
            return requests.get(url + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    wait_for(healthy, what="the spawner to serve")
    return proc, url


def _start_spawner_process(settings: SpawnerSettings, tmp_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REXEC_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        # Lists and mappings travel as JSON, as the settings document.
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        env[f"REXEC_{name.upper()}"] = text
    out = open(tmp_path / "spawner.out", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-c", "from spawner.server import serve; serve()"],
        env=env,
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def _ready_worker(url: str, token: str) -> int:
    requests.post(url + "/spawn", json={}, headers=bearer(token), timeout=10).raise_for_status()
    status = requests.get(url + "/status?wait_s=20", headers=bearer(token), timeout=30).json()
    assert status["state"] == "ready", status
    return status["pid"]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_served_spawner_shutdown_stops_its_workers(settings_for, tokens, tmp_path, how):
    """A clean shutdown (``rexec up``'s Ctrl-C) stops the workers: asked, not a death signal."""
    settings = settings_for(spawner_port=free_port())
    proc, url = _serve_spawner(settings, tmp_path)
    try:
        pid = _ready_worker(url, tokens["alice"])
        assert pid_alive(pid)
        proc.send_signal(getattr(signal, how))
        proc.wait(timeout=20)
        wait_for(lambda: not pid_alive(pid), what="the worker to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "spawner.out").read_text()
    assert "stopped worker for alice" in log
    assert proc.returncode in (0, -signal.SIGTERM)


def test_a_killed_spawner_leaves_workers_that_the_next_one_adopts(
    settings_for, tokens, tmp_path, broker
):
    settings = settings_for(spawner_port=free_port())
    proc, url = _serve_spawner(settings, tmp_path)
    try:
        pid = _ready_worker(url, tokens["alice"])
        nonce = broker.workers["alice"].nonce
        proc.kill()  # SIGKILL: no shutdown code runs
        proc.wait(timeout=20)
        assert pid_alive(pid)  # the worker does not depend on the spawner's process
        assert broker.workers["alice"].nonce == nonce

        proc, url = _serve_spawner(settings, tmp_path)  # the same state dir
        status = requests.get(url + "/status?wait_s=20", headers=bearer(tokens["alice"]),
                              timeout=30).json()  # fmt: skip
        assert status["state"] == "ready", status
        assert status["pid"] == pid
        assert status["message"] == (
            "The worker is ready (it kept running while the spawner restarted)."
        )
        # The adopted worker is supervised: killed, it is restarted as if ours.
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: broker.workers.get("alice") is not None
                 and broker.workers["alice"].pid not in (None, pid),
                 what="the restarted worker")  # fmt: skip
        status = requests.get(url + "/status", headers=bearer(tokens["alice"]), timeout=10).json()
        assert status["restarts"] == 1
        new_pid = broker.workers["alice"].pid
        # Stopping is still possible, and a clean shutdown takes the workers with it.
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        wait_for(lambda: not pid_alive(new_pid), timeout_s=5, what="the worker to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_spawner_on_the_same_state_dir_refuses_with_a_sentence(
    settings_for, tokens, tmp_path
):
    """Two local spawners would supervise (and restart) the same workers twice: the second
    refuses to start, saying why, and the first goes on serving."""
    first_settings = settings_for(spawner_port=free_port())
    proc, url = _serve_spawner(first_settings, tmp_path)
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    try:
        pid = _ready_worker(url, tokens["alice"])
        second = _start_spawner_process(settings_for(spawner_port=free_port()), second_dir)
        assert second.wait(timeout=60) != 0
        out = (second_dir / "spawner.out").read_text()
        assert f"Another rexec spawner (pid {proc.pid}) uses the state dir" in out
        status = requests.get(url + "/status", headers=bearer(tokens["alice"]), timeout=10)
        assert status.json()["state"] == "ready" and status.json()["pid"] == pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_warm_pool_workers_outlive_a_killed_spawner_and_are_claimed_after(
    settings_for, tokens, tmp_path, broker
):
    settings = settings_for(spawner_port=free_port(), warm_pool_size=1)
    proc, url = _serve_spawner(settings, tmp_path)
    try:
        (pool_id,) = wait_for(lambda: list(broker.pool), what="a warm-pool worker")
        pool_pid = broker.pool[pool_id].pid
        proc.kill()
        proc.wait(timeout=20)
        proc, url = _serve_spawner(settings, tmp_path)  # adopts it: no second pool worker
        requests.post(url + "/spawn", json={}, headers=bearer(tokens["alice"]), timeout=10)
        status = requests.get(url + "/status?wait_s=20", headers=bearer(tokens["alice"]),
                              timeout=30).json()  # fmt: skip
        assert status["state"] == "ready" and status["from_warm_pool"] is True
        assert status["pid"] == pool_pid  # the adopted pool worker, now alice's
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_an_adopted_worker_is_culled_when_idle(settings_for, tokens, tmp_path, broker):
    settings = settings_for(spawner_port=free_port(), cull_idle_seconds=2.0)
    proc, url = _serve_spawner(settings, tmp_path)
    try:
        pid = _ready_worker(url, tokens["alice"])
        proc.kill()
        proc.wait(timeout=20)
        proc, url = _serve_spawner(settings, tmp_path)

        def culled() -> dict | None:
            st = requests.get(url + "/status", headers=bearer(tokens["alice"]), timeout=10).json()
            return st if st["state"] == "stopped" else None

        status = wait_for(culled, what="the adopted worker to be culled")
        assert status["message"] == "Your worker was stopped after 2 s idle."
        wait_for(lambda: not pid_alive(pid), what="the culled worker to exit")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_two_first_spawns_at_once_start_one_worker(spawner, tokens, settings_for):
    """Two notebooks run their first cell together: one worker, both answers about it."""
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: spawn(spawner, tokens["alice"]), range(2)))
    status = wait_state(spawner, tokens["alice"], "ready")
    record = WorkerRecord(Path(settings_for().state_dir) / "workers.sqlite3")
    rows = [row for row in record.rows() if row.user == "alice" and row.alive()]
    assert [row.pid for row in rows] == [status["pid"]]


@pytest.mark.stack
def test_the_spawner_log_leaves_out_answered_status_polls(stack):
    """A JupyterLab sidebar asks for the status about four times a second: those answers no
    longer bury the log (2,971 of 3,000 lines), while a refused status request and other
    requests are still logged."""
    url = stack.state["spawner_url"]
    token = json.loads(stack.add_user("log-ida").read_text())["token"]
    for _ in range(5):
        answer = requests.get(
            f"{url}/status", headers={"Authorization": f"Bearer {token}"}, timeout=WAIT_S
        )
        assert answer.status_code == 200
    refused = requests.get(
        f"{url}/status", headers={"Authorization": "Bearer not-a-token"}, timeout=WAIT_S
    )
    assert refused.status_code == 401
    assert requests.get(f"{url}/healthz", timeout=WAIT_S).status_code == 200
    log = stack.logs / "spawner.log"
    wait_for(lambda: '"GET /healthz HTTP/1.1" 200' in log.read_text(), "the health check logged")
    text = log.read_text()
    assert '"GET /status HTTP/1.1" 401' in text
    assert '"GET /status HTTP/1.1" 200' not in text
    assert "not-a-token" not in text
