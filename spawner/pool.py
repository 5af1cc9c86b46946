"""The warm pool: generic workers started ahead of time, so a spawn takes ~0.1 s instead of
a process/pod start.

A pool worker is started by the backend like any worker, but with ``spec.pool`` set: it
registers with the broker under a pool id (kept apart from users' workers, so no cell can
reach it) with a secret that is valid for that pool id only.  ``claim`` picks a registered
one and asks the broker (control port, admin secret) to hand it the user's id, a fresh nonce
and the per-user secret; the worker then registers as the user's worker and the service waits
for that registration as for any spawn.  A replacement is started at once.

Only spawns that need nothing but the default image (no requirements, no options) may claim;
the backend decides (``Backend.pool_eligible``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from broker.auth import worker_secret
from broker.control import BrokerControlError, claim_pool_worker
from rexec_magic.protocol import pool_member
from spawner.backends.base import Backend, WorkerHandle, WorkerSpec
from spawner.broker_watch import BrokerWatch
from spawner.config import SpawnerSettings
from spawner.errors import SpawnerError
from spawner.requirements import RequirementSet

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 5.0  # a pool worker that fails to start is retried after this long
ADOPT_WAIT_S = 2.0  # a claim waits this long for adopted pool workers to be confirmed
LEADER_RECHECK_S = 1.0  # a spawner that does not lead looks again this often (no API call)


class WarmPool:
    def __init__(self, settings: SpawnerSettings, backend: Backend, watch: BrokerWatch) -> None:
        self.settings = settings
        self.backend = backend
        self.watch = watch
        self.size = max(0, settings.warm_pool_size)
        self.ready: dict[str, WorkerHandle] = {}  # registered with the broker, claimable
        self._starting: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._stop_on_cancel = True  # a pool worker still starting is stopped when cancelled
        self._adopting: set[asyncio.Task] = set()  # adopted workers not yet seen registered

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self.size > 0 and self._task is None:
            self._task = asyncio.create_task(self._keep_filled(), name="warm-pool")

    async def close(self, stop_workers: bool = True) -> None:
        """Stop filling; stop the waiting workers too unless the next spawner adopts them."""
        self._closing = True
        self._stop_on_cancel = stop_workers
        tasks = [t for t in (self._task, *self._starting) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        ready, self.ready = list(self.ready.values()), {}
        if stop_workers:
            await asyncio.gather(*(self.backend.stop(h) for h in ready), return_exceptions=True)

    def adopt(self, pool_id: str, nonce: str, handle: WorkerHandle) -> None:
        """A waiting pool worker an earlier spawner started: back into the pool once the
        broker has it (it may be re-registering after a broker restart too)."""
        task = asyncio.create_task(self._settle(pool_id, nonce, handle), name="pool-adopt")
        self._starting.add(task)
        self._adopting.add(task)
        task.add_done_callback(self._starting.discard)
        task.add_done_callback(self._adopting.discard)
        task.add_done_callback(lambda _: self._wake.set())

    def resize(self, size: int) -> None:
        """Keep ``size`` workers from now on (ready ones beyond it stay until claimed)."""
        self.size = max(0, size)
        if self.size > 0:
            self.start()
        self._wake.set()

    # ----------------------------------------------------------------- claim
    async def claim(self, spec: WorkerSpec) -> WorkerHandle | None:
        """Hand a ready pool worker to ``spec.user``; None when none is ready (start one).

        Only the spawner that leads (the Lease) claims: two replicas holding the same pool
        workers would claim one twice, and the loser would stop what the winner gave a user.
        """
        if not self.backend.leads():
            return None
        if not self.ready and self._adopting:  # just after a restart: they are running
            await asyncio.wait(set(self._adopting), timeout=ADOPT_WAIT_S)
        while self.ready:
            pool_id, handle = self.ready.popitem()
            self._wake.set()  # start a replacement now
            if not handle.running:
                continue
            try:
                await asyncio.to_thread(
                    claim_pool_worker,
                    self.settings.broker_control_url,
                    self.settings.admin_secret.get_secret_value(),
                    pool_id,
                    spec.user,
                    spec.nonce,
                    spec.secret,
                )
            except BrokerControlError as exc:  # the broker lost it (restart?): drop it
                log.warning("warm-pool worker %s could not be claimed: %s", pool_id, exc)
                if await self.backend.still_claimable(handle):
                    await self.backend.stop(handle)
                # else another spawner claimed it for a user: leave it be
                continue
            try:
                await self.backend.adopt(handle, spec)
            except SpawnerError as exc:
                # Not recorded as the user's: handed over, it would pass for a pool worker
                # after a restart. Stopped before any cell ran; the user gets a fresh start.
                log.warning("warm-pool worker %s could not be made %s's (%s); stopping it",
                            pool_id, spec.user, exc.message)  # fmt: skip
                with contextlib.suppress(SpawnerError):
                    await self.backend.stop(handle)
                continue
            log.info("warm-pool worker %s claimed by %s", pool_id, spec.user)
            return handle
        return None

    # ----------------------------------------------------------------- filling
    async def _keep_filled(self) -> None:
        led = True  # (setup's discover() adopted what existed then)
        while not self._closing:
            if not self.backend.leads():  # another spawner fills the pool
                led = False
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), LEADER_RECHECK_S)
                continue
            if not led:  # just took over: the pool the previous leader kept is ours now
                led = True
                for found in await self.backend.unclaimed_pool():
                    self.adopt(found.user, found.nonce, found.handle)
            missing = self.size - len(self.ready) - len(self._starting)
            for _ in range(max(0, missing)):
                task = asyncio.create_task(self._start_one())
                self._starting.add(task)
                task.add_done_callback(self._starting.discard)
                task.add_done_callback(lambda _: self._wake.set())
            self._wake.clear()
            await self._wake.wait()

    async def _start_one(self) -> None:
        pool_id = secrets.token_hex(4)
        nonce = secrets.token_hex(16)
        key = self.settings.worker_key.get_secret_value()
        spec = WorkerSpec(
            user=pool_id,
            username="warm-pool",
            requirements=RequirementSet(),
            options={},
            nonce=nonce,
            secret=worker_secret(key, pool_member(pool_id), nonce),
            pool=True,
        )
        handle: WorkerHandle | None = None
        try:
            handle = await self.backend.start(spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("a warm-pool worker failed to start: %s", exc)
            await asyncio.sleep(RETRY_AFTER_FAILURE_S)
            return
        await self._settle(pool_id, nonce, handle)

    async def _settle(self, pool_id: str, nonce: str, handle: WorkerHandle) -> None:
        """Wait for the pool worker to register; then it is claimable."""
        try:
            waiter = asyncio.ensure_future(
                self.watch.wait_registered(pool_id, nonce, handle.registration, section="pool")
            )
            done, _ = await asyncio.wait(
                {waiter, handle.exited},
                timeout=self.settings.worker_start_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
            if waiter not in done or waiter.cancelled():
                raise RuntimeError(handle.failure or "it did not register with the broker")
        except asyncio.CancelledError:
            if self._stop_on_cancel:
                await asyncio.shield(self.backend.stop(handle))
            raise
        except Exception as exc:
            log.warning("a warm-pool worker failed to start: %s", exc)
            await self.backend.stop(handle)
            await asyncio.sleep(RETRY_AFTER_FAILURE_S)
            return
        self.ready[pool_id] = handle
        handle.exited.add_done_callback(lambda _: self._forget(pool_id, handle))
        log.info("warm-pool worker %s ready (%d/%d)", pool_id, len(self.ready), self.size)

    def _forget(self, pool_id: str, handle: WorkerHandle) -> None:
        """A pool worker that exits while waiting is replaced."""
        if self.ready.get(pool_id) is handle:
            del self.ready[pool_id]
            self._wake.set()
