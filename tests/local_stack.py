"""A real local stack (`rexec up` as a subprocess) on loopback ports, and its health check.

Not a test module: ``tests/conftest.py`` builds its fixtures from it, and tests that start
their own stack (a special setting, something they break on purpose) import it directly.

Why a health check: one session-scoped stack serves many test modules.  A test that fails
half-way (an interrupt that came too early, a per-test timeout) can leave the user's worker
running an endless cell; every later test then waits behind it and fails too.  So before a
test gets the shared stack, :meth:`Stack.ensure_healthy` checks what a user would need (the
broker answers, the spawner answers, the user's worker is not busy) and repairs what it can.
Every wait is bound to the protocol's own liveness constants, not to a guess of how long
things take on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import requests

from broker.control import BrokerControlError, broker_status
from rexec_magic import connection
from rexec_magic import protocol as P
from rexec_magic.spawner_client import SpawnerClient

ROOT = Path(__file__).resolve().parent.parent

# How long a loaded machine may take to bring `rexec up` to its connection file: generous, yet
# under pytest-timeout's per-test limit (120 s), so a stack that never comes up fails with
# its own output rather than a bare timeout.
STACK_START_S = 90.0
# A broker or spawner that answers none of its checks for this long is considered gone (the
# client gives up on a silent broker after BROKER_SILENT_AFTER_S; we allow several of those).
SERVICE_ANSWER_S = 8 * P.BROKER_SILENT_AFTER_S
# A stopped worker is gone from the broker at the latest when the broker's housekeeping
# gives up on it (a worker killed mid-cell is kept for BUSY_WORKER_DEAD_AFTER_S).
WORKER_GONE_S = P.BUSY_WORKER_DEAD_AFTER_S + 2 * P.WORKER_DEAD_AFTER_S


class StackUnhealthy(AssertionError):
    """The shared stack could not be brought back to a state a test can use."""


def wait_until(predicate, what: str, timeout_s: float, interval_s: float = 0.05):
    """Poll ``predicate()`` until truthy and return it; raise StackUnhealthy at the ceiling."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StackUnhealthy(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class Stack:
    """A running `rexec up`: where it listens, its secrets, its logs."""

    proc: subprocess.Popen
    state_dir: Path
    connection_file: Path
    tmp: Path
    extra: tuple[str, ...] = ()
    # user -> connection file of users added with add_user (the health check needs their tokens)
    users: dict[str, Path] = field(default_factory=dict)

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
        self.users[user] = path
        return path

    def pid(self, name: str) -> int:
        return self.state["pids"][name]

    def wait_pid_changed(self, name: str, old: int, timeout_s: float = SERVICE_ANSWER_S) -> int:
        """The pid of ``name`` once `rexec up` has restarted it (it supervises its children)."""

        def new_pid() -> int | None:
            try:
                pid = self.pid(name)
            except (ValueError, KeyError, FileNotFoundError):
                return None  # up.json is being rewritten
            return pid if pid != old else None

        return wait_until(new_pid, f"`rexec up` to restart the {name}", timeout_s)

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs.glob("*") if p.is_file())

    def log_marks(self) -> dict[str, int]:
        """How long each log is now (bytes), for ``logs_since``."""
        return {p.name: p.stat().st_size for p in self.logs.glob("*") if p.is_file()}

    def logs_since(self, marks: dict[str, int]) -> str:
        """What every log of the stack got since ``log_marks`` gave ``marks`` (a log begun
        since, e.g. a worker's after a respawn, whole), each under its name: for a failure
        message that says what the services did meanwhile."""
        parts = []
        for path in sorted(p for p in self.logs.glob("*") if p.is_file()):
            with path.open("rb") as f:
                f.seek(min(marks.get(path.name, 0), path.stat().st_size))
                text = f.read().decode(errors="replace")
            if text:
                parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ health
    def broker_status(self) -> dict | None:
        """The broker's control-port status, or None if it does not answer in time."""
        try:
            state = self.state
            return broker_status(
                state["control_url"], state["admin_secret"], timeout_s=P.BROKER_SILENT_AFTER_S
            )
        except (BrokerControlError, ValueError, KeyError, FileNotFoundError):
            return None

    def spawner_answers(self) -> bool:
        try:
            return requests.get(
                self.state["spawner_url"] + "/healthz", timeout=P.BROKER_SILENT_AFTER_S
            ).ok
        except (requests.RequestException, ValueError, KeyError, FileNotFoundError):
            return False

    def ensure_healthy(self) -> None:
        """Make this stack fit for the next test, or raise StackUnhealthy.

        1. `rexec up` still runs, and its broker (control-port status) and spawner (/healthz)
           answer; otherwise the stack is restarted on the same ports, so clients that a
           module-scoped fixture holds reconnect to it.
        2. No user's worker is stuck busy with an earlier test's cell: a worker whose heartbeat
           still says busy after WORKER_DEAD_AFTER_S (the broker's own patience) is stopped
           through the spawner, as the user would with ``%rexec_stop``; the next cell starts a
           fresh one.
        """
        answered = self.proc.poll() is None and self._answers_within(SERVICE_ANSWER_S)
        if not answered:
            warnings.warn("the shared rexec stack stopped answering; restarting it", stacklevel=2)
            self.restart()
        status = wait_until(self.broker_status, "the broker's status", SERVICE_ANSWER_S)
        for user, worker in status["workers"].items():
            if worker.get("busy"):
                self._free_worker(user)

    def _answers_within(self, timeout_s: float) -> bool:
        try:
            wait_until(lambda: self.broker_status() is not None, "the broker", timeout_s)
            wait_until(self.spawner_answers, "the spawner", timeout_s)
        except StackUnhealthy:
            return False
        return True

    def _worker_of(self, user: str) -> dict | None:
        status = wait_until(self.broker_status, "the broker's status", SERVICE_ANSWER_S)
        return status["workers"].get(user)

    def _free_worker(self, user: str) -> None:
        """Give a busy worker WORKER_DEAD_AFTER_S to report idle (a cell that just ended shows
        as busy until its next heartbeat); then stop it through the spawner."""
        try:
            wait_until(
                lambda: not (self._worker_of(user) or {}).get("busy"),
                f"the worker of {user} to finish its cell",
                P.WORKER_DEAD_AFTER_S,
            )
            return
        except StackUnhealthy:
            pass
        conn = {self.connection["user"]: self.connection_file, **self.users}.get(user)
        if conn is None:
            raise StackUnhealthy(f"the worker of {user} stays busy and no test knows its token")
        warnings.warn(
            f"the worker of {user} was still busy with an earlier test's cell; stopping it",
            stacklevel=3,
        )
        info = connection.load(conn)
        SpawnerClient(info.spawner_url, info.token, timeout_s=SERVICE_ANSWER_S).stop()
        wait_until(
            lambda: self._worker_of(user) is None,
            f"the broker to let go of the stopped worker of {user}",
            WORKER_GONE_S,
        )

    def restart(self) -> None:
        """Stop `rexec up` and start it again on the same ports, state dir and files.

        The tokens file stays, so every connection file written so far stays valid.
        """
        ports = self.state["ports"]
        stop_stack(self)
        self.proc = start_stack(self.tmp, *self.extra, ports=ports).proc


def start_stack(tmp: Path, *extra: str, ports: dict[str, int] | None = None) -> Stack:
    """`rexec up` with its state under ``tmp``, on ``ports`` (default: free loopback ports)."""
    state_dir = tmp / "state"
    conn = tmp / "connection.json"
    conn.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("REXEC_CONNECTION_FILE", None)
    port_args = [
        arg
        for name in ("broker", "control", "worker", "spawner")
        for arg in (f"--{name}-port", str((ports or {}).get(name, 0)))
    ]
    out = open(tmp / "up.out", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "rexec_magic.cli", "up", *port_args,
         "--state-dir", str(state_dir), "--connection-file", str(conn), *extra],
        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    out.close()
    deadline = time.monotonic() + STACK_START_S
    while not conn.exists():  # written once the broker and the spawner answer
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("rexec up failed:\n" + (tmp / "up.out").read_text())
        time.sleep(0.05)
    return Stack(proc, state_dir, conn, tmp, tuple(extra))


def stop_stack(stack: Stack) -> None:
    """SIGTERM `rexec up` (it stops its workers, spawner and broker); SIGKILL if it hangs."""
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGTERM)
        try:
            stack.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.proc.kill()
            stack.proc.wait()
