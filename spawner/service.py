"""The spawner's core: one supervised worker per user, whatever the backend.

Routes (the JSON API here, SciDx-compatible form routes later) call ``WorkerService``; the
backend only starts and stops processes or pods.  Per user the service keeps a
``WorkerRecord`` and one lifecycle task:

    prepare (pip, "installing") -> start ("starting") -> registered with the broker under this
    spawn's nonce ("ready") -> the process exits unexpectedly -> start again, same nonce/secret

More than ``max_restarts`` exits within ``restart_window_s`` -> "failed" with the log tail;
exit code 78 (the broker refused the secret) -> "failed" at once, a restart cannot help;
exit code 0 (told to stop by someone else, or replaced by a newer worker) -> "stopped";
exit code 75 (the worker restarts itself after an ignored interrupt) is restarted at once
and does not count towards a crash loop; a backend that says restarting cannot help
(``handle.failure``: ImagePullBackOff, OOMKilled...) -> "failed" with that sentence.

The spawner may die or be upgraded without costing users anything: workers do not depend on
its process, and on start the service adopts the workers the backend finds
(``Backend.discover``: pods by label, or the local durable record): each gets its record back
(requirements, options, nonce) and is supervised from "is it registered with the broker?"
on, as if this spawner had started it; unclaimed warm-pool workers go back into the pool.

A spawn that needs nothing but the default image claims a warm-pool worker when one is ready
(``spawner.pool``); an idle worker is stopped after ``cull_idle_seconds`` (``spawner.culler``)
and its status says so until the next spawn.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import zmq

from broker.auth import Identity, worker_secret
from broker.control import BrokerControlError, broker_status
from rexec_magic import protocol as P
from rexec_magic.contract import NOT_RESPONDING_MESSAGE, REREGISTERING_MESSAGE
from spawner.backends.base import (
    EXIT_REJECTED,
    EXIT_RESTART,
    EXIT_UNKNOWN,
    Adopted,
    Backend,
    WorkerHandle,
    WorkerSpec,
)
from spawner.broker_watch import BrokerWatch
from spawner.config import SpawnerSettings
from spawner.culler import IdleCuller
from spawner.errors import Conflict, SpawnerError, StartFailed
from spawner.models import (
    ACTIVE_STATES,
    SETTLED_STATES,
    BrokerConfig,
    WorkerState,
    WorkerStatus,
)
from spawner.pool import WarmPool
from spawner.requirements import RequirementSet, parse_requirements

log = logging.getLogger(__name__)


class ShuttingDown(SpawnerError):
    status_code = 503


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _short_python(version: str | None) -> str | None:
    if not version:
        return None
    parts = str(version).split(".")
    return ".".join(parts[:2])


def exit_reason(code: int, runtime_reason: str = "") -> str:
    """Why a worker process ended, as the notebook says it: "killed by signal 9".
    ``runtime_reason``: the container runtime's (Kubernetes' ``terminated.reason``), which
    alone tells an out-of-memory kill: "OOMKilled"."""
    if runtime_reason == "OOMKilled":
        return "killed: out of memory"
    if code == EXIT_UNKNOWN:
        return "exit code unknown"  # an adopted worker: not our child
    if code < 0:
        return f"killed by signal {-code}"
    if code == EXIT_RESTART:
        return "a cell ignored an interrupt"
    if code == 137:  # a container runtime's SIGKILL (the out-of-memory killer, usually)
        return "killed by signal 9"
    return f"exit code {code}"


def describe_exit(code: int) -> str:
    if code == EXIT_UNKNOWN:
        return "an exit code this spawner could not see"
    if code < 0:
        try:
            import signal

            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class WorkerRecord:
    """What the spawner knows about one user's worker."""

    user: str
    username: str
    state: WorkerState = WorkerState.STOPPED
    message: str = "No worker is running."
    requirements: RequirementSet = field(default_factory=RequirementSet)
    options: dict[str, Any] = field(default_factory=dict)
    python: str | None = None
    pid: int | None = None
    started_at: datetime | None = None
    ready_at: datetime | None = None
    restarts: int = 0
    nonce: str | None = None  # of the current spawn: the broker's entry must carry it
    from_pool: bool = False
    adopted: bool = False  # found running when this spawner started
    culled_after_s: float | None = None  # set when the culler stopped it
    # The last unexpected exit of this spawn (the namespace was lost; the next cell says so).
    last_exit_at: datetime | None = None
    last_exit_reason: str | None = None
    spawned_mono: float = 0.0  # when this (re)start began: for the ready message
    exits: deque[float] = field(default_factory=deque)
    handle: WorkerHandle | None = None
    task: asyncio.Task | None = None
    # A backend start or pool claim under way: not cancelled with ``task`` (its pod or
    # process would be left behind, nobody's), but waited for and its worker stopped.
    starting: asyncio.Future | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class WorkerService:
    def __init__(self, settings: SpawnerSettings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.watch = BrokerWatch(
            settings.broker_control_url,
            settings.admin_secret.get_secret_value(),
            settings.ready_poll_s,
        )
        self._records: dict[str, WorkerRecord] = {}
        self._closing = False
        self.pool = WarmPool(settings, backend, self.watch)
        self.culler = IdleCuller(settings, self)

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if not self.settings.worker_key.get_secret_value():
            log.warning("REXEC_WORKER_KEY is empty: worker secrets are guessable")
        if not self.settings.admin_secret.get_secret_value():
            log.warning("REXEC_ADMIN_SECRET is empty: the broker will refuse status requests")
        await self.backend.setup()
        for found in await self.backend.discover():
            try:
                if found.pool:
                    self.pool.adopt(found.user, found.nonce, found.handle)
                else:
                    self._adopt(found)
            except SpawnerError as exc:  # e.g. a Python pin the operator has since removed
                # One worker this spawner cannot supervise must not keep it from serving the
                # others: it runs on as it is, and a spawn for its user says why.
                log.error("could not adopt the worker of %s: %s", found.user, exc.message)
        if self.pool.size and not self.backend.pool_possible():
            log.warning("the warm pool is off: no spawn here could claim a pool worker")
            self.pool.size = 0
        self.pool.start()
        self.culler.start()

    @property
    def stops_workers_on_exit(self) -> bool:
        choice = self.settings.stop_workers_on_exit
        return self.backend.stop_workers_on_exit if choice is None else choice

    async def close(self) -> None:
        """Release the backend; stop every worker first when so configured (``rexec up``),
        else leave them to the next spawner, which adopts them."""
        self._closing = True
        stop = self.stops_workers_on_exit
        await self.culler.close()
        records = list(self._records.values())
        if stop:
            await asyncio.gather(*(self._stop(r) for r in records), return_exceptions=True)
        else:
            tasks = [r.task for r in records if r.task is not None and not r.task.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
        await self.pool.close(stop_workers=stop)
        await self.watch.close()
        await self.backend.cleanup(stop_workers=stop)

    # ----------------------------------------------------------------- queries
    def worker_python(self) -> str:
        return _short_python(self.backend.python_version()) or ""

    def status(self, identity: Identity) -> WorkerStatus:
        rec = self._records.get(identity.sub)
        if rec is None:
            return WorkerStatus(
                user=identity.sub,
                username=identity.username,
                state=WorkerState.STOPPED,
                message="No worker is running.",
                python=self.worker_python(),
            )
        return self._status(rec)

    async def live_status(self, identity: Identity) -> WorkerStatus:
        """The status, with ``busy`` (and ``responding``) asked of the broker when the worker
        is ready."""
        status = self.status(identity)
        if status.state != WorkerState.READY:
            return status
        s = self.settings
        try:
            reply = await asyncio.to_thread(
                broker_status, s.broker_control_url, s.admin_secret.get_secret_value(), 0.5
            )
        except (BrokerControlError, zmq.ZMQError) as exc:
            log.info("busy state unknown: %s", exc)
            return status
        info = (reply.get("workers") or {}).get(identity.sub)
        status.responding = isinstance(info, dict)
        if not status.responding:  # "ready" would promise cells that cannot reach it
            uptime = reply.get("uptime_s")
            unseen = identity.sub not in (reply.get("registered") or ())  # (by this broker)
            if unseen and isinstance(uptime, int | float) and uptime < P.WORKER_REREGISTER_S:
                status.message = REREGISTERING_MESSAGE.format(uptime=uptime)
            else:
                status.message = NOT_RESPONDING_MESSAGE
            return status
        status.busy = bool(info.get("busy"))
        executors = info.get("executors") if isinstance(info, dict) else None
        if isinstance(executors, list):
            status.executors = [row for row in executors if isinstance(row, dict)]
        return status

    async def wait_settled(self, identity: Identity, timeout_s: float) -> WorkerStatus:
        """The status once it is ready/failed/stopped, or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        rec = self._records.get(identity.sub)
        while rec is not None and rec.state not in SETTLED_STATES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(rec.changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self.status(identity)

    def _status(self, rec: WorkerRecord) -> WorkerStatus:
        state, message = rec.state, rec.message
        progress = rec.handle.progress if rec.handle is not None else None
        if state == WorkerState.STARTING and progress is not None:
            state, message = WorkerState(progress[0]), progress[1]
        last_exit_at, last_exit_reason = rec.last_exit_at, rec.last_exit_reason
        ended = rec.handle.last_exit if rec.handle is not None else None
        if ended is not None and (last_exit_at is None or ended[0] > last_exit_at):
            last_exit_at, last_exit_reason = ended[0], exit_reason(ended[1], ended[2])
        return WorkerStatus(
            user=rec.user,
            username=rec.username,
            state=state,
            message=message,
            requirements=list(rec.requirements.lines),
            python=rec.python,
            pid=rec.pid,
            started_at=rec.started_at,
            ready_at=rec.ready_at,
            restarts=rec.restarts,
            from_warm_pool=rec.from_pool,
            idle_culled_after_s=rec.culled_after_s,
            last_exit_at=last_exit_at,
            last_exit_reason=last_exit_reason,
            log_tail=self.backend.log_tail(rec.user),
        )

    def broker_config(self) -> BrokerConfig:
        config = broker_config(self.settings.broker_url)
        config.broker_curve_public_key = self.settings.curve_public_key
        return config

    # ----------------------------------------------------------------- commands
    async def spawn(
        self,
        identity: Identity,
        requirements: list[str],
        options: dict[str, Any] | None = None,
        force: bool = False,
    ) -> WorkerStatus:
        """Start the user's worker; idempotent for the same requirements and options."""
        if self._closing:
            raise ShuttingDown("The spawner is shutting down.")
        reqs = parse_requirements(requirements, self.backend.worker_python_for(requirements))
        options = self.backend.validate_options(dict(options or {}))
        rec = await self._record_or_adopt(identity.sub)
        if rec is None:  # setdefault: a spawn for the same user may have made it meanwhile
            rec = self._records.setdefault(
                identity.sub, WorkerRecord(identity.sub, identity.username)
            )
        async with rec.lock:
            rec.username = identity.username
            if rec.state in ACTIVE_STATES:
                same = rec.requirements.lines == reqs.lines and rec.options == options
                if same and not force:
                    return self._status(rec)
                if not force:
                    raise Conflict(_conflict_sentence(rec, reqs))
                log.info("force spawn for %s: restarting its worker", rec.user)
                await self._stop_locked(rec)
            await self.backend.preflight(identity.sub)
            self._launch(rec, identity, reqs, options)
        return self._status(rec)

    async def stop(self, identity: Identity) -> WorkerStatus:
        rec = await self._record_or_adopt(identity.sub)
        if rec is not None:
            await self._stop(rec)
        return self.status(identity)

    # ----------------------------------------------------------------- internals
    def _set(self, rec: WorkerRecord, state: WorkerState, message: str) -> None:
        if rec.state != state or rec.message != message:
            log.info("worker of %s: %s (%s)", rec.user, state.value, message)
        rec.state = state
        rec.message = message
        changed, rec.changed = rec.changed, asyncio.Event()
        changed.set()

    def _launch(
        self, rec: WorkerRecord, identity: Identity, reqs: RequirementSet, options: dict
    ) -> None:
        nonce = secrets.token_hex(16)
        spec = WorkerSpec(
            user=identity.sub,
            username=identity.username,
            requirements=reqs,
            options=options,
            nonce=nonce,
            secret=worker_secret(self.settings.worker_key.get_secret_value(), identity.sub, nonce),
        )
        rec.requirements, rec.options = reqs, options
        rec.python = _short_python(self.backend.worker_python_for(list(reqs.lines)))
        rec.pid = rec.started_at = rec.ready_at = rec.handle = rec.culled_after_s = None
        rec.last_exit_at = rec.last_exit_reason = None
        rec.nonce, rec.from_pool, rec.adopted = nonce, False, False
        rec.restarts = 0
        rec.exits.clear()
        rec.spawned_mono = time.monotonic()
        self._set(rec, WorkerState.STARTING, "Starting the worker.")
        rec.task = asyncio.create_task(self._run(rec, spec), name=f"worker:{identity.sub}")

    async def _record_or_adopt(self, user: str) -> WorkerRecord | None:
        """The user's record; when it has no live worker, one another spawner started since
        (several spawners on one backend) is adopted first, so this one does not start a
        second worker or miss the one to stop."""
        rec = self._records.get(user)
        if rec is not None and rec.state in ACTIVE_STATES:
            return rec
        found = await self.backend.find(user)
        rec = self._records.get(user)  # another request for this user may have run meanwhile
        if rec is not None and rec.state in ACTIVE_STATES:
            return rec
        if found is not None and not found.pool:
            log.info("adopting the worker of %s that another spawner started", user)
            self._adopt(found)
            return self._records[user]
        return rec

    def _adopt(self, found: Adopted) -> None:
        """Take over a worker an earlier spawner started: same record, same supervision."""
        reqs = parse_requirements(
            found.requirement_lines, self.backend.worker_python_for(found.requirement_lines)
        )
        rec = self._records[found.user] = WorkerRecord(found.user, found.username)
        spec = WorkerSpec(
            user=found.user,
            username=found.username,
            requirements=reqs,
            options=found.options,
            nonce=found.nonce,
            secret=worker_secret(
                self.settings.worker_key.get_secret_value(), found.user, found.nonce
            ),  # fmt: skip
            prepared=dict(found.prepared),
        )
        rec.requirements, rec.options = reqs, found.options
        rec.python = _short_python(self.backend.worker_python_for(list(reqs.lines)))
        rec.nonce, rec.adopted = found.nonce, True
        rec.spawned_mono = time.monotonic()
        if found.started_at:
            rec.started_at = datetime.fromtimestamp(found.started_at, timezone.utc)
        # Held before its task runs: a stop that adopted it (its first step) stops it then,
        # rather than cancelling a task that never took the handle and answering "stopped".
        rec.handle, rec.pid = found.handle, found.handle.pid
        self._set(rec, WorkerState.STARTING, "Taking over the running worker.")
        rec.task = asyncio.create_task(
            self._run(rec, spec, adopted=found.handle), name=f"worker:{found.user}"
        )

    async def _stop(self, rec: WorkerRecord) -> None:
        async with rec.lock:
            await self._stop_locked(rec)

    async def cull(self, user: str, nonce: str, idle_s: float) -> bool:
        """Stop ``user``'s worker for idleness if it is still the spawn with ``nonce``."""
        rec = self._records.get(user)
        if rec is None:
            return False
        async with rec.lock:
            if rec.state != WorkerState.READY or rec.nonce != nonce:
                return False
            log.info("culling the worker of %s: idle for %.0f s", user, idle_s)
            await self._stop_locked(rec)
            limit = self.settings.cull_idle_seconds
            rec.culled_after_s = limit
            self._set(rec, WorkerState.STOPPED, f"Your worker was stopped after {limit:g} s idle.")
        return True

    @property
    def records(self) -> dict[str, WorkerRecord]:
        """user -> record (read only: what this spawner supervises)."""
        return self._records

    async def adopt_unknown(self, users: Iterable[str]) -> None:
        """Supervise the running workers of ``users`` that another spawner started (replicas
        on one backend); users without one are left alone."""
        for user in list(users):
            try:
                await self._record_or_adopt(user)
            except SpawnerError as exc:
                log.warning("could not adopt the worker of %s: %s", user, exc.message)

    def ready_workers(self) -> dict[str, str]:
        """user -> nonce of every ready worker (what the culler looks at)."""
        return {
            r.user: r.nonce
            for r in self._records.values()
            if r.state == WorkerState.READY and r.nonce is not None
        }

    async def _uncancelled(
        self, rec: WorkerRecord, start: Awaitable[WorkerHandle | None]
    ) -> WorkerHandle | None:
        """Await ``start`` (a backend start or a pool claim), which a stop does not cancel:
        a pod created, or a pool worker handed over, while its request was being cancelled
        would run on with nobody holding its handle.  ``_stop_locked`` waits for it instead
        and stops what it gave."""
        rec.starting = asyncio.ensure_future(start)
        try:
            return await asyncio.shield(rec.starting)
        finally:
            if rec.starting is not None and rec.starting.done():
                rec.starting = None

    async def _stop_locked(self, rec: WorkerRecord) -> None:
        task, rec.task = rec.task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        starting, rec.starting = rec.starting, None
        if starting is not None:  # the stop came while a worker was being created
            await asyncio.wait({starting})
            if not starting.cancelled() and starting.exception() is None:
                rec.handle = starting.result() or rec.handle
        if rec.handle is not None:
            await self.backend.stop(rec.handle)
        rec.handle = None
        rec.pid = None
        self._set(rec, WorkerState.STOPPED, "The worker is stopped.")

    async def _run(
        self, rec: WorkerRecord, spec: WorkerSpec, adopted: WorkerHandle | None = None
    ) -> None:
        """Prepare, start and supervise one spawn until it is stopped or fails.

        ``adopted``: a worker that runs already (an earlier spawner's): supervise it from
        its registration on; a restart after it exits is an ordinary one.
        """
        try:
            note: str | None = None
            if adopted is None:
                await self.backend.prepare(
                    spec, lambda message: self._set(rec, WorkerState.INSTALLING, message)
                )
            eligible = adopted is None and self.backend.pool_eligible(spec)
            claimed = await self._uncancelled(rec, self.pool.claim(spec)) if eligible else None
            while True:
                if rec.state != WorkerState.STARTING:
                    self._set(rec, WorkerState.STARTING, "Starting the worker.")
                if adopted is not None:
                    handle, adopted = adopted, None
                elif claimed is not None:
                    handle, claimed, rec.from_pool = claimed, None, True
                else:
                    handle = await self._uncancelled(rec, self.backend.start(spec, note))
                    rec.from_pool = rec.adopted = False
                    rec.started_at = _now()
                rec.handle, rec.pid = handle, handle.pid
                rec.started_at, rec.ready_at = rec.started_at or _now(), None
                code = await self._until_ready(rec, spec, handle)
                if code is None:
                    code = await asyncio.shield(handle.exited)
                if handle.failure:
                    raise StartFailed(handle.failure)
                if not self._may_restart(rec, code):
                    return
                rec.restarts += 1
                rec.spawned_mono = time.monotonic()
                note = f"the worker exited ({describe_exit(code)}); restarting it"
                log.warning("worker of %s exited (%s); restarting", rec.user, describe_exit(code))
                self._set(
                    rec,
                    WorkerState.STARTING,
                    f"Restarting the worker: it exited ({describe_exit(code)}).",
                )
        except asyncio.CancelledError:
            raise
        except SpawnerError as exc:
            await self._abandon(rec)
            self._set(rec, WorkerState.FAILED, exc.message)
        except Exception:
            log.exception("starting the worker of %s failed", rec.user)
            await self._abandon(rec)
            self._set(
                rec,
                WorkerState.FAILED,
                "The worker could not be started because of an internal spawner error; "
                "see the spawner log.",
            )

    async def _abandon(self, rec: WorkerRecord) -> None:
        """A failed spawn leaves no process (or pod, Secret...) behind."""
        if rec.handle is not None:  # even if it exited: a failed pod still exists
            await self.backend.stop(rec.handle)
        rec.pid = None

    def _may_restart(self, rec: WorkerRecord, code: int) -> bool:
        """Decide after an unexpected exit; set ``failed`` and return False to give up."""
        rec.pid = None
        if code == 0:  # the worker was told to stop (SIGTERM) or a newer one replaced it
            self._set(
                rec,
                WorkerState.STOPPED,
                "The worker exited by itself (it was told to stop, or a newer worker of "
                "yours replaced it).",
            )
            return False
        # How it ended, for the notebook whose cell it ended (``exit_after``) and for the
        # crash loop's sentence, whether or not it is restarted (it was kept only for a
        # restart: a crash loop's last death was said as the one before it).
        rec.last_exit_at, rec.last_exit_reason = _now(), exit_reason(code)
        if code == EXIT_REJECTED:
            self._set(
                rec,
                WorkerState.FAILED,
                "The worker gave up with exit code 78: the broker refused its registration "
                "secret (the spawner and the broker must share the same REXEC_WORKER_KEY) "
                "or its settings are incomplete.",
            )
            return False
        now = time.monotonic()
        window = self.settings.restart_window_s
        if code != EXIT_RESTART:
            rec.exits.append(now)
        while rec.exits and rec.exits[0] < now - window:
            rec.exits.popleft()
        if len(rec.exits) > self.settings.max_restarts:
            self._set(
                rec,
                WorkerState.FAILED,
                f"Worker exited {len(rec.exits)} times in {window:g} s (the last time: "
                f"{rec.last_exit_reason}); last lines of its log are below.",
            )
            return False
        return True

    async def _until_ready(
        self, rec: WorkerRecord, spec: WorkerSpec, handle: WorkerHandle
    ) -> int | None:
        """None once the broker has this spawn's worker; its exit code if it exits first."""
        timeout = self.settings.worker_start_timeout_s
        waiter = asyncio.ensure_future(
            self.watch.wait_registered(spec.user, spec.nonce, handle.registration)
        )
        try:
            await asyncio.wait(
                {waiter, handle.exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if handle.exited.done():
            return handle.exited.result()
        if waiter.done() and not waiter.cancelled():
            info = waiter.result()
            rec.python = _short_python(info.get("python")) or rec.python
            rec.ready_at = _now()
            took = time.monotonic() - rec.spawned_mono
            if rec.adopted:
                message = "The worker is ready (it kept running while the spawner restarted)."
            else:
                how = "claimed from the warm pool" if rec.from_pool else "started"
                message = f"The worker is ready ({how} in {took:.1f} s)."
            self._set(rec, WorkerState.READY, message)
            return None
        await self.backend.stop(handle)
        cause = self.watch.last_error
        raise StartFailed(
            f"The worker did not register with the broker within {timeout:g} s"
            + (f" (asking the broker's control port: {cause.rstrip('.')})" if cause else "")
            + "; last lines of its log are below."
        )


def _conflict_sentence(rec: WorkerRecord, reqs: RequirementSet) -> str:
    # ("running with other requirements (no requirements)" read as a contradiction, tester BE)
    have = ", ".join(rec.requirements.lines) or "none"
    if rec.requirements.lines == reqs.lines:
        return (
            "Your worker is running with other options; stop it first, "
            "or spawn with force to restart it with the new ones."
        )
    return (
        f"Your worker is running with other requirements ({have}); stop it first, "
        "or spawn with force to restart it with the new ones."
    )


def broker_config(broker_url: str) -> BrokerConfig:
    """The broker's client address in the model system's field names."""
    parts = urlsplit(broker_url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"REXEC_BROKER_URL {broker_url!r} needs a host and a port")
    return BrokerConfig(
        broker_url=broker_url,
        broker_external_host=parts.hostname,
        broker_external_port=parts.port,
        broker_external_url=broker_url,
    )
