"""The backend contract: how a user's worker is prepared, started, watched and stopped.

A backend knows processes or pods, nothing else.  The per-user state machine (idempotent
spawn, readiness through the broker, supervised restarts, crash-loop detection) lives in
``spawner.service`` and is the same for every backend, so a new backend (Kubernetes, a warm
pool) only implements the few methods below.

Lifecycle, driven by the service:

    setup()                       once, when the spawner starts
    prepare(spec, on_install)     make the requirements available (may pip install)
    start(spec) -> WorkerHandle   launch one worker; handle.exited resolves with its exit code
    stop(handle)                  SIGTERM/delete, escalate, return once it is gone
    cleanup()                     once, at shutdown: stop everything this backend started

On start the service also calls ``discover()``: the workers that outlived an earlier spawner
(the backend's own truth: pods and Secrets by label on Kubernetes, the durable record plus
the live processes locally), which it adopts and supervises as if it had started them.

Optional hooks: ``preflight`` (a cheap API call before a spawn is accepted, so an unusable
cluster answers the HTTP request with a clear error), ``adopt`` (a warm-pool worker now belongs
to a user: relabel it, move its log), ``worker_python_for`` (backends with one image per
Python), ``pool_eligible``.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from rexec_magic.contract import ExitCode
from spawner.config import SpawnerSettings
from spawner.requirements import RequirementSet

# Exit codes the worker uses to say why it left.
EXIT_RESTART = ExitCode.RESTART  # a cell ignored an interrupt: restart, fresh namespace
EXIT_REJECTED = ExitCode.CONFIG  # the broker refused the secret: restarting cannot help
# An adopted worker (not this spawner's child) ended: its exit code cannot be read.
EXIT_UNKNOWN = -1000


@dataclass
class WorkerSpec:
    """Everything a backend needs to start one user's worker."""

    user: str  # identity.sub: the id the broker routes by
    username: str
    requirements: RequirementSet
    options: dict[str, Any]
    nonce: str  # fresh per spawn; kept across supervised restarts
    secret: str = field(repr=False)  # worker_secret(worker_key, user, nonce)
    prepared: dict[str, Any] = field(default_factory=dict)  # what prepare() leaves for start()
    # A warm-pool worker: ``user`` is its pool id and ``secret`` is for pool_member(user).
    pool: bool = False


@dataclass(eq=False)
class WorkerHandle:
    """One started worker.  ``exited`` resolves with the exit code (negative: signal)."""

    user: str
    pid: int | None
    exited: asyncio.Future[int]
    log_path: Path | None = None
    # Fields the broker's entry for this worker must show besides the nonce (e.g. its pid), so
    # that after a restart with the same nonce the old, dead registration is not taken for
    # the new one.  Fields the broker does not report are not compared.
    registration: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # backend-specific
    # What the backend sees while the worker is not ready yet: (state, sentence), state one of
    # "starting" / "installing" (e.g. "pending (unschedulable: ...)", "pulling image").
    progress: tuple[str, str] | None = None
    # Set before ``exited`` resolves when restarting cannot help (ImagePullBackOff, OOMKilled,
    # CrashLoopBackOff...): the spawn fails with this sentence.
    failure: str | None = None
    # How the worker's process last ended where ``exited`` does not tell it all: (when, exit
    # code, the container runtime's reason: "OOMKilled", "Error"; "" where none).  Set when it
    # was restarted in place, without ``exited`` resolving (the kubelet restarts a crashed
    # container inside its pod), and when its pod failed as it ended (OOMKilled).
    last_exit: tuple[datetime, int, str] | None = None

    @property
    def running(self) -> bool:
        return not self.exited.done()


@dataclass
class Adopted:
    """A worker found running when the spawner started: it outlived an earlier spawner."""

    user: str  # the user id, or the pool id of an unclaimed warm-pool worker
    username: str
    requirement_lines: list[str]
    options: dict[str, Any]
    nonce: str
    pool: bool
    handle: WorkerHandle
    prepared: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None  # wall clock


class Backend(abc.ABC):
    """Base class of spawner backends.  Subclasses set ``name`` and implement the methods."""

    name: ClassVar[str] = "base"
    # What a spawner shutdown (SIGTERM) does to workers when REXEC_STOP_WORKERS_ON_EXIT is
    # unset: `rexec up` stops them with the spawner; on Kubernetes a spawner upgrade keeps them.
    stop_workers_on_exit: ClassVar[bool] = True

    def __init__(self, settings: SpawnerSettings) -> None:
        self.settings = settings

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Called once before the first spawn."""

    async def cleanup(self, stop_workers: bool = True) -> None:  # noqa: B027 - optional hook
        """Called once at shutdown: stop every worker this backend started (if asked to)."""

    async def discover(self) -> list[Adopted]:
        """The workers that run already (left by an earlier spawner), for adoption."""
        return []

    async def find(self, user: str) -> Adopted | None:
        """``user``'s running worker that this spawner does not track (another spawner
        started it since), for adoption; None when there is none."""
        return None

    async def unclaimed_pool(self) -> list[Adopted]:
        """Waiting pool workers no handle of ours follows (a spawner that led before this one
        started them), for the pool to take over when this spawner comes to lead."""
        return []

    def pool_possible(self) -> bool:
        """Can a spawn here ever claim a pool worker?  (False: do not keep a pool at all.)"""
        return True

    def leads(self) -> bool:
        """Whether this spawner runs the shared chores (culling, filling the warm pool); with
        several spawners on one backend only one does (Kubernetes: a Lease)."""
        return True

    async def still_claimable(self, handle: WorkerHandle) -> bool:
        """After a failed claim: is ``handle`` still an unclaimed pool worker?  (False: another
        spawner claimed it; forget it without stopping it.)"""
        return True

    @abc.abstractmethod
    def python_version(self) -> str:
        """The Python version workers run ("3.11.7"); ``python==X.Y`` pins are checked on it."""

    def worker_python_for(self, requirement_lines: list[str]) -> str:
        """The Python a spawn with these requirements gets (one image per Python: override)."""
        return self.python_version()

    def pool_eligible(self, spec: WorkerSpec) -> bool:
        """May this spawn take a generic warm-pool worker?  Only when it needs nothing else."""
        return not spec.requirements.lines and not spec.options

    async def preflight(self, user: str) -> None:  # noqa: B027 - optional hook
        """Raise a SpawnerError now if a spawn for ``user`` cannot even be attempted."""

    async def adopt(self, handle: WorkerHandle, spec: WorkerSpec) -> None:  # noqa: B027
        """A claimed warm-pool worker now belongs to ``spec.user``.  Raises SpawnerError when
        that cannot be recorded where a later spawner looks (it would take the worker for a
        pool worker again): the caller stops it and starts one."""

    def validate_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Check user options (raise InvalidRequest with a sentence); return what to use."""
        return options

    @abc.abstractmethod
    async def prepare(self, spec: WorkerSpec, on_install: Callable[[str], None]) -> None:
        """Make ``spec.requirements`` available to the worker.

        Call ``on_install(sentence)`` before slow work (pip) so the status shows "installing".
        Raise ``StartFailed`` with one sentence when it cannot be done.
        """

    @abc.abstractmethod
    async def start(self, spec: WorkerSpec, restart_note: str | None = None) -> WorkerHandle:
        """Launch a worker and return at once (readiness is the service's business).

        ``restart_note`` is set on a supervised restart (a line for the worker log).
        """

    @abc.abstractmethod
    async def stop(self, handle: WorkerHandle) -> None:
        """Stop the worker gracefully, then by force; return once it is gone."""

    def log_tail(self, user: str, lines: int = 20) -> list[str]:
        """The last lines of the user's worker log (empty when there is none)."""
        return []
