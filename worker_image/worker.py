"""Entry point of the rexec worker: ``python -m worker_image.worker``.

The spawner starts one worker per user with the broker's worker URL, the user id and a
registration nonce + secret in the environment (a warm-pool worker: ``REXEC_WORKER_POOL=1``,
its pool id as the user; it learns its real user from the broker when claimed).  This process
is the supervisor (``worker_image.supervisor``); it starts the executors that run cells.

Exit codes tell the spawner what happened: 0 asked to stop (SIGTERM, superseded), 78 the
broker rejected the registration (config error), 70 the worker itself failed.  An executor
that must restart (an ignored interrupt, a crash) no longer ends the worker.
"""

from __future__ import annotations

import logging
import os
import sys

from rexec_magic import logs
from rexec_magic.contract import Env
from worker_image.link import EXIT_CONFIG, Registration
from worker_image.supervisor import Supervisor

log = logging.getLogger("worker_image")


class ConfigError(Exception):
    """A missing or unusable setting; the message names it."""


def registration_from_env(env: dict[str, str] | None = None) -> Registration:
    env = dict(os.environ if env is None else env)
    missing = [
        name
        for name in (Env.BROKER_WORKER_URL, Env.WORKER_USER, Env.WORKER_NONCE, Env.WORKER_SECRET)
        if not env.get(name)
    ]
    if missing:
        raise ConfigError(f"missing environment variable(s): {', '.join(missing)}")
    return Registration(
        user=env[Env.WORKER_USER],
        nonce=env[Env.WORKER_NONCE],
        secret=env[Env.WORKER_SECRET],
        broker_url=env[Env.BROKER_WORKER_URL],
        pool=env.get(Env.WORKER_POOL, "") in ("1", "true", "yes"),
    )


def setup_logging(level_name: str | None) -> None:
    """Log to the real stderr, on our own logger, so a cell's logging.basicConfig() works."""
    logs.configure(log.name, stream=sys.__stderr__, level=level_name, propagate=False)


def main(argv: list[str] | None = None) -> int:
    """run a worker (started by the spawner; settings from its environment)"""
    setup_logging(os.environ.get(Env.LOG_LEVEL))
    try:
        registration = registration_from_env()
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    log.info("worker starting (pid %d)", os.getpid())
    return Supervisor(registration).run()


if __name__ == "__main__":
    sys.exit(main())
