"""Entry point of the rexec worker: ``python -m worker_image.worker``.

The spawner starts one worker per user with the broker's worker URL, the user id and a
registration nonce in the environment, and the secret either through an inherited pipe
(``REXEC_WORKER_SECRET_FD``, the local backend: no secret in any readable environment) or as
``REXEC_WORKER_SECRET`` (a Kubernetes pod, which holds only its own secret; it is removed from
``os.environ`` once read).  A warm-pool worker: ``REXEC_WORKER_POOL=1``, its pool id as the
user; it learns its real user from the broker when claimed.  This process is the supervisor
(``worker_image.supervisor``): it never runs user code, and it starts the executors that do.
It marks itself non-dumpable, so no executor (user code, the same OS user) can read its
memory, where the secret and the session key are.

Exit codes tell the spawner what happened: 0 asked to stop (SIGTERM, superseded), 78 the
broker rejected the registration (config error), 70 the worker itself failed.  An executor
that must restart (an ignored interrupt, a crash) no longer ends the worker.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import resource
import sys

from rexec_magic import logs
from rexec_magic.contract import Env
from worker_image.files import enter_work_dir
from worker_image.link import EXIT_CONFIG, Registration
from worker_image.supervisor import Supervisor

log = logging.getLogger("worker_image")

_PR_SET_DUMPABLE = 4


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
    if from_os:  # executors (user code) have no business with either
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


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)`` (Linux): no same-user process may ptrace this one or
    read its memory.  Executors are started with exec, which makes them dumpable again."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# The supervisor holds 8 descriptors per executor (its link, the inspect ipc socket and
# libzmq's own, two pipes, a pidfd, the interrupt pipe), and libzmq aborts the whole process
# when an ipc accept finds none free: the soft limit goes up to the hard one (at most this).
MAX_OPEN_FILES = 1 << 16


def raise_open_files_limit() -> int:
    """Raise ``RLIMIT_NOFILE``'s soft limit towards its hard limit; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d: %s", soft, exc)
    return soft


def setup_logging(level_name: str | None) -> None:
    """Log to the real stderr, on our own logger."""
    logs.configure(log.name, stream=sys.__stderr__, level=level_name, propagate=False)


def main(argv: list[str] | None = None) -> int:
    """run a worker (started by the spawner; settings from its environment)"""
    argparse.ArgumentParser(  # (for -h: it takes no flags; it failed on the missing settings)
        prog="rexec worker",
        description="Run a worker: the spawner starts it, with its settings (the broker's "
        "URL, its registration secret's file) in REXEC_* variables of its environment.",
    ).parse_args(argv)
    setup_logging(os.environ.get(Env.LOG_LEVEL))
    make_undumpable()
    raise_open_files_limit()
    # Before any executor starts: they inherit it, so a cell's cwd is the user's folder.
    folder = enter_work_dir()
    try:
        # Not kept in a local of this (long-lived) frame: once a warm-pool worker is claimed,
        # the supervisor drops its pool registration and nothing else may hold it.
        supervisor = Supervisor(registration_from_env())
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CONFIG
    log.info("worker starting (pid %d) in %s", os.getpid(), folder)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
