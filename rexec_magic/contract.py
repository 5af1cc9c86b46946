"""The facts every rexec component shares, each written once.

Ports and their defaults, the environment names a worker is started with, the worker's exit
codes, the worker states the spawner reports (and the sidebar shows), the default pull limit
and the version.  Client, broker, spawner, worker and the Jupyter extension import them from
here; the JupyterLab extension reads a generated copy (``jupyter_ext/lab/src/contract.ts``,
written by ``python -m rexec_magic.contract``; a unit test fails when it is out of date).

This module imports nothing but the standard library, so every side can import it.
"""

from __future__ import annotations

import enum
import json
import re
import sys
from importlib.metadata import PackageNotFoundError, version

#: The distribution whose metadata holds the one version number (pyproject.toml).
DISTRIBUTION = "rexec-magic"


def _version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


VERSION = _version()

#: True in a worker's executor (``worker_image.executor`` sets it as it starts): code there
#: runs on the worker already, so a ``remote_func`` called there (by a remote cell, or by
#: another remote function) runs in place, as a plain call (``rexec_magic.remote_call``).
ON_WORKER = False

# --------------------------------------------------------------------------- network
#: Every port binds to this interface unless configured otherwise: never all interfaces.
DEFAULT_HOST = "127.0.0.1"


class Port(enum.IntEnum):
    """Default TCP ports (``0`` in a setting picks a free port)."""

    BROKER = 30001  # the broker's client port (DEALER clients, SciDx legacy clients)
    CONTROL = 30002  # the broker's admin port (status, shutdown, claim)
    WORKER = 5560  # where workers connect to the broker
    SPAWNER = 8765  # the spawner's HTTP API


def tcp_url(host: str, port: int) -> str:
    """``tcp://host:port`` with IPv6 hosts in brackets."""
    return f"tcp://{_bracket(host)}:{port}"


def http_url(host: str, port: int) -> str:
    return f"http://{_bracket(host)}:{port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


DEFAULT_SPAWNER_URL = http_url(DEFAULT_HOST, Port.SPAWNER)


# --------------------------------------------------------------------------- environment
class Env:
    """Environment variable names that are an interface between processes.

    Server settings are read by pydantic-settings from ``REXEC_<FIELD>`` (see
    ``broker/config.py`` and ``spawner/config.py``); the names below are the ones a process
    sets for another one or a user sets for the client.
    """

    PREFIX = "REXEC_"
    # Set by the spawner for the worker it starts.
    BROKER_WORKER_URL = "REXEC_BROKER_WORKER_URL"
    WORKER_USER = "REXEC_WORKER_USER"
    WORKER_NONCE = "REXEC_WORKER_NONCE"
    WORKER_SECRET = "REXEC_WORKER_SECRET"  # noqa: S105 - a variable name (Kubernetes pods)
    # Local backend: the number of an inherited pipe holding the secret (no secret in environ).
    WORKER_SECRET_FD = "REXEC_WORKER_SECRET_FD"  # noqa: S105 - a variable name
    WORKER_POOL = "REXEC_WORKER_POOL"
    # The worker's own folder (local backend): the folder itself, or for a warm-pool worker
    # the root under which it takes <root>/<user> when claimed (worker_image/files.py).
    WORK_DIR = "REXEC_WORK_DIR"
    WORK_ROOT = "REXEC_WORK_ROOT"
    WORKER_ALIVE_FILE = "REXEC_WORKER_ALIVE_FILE"
    LOG_LEVEL = "REXEC_LOG_LEVEL"
    # Set by the worker's supervisor for each executor it starts (worker_image/executors.py).
    EXECUTOR_LINK_FD = "REXEC_EXECUTOR_LINK_FD"  # requests in, events out (framing.py)
    EXECUTOR_INSPECT = "REXEC_EXECUTOR_INSPECT"
    EXECUTOR_LOG_FD = "REXEC_EXECUTOR_LOG_FD"
    EXECUTOR_INTERRUPT_FD = "REXEC_EXECUTOR_INTERRUPT_FD"
    EXECUTOR_PHASE_FD = "REXEC_EXECUTOR_PHASE_FD"  # worker_image.phase
    # Read by the client side (kernel, Jupyter server extension).
    CONNECTION_FILE = "REXEC_CONNECTION_FILE"
    CLIENT_LOG = "REXEC_CLIENT_LOG"
    KEEPALIVE_S = "REXEC_KEEPALIVE_S"  # how often an idle kernel tells its executor it lives
    TOKEN = "REXEC_TOKEN"  # noqa: S105 - a variable name
    SPAWNER_URL = "REXEC_SPAWNER_URL"
    STATE_DIR = "REXEC_STATE_DIR"
    # Broker and spawner: a 0700 directory of 0600 files, one per secret setting
    # (``rexec_worker_key``, ``rexec_admin_secret``...), read by pydantic-settings.
    SECRETS_DIR = "REXEC_SECRETS_DIR"  # noqa: S105 - a variable name


def folder_name(user: str) -> str:
    """A file-name-safe form of a user id (worker logs, worker folders); distinct ids stay
    distinct."""
    import hashlib

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", user)[:64]
    if safe != user or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(user.encode()).hexdigest()[:8]}"
    return safe


#: What the spawner puts in a worker's environment (and the Kubernetes pod spec).
WORKER_ENV = (
    Env.BROKER_WORKER_URL,
    Env.WORKER_USER,
    Env.WORKER_NONCE,
    Env.WORKER_SECRET,
    Env.WORKER_SECRET_FD,
    Env.WORKER_POOL,
)


# --------------------------------------------------------------------------- exit codes
class ExitCode(enum.IntEnum):
    """How a worker process ends; its supervisor acts on it (BSD sysexits where one fits)."""

    OK = 0  # asked to stop (SIGTERM, superseded): do not restart
    SOFTWARE = 70  # the worker itself broke (EX_SOFTWARE): restart
    RESTART = 75  # an interrupted cell would not stop (EX_TEMPFAIL): restart at once
    CONFIG = 78  # the broker rejected the registration (EX_CONFIG): a restart cannot help


# --------------------------------------------------------------------------- states
class WorkerState(str, enum.Enum):
    """Where a user's worker stands, as the spawner reports it.

    ``stopped`` -> ``installing`` (only when requirements need pip) -> ``starting`` ->
    ``ready``; a crash goes back to ``starting`` (supervised restart); ``failed`` is final
    until the next spawn.
    """

    STOPPED = "stopped"
    STARTING = "starting"
    INSTALLING = "installing"
    READY = "ready"
    FAILED = "failed"


class ShownState(str, enum.Enum):
    """What the sidebar, the status bar and ``%rexec_status`` show: the spawner's state,
    refined.  ``busy`` is ``ready`` while a cell runs, ``culled`` is ``stopped`` after idle
    culling, ``pending`` is the browser's own between a click and the spawner's answer."""

    STOPPED = "stopped"
    CULLED = "culled"
    PENDING = "pending"
    STARTING = "starting"
    INSTALLING = "installing"
    READY = "ready"
    BUSY = "busy"
    FAILED = "failed"


# The spawner's ``ready`` worker that the broker does not list (``WorkerStatus.responding``
# False): the process runs, but it was dropped as silent or has not registered again yet.
NOT_RESPONDING_MESSAGE = (
    "The worker's process runs but does not answer the broker (stopped, starved of CPU, or "
    "reconnecting after a broker restart); its variables are kept while it runs. Stop it to "
    "start a fresh one."
)


# ... while the broker started less than ``protocol.WORKER_REREGISTER_S`` ago and has not had
# the worker registered yet: it is registering again, which is no reason to stop it (a fresh
# one would lose every notebook's variables; the sidebar said "Stop it" for a second, tester
# BU 2 of 3).
REREGISTERING_MESSAGE = (
    "The rexec broker restarted {uptime:.0f} s ago; the worker is registering with it again "
    "(its variables are kept)."
)


def shown_state(state: str | None, *, busy: bool = False, culled: bool = False) -> ShownState:
    """The state to show for a spawner ``state`` (None: no worker)."""
    if state == WorkerState.READY:
        return ShownState.BUSY if busy else ShownState.READY
    if state in (WorkerState.STARTING, WorkerState.INSTALLING, WorkerState.FAILED):
        return ShownState(state)
    return ShownState.CULLED if culled else ShownState.STOPPED


# --------------------------------------------------------------------------- limits
_SIZE = re.compile(r"\s*([\d.]+)\s*([KMGT]?i?B?)?\s*", re.IGNORECASE)
_SCALE = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """``256MB``, ``1.5GB``, ``1024`` -> bytes (binary units: 1 MB = 2**20 bytes).

    Raises ValueError, naming the text, for anything else.
    """
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"Cannot read the size {text!r}; write e.g. 256MB or 2GB.")
    try:
        number = float(m.group(1))
    except ValueError:
        raise ValueError(f"Cannot read the size {text!r}; write e.g. 256MB or 2GB.") from None
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(number * _SCALE[unit])


def human_bytes(n: float) -> str:
    """Bytes as a user reads them, in the units ``parse_size`` reads: ``512 B``, ``78.2 KB``,
    ``1.5 GB`` (binary units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


#: Values larger than this stay on the worker (``--pull-limit``, ``c.RexecMagics.pull_limit``).
DEFAULT_PULL_LIMIT = "256MB"
DEFAULT_PULL_LIMIT_BYTES = parse_size(DEFAULT_PULL_LIMIT)


# --------------------------------------------------------------------------- Jupyter
#: The comm target a kernel with rexec loaded listens on for its notebook's new path after a
#: rename (``jupyter_ext.renames`` opens it, ``rexec_magic.renames`` takes it): the path is
#: what Jupyter would give a kernel started now as ``JPY_SESSION_NAME``.
NOTEBOOK_COMM_TARGET = "rexec.notebook"


# --------------------------------------------------------------------------- TypeScript copy
def typescript() -> str:
    """The TypeScript copy the JupyterLab extension imports (``src/contract.ts``)."""

    def q(text: str) -> str:  # the extension's prettier style: single quotes
        return "'" + json.dumps(text)[1:-1].replace("'", "\\'") + "'"

    states = " | ".join(q(s.value) for s in ShownState)
    lines = [
        "// Generated by `python -m rexec_magic.contract` from rexec_magic/contract.py.",
        "// Do not edit: change contract.py and regenerate (a unit test checks this copy).",
        "",
        f"export const VERSION = {q(VERSION)};",
        "",
        f"export type ShownState = {states};",
        "",
        "export const SHOWN_STATES: readonly ShownState[] = [",
        *(f"  {q(s.value)}," for s in ShownState),
        "];",
        "",
        "/** The spawner's states (WorkerStatus.state). */",
        "export const WorkerState = {",
        *(f"  {s.name}: {q(s.value)}," for s in WorkerState),
        "} as const;",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(typescript())
