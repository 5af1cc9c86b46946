"""Run the broker as a process (``rexec broker``): logging, signals, then the routing loop."""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import zmq

from broker.broker import IO_THREADS, Broker
from broker.config import BrokerSettings
from broker.guard import make_undumpable
from rexec_magic import logs
from rexec_magic.contract import Env


def serve(settings: BrokerSettings) -> None:
    """Bind, route until SHUTDOWN or SIGTERM/SIGINT, then close every socket."""
    logs.configure(log_file=settings.log_file, rotate=True)
    make_undumpable()  # no same-user process may read our memory (keys, tokens in flight)
    # (its own context: client and worker connections on I/O threads of their own)
    broker = Broker(settings, context=zmq.Context(io_threads=IO_THREADS))

    def stop(signum: int, frame: Any) -> None:
        broker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    broker.run()


def main(argv: list[str] | None = None) -> int:
    """run the broker (settings from REXEC_* variables)"""
    argparse.ArgumentParser(
        prog="rexec broker", description="Run the rexec broker; settings from REXEC_* variables."
    ).parse_args(argv)
    # Secrets come as 0600 files from $REXEC_SECRETS_DIR (written by `rexec up`), not from an
    # environment anyone of our OS user can read.
    serve(BrokerSettings(_secrets_dir=os.environ.get(Env.SECRETS_DIR) or None))
    return 0
