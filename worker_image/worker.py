"""Entry point of the rexec worker: ``python -m worker_image.worker``.

The spawner starts one worker per user with the broker's worker URL, the user id and a
registration nonce in the environment, and the secret either through an inherited pipe
(``REXEC_WORKER_SECRET_FD``, the local backend: no secret in any readable environment) or as
``REXEC_WORKER_SECRET`` (a Kubernetes pod, which holds only its own secret; it is removed from
``os.environ`` once read).  A warm-pool worker: ``REXEC_WORKER_POOL=1``,
its pool id as the user; it learns its real user from the broker when claimed).  The main
thread runs cells (signals and so KeyboardInterrupt only reach it); the I/O thread
(``link.BrokerLink``) owns the socket.

Exit codes tell the supervisor what happened: 0 asked to stop (SIGTERM, superseded), 75 an
interrupted cell would not stop (restart me), 78 the broker rejected the registration (config
error), 70 the worker itself failed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from rexec_magic import logs
from rexec_magic.contract import Env
from rexec_magic.protocol import DoneStatus, Kind
from worker_image.cells import Cell, CellQueue, CellRunner, done_header
from worker_image.files import Transfers, enter_work_dir
from worker_image.introspect import Introspector
from worker_image.link import EXIT_CONFIG, EXIT_OK, EXIT_SOFTWARE, BrokerLink, Registration
from worker_image.outbox import Outbox
from worker_image.shell import make_shell, redirect_stdio

log = logging.getLogger("worker_image")

# The I/O thread must get the GIL quickly while a cell computes: sending one message takes the
# GIL several times (pyzmq releases it around each frame), and each time it waits up to the
# switch interval.  The default 5 ms made a print from a busy cell arrive 5-20 ms late; 0.2 ms
# gives ~1 ms and costs threaded CPU-bound user code a few percent at most.
SWITCH_INTERVAL_S = 0.0002


class ConfigError(Exception):
    """A missing or unusable setting; the message names it."""


def read_secret_fd(value: str) -> str:
    """The secret from the inherited pipe ``value`` names; the pipe is closed after."""
    try:
        fd = int(value)
        with os.fdopen(fd, "rb") as pipe:
            return pipe.read(4096).decode().strip()
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cannot read the worker secret from REXEC_WORKER_SECRET_FD: {exc}")


def registration_from_env(env: dict[str, str] | None = None) -> Registration:
    from_os = env is None
    env = dict(os.environ if env is None else env)
    secret = (
        read_secret_fd(env[Env.WORKER_SECRET_FD])
        if env.get(Env.WORKER_SECRET_FD)
        else env.get(Env.WORKER_SECRET, "")
    )
    if from_os:  # user code in this process has no business with either
        os.environ.pop(Env.WORKER_SECRET, None)
        os.environ.pop(Env.WORKER_SECRET_FD, None)
    missing = [
        name
        for name in (Env.BROKER_WORKER_URL, Env.WORKER_USER, Env.WORKER_NONCE)
        if not env.get(name)
    ]
    if not secret:
        missing.append(f"{Env.WORKER_SECRET_FD} or {Env.WORKER_SECRET}")
    if missing:
        raise ConfigError(f"missing environment variable(s): {', '.join(missing)}")
    return Registration(
        user=env[Env.WORKER_USER],
        nonce=env[Env.WORKER_NONCE],
        secret=secret,
        broker_url=env[Env.BROKER_WORKER_URL],
        pool=env.get(Env.WORKER_POOL, "") in ("1", "true", "yes"),
    )


def setup_logging(level_name: str | None) -> None:
    """Log to the real stderr, on our own logger, so a cell's logging.basicConfig() works."""
    logs.configure(log.name, stream=sys.__stderr__, level=level_name, propagate=False)


class Worker:
    """Wires the outbox, shell, cell queue and I/O thread; runs cells in the main thread."""

    def __init__(self, registration: Registration) -> None:
        self.outbox = Outbox()
        self.shell = make_shell(self.outbox)
        self.queue = CellQueue(threading.main_thread().ident or threading.get_ident())
        self.runner = CellRunner(self.shell, self.outbox, self.queue)
        self.link = BrokerLink(registration, self.outbox, self.queue, self.shell)
        self.link.extra_handlers += [
            Transfers(self.outbox).handle,
            Introspector(self.shell, self.outbox).handle,
        ]
        self.link.on_assigned.append(enter_work_dir)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self.runner.on_sigint)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        redirect_stdio(self.outbox)
        self.link.start()
        while True:
            cell = self.queue.take(timeout=1.0)
            if cell is None:
                if not self.link.alive:  # it ends the process itself; this is a backstop
                    log.error("the I/O thread is gone: exiting")
                    return EXIT_SOFTWARE
                continue
            try:
                self.runner.run(cell)
            except BaseException as exc:  # e.g. a KeyboardInterrupt landing between two steps
                log.exception("cell %s: the worker failed around the cell", cell.id)
                if self.queue.finish(cell) and not cell.finished:
                    self._fail(cell, exc)

    def _fail(self, cell: Cell, exc: BaseException) -> None:
        """Still end the cell with ERROR + DONE, so its client never waits forever."""
        evalue = f"the worker failed around the cell: {type(exc).__name__}: {exc}"
        error = {"ename": type(exc).__name__, "evalue": evalue, "traceback": [evalue]}
        self.outbox.event(cell.target, Kind.ERROR, error)
        self.outbox.event(cell.target, Kind.DONE, done_header(DoneStatus.ERROR))

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.info("SIGTERM: exiting")
        self.link.stop(EXIT_OK)
        self.link.join(5.0)
        os._exit(EXIT_OK)  # only reached when the I/O thread could not end the process


def main(argv: list[str] | None = None) -> int:
    """run a worker (started by the spawner; settings from its environment)"""
    setup_logging(os.environ.get(Env.LOG_LEVEL))
    folder = enter_work_dir()  # before the shell starts: its cwd is the user's folder
    try:
        # Not kept in a local of this (long-lived) frame: once a warm-pool worker is claimed,
        # the link drops its pool registration and nothing else may hold it.
        worker = Worker(registration_from_env())
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    log.info("worker starting (pid %d) in %s", os.getpid(), folder)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
