"""Shared fixtures: a real local stack (`rexec up` as a subprocess) on loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stack:
    """A running `rexec up`: where it listens, its secrets, its logs."""

    proc: subprocess.Popen
    state_dir: Path
    connection_file: Path
    tmp: Path

    @property
    def state(self) -> dict:
        return json.loads((self.state_dir / "up.json").read_text())

    @property
    def connection(self) -> dict:
        return json.loads(self.connection_file.read_text())

    @property
    def token(self) -> str:
        return self.connection["token"]

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def add_user(self, user: str, groups: str = "") -> Path:
        """A connection file (with a fresh token) for another user of this stack."""
        path = self.tmp / f"{user}-connection.json"
        subprocess.run(
            [sys.executable, "-m", "rexec_magic.cli", "token", user, "--groups", groups,
             "--connection-file", str(path), "--state-dir", str(self.state_dir)],
            check=True, capture_output=True,
        )  # fmt: skip
        return path

    def pid(self, name: str) -> int:
        return self.state["pids"][name]

    def wait_pid_changed(self, name: str, old: int, timeout_s: float = 20.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                pid = self.pid(name)
            except (ValueError, KeyError, FileNotFoundError):
                pid = old
            if pid != old:
                return pid
            time.sleep(0.05)
        raise AssertionError(f"{name} was not restarted")

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs.glob("*") if p.is_file())


def start_stack(tmp: Path, *extra: str) -> Stack:
    state_dir = tmp / "state"
    conn = tmp / "connection.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("REXEC_CONNECTION_FILE", None)
    out = open(tmp / "up.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "rexec_magic.cli", "up",
         "--broker-port", "0", "--control-port", "0", "--worker-port", "0",
         "--spawner-port", "0", "--state-dir", str(state_dir), "--connection-file", str(conn),
         *extra],
        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not conn.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("rexec up failed:\n" + (tmp / "up.out").read_text())
        time.sleep(0.05)
    return Stack(proc, state_dir, conn, tmp)


def stop_stack(stack: Stack) -> None:
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGTERM)
        try:
            stack.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.proc.kill()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One `rexec up` for the session; tests that break things use `fresh_stack`."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    stop_stack(s)


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path)
    yield s
    stop_stack(s)
