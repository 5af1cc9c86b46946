"""Run the broker as a process (``rexec broker``): logging, signals, then the routing loop."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from broker.broker import Broker
from broker.config import BrokerSettings
from rexec_magic import logs


def serve(settings: BrokerSettings) -> None:
    """Bind, route until SHUTDOWN or SIGTERM/SIGINT, then close every socket."""
    logs.configure(log_file=settings.log_file)
    broker = Broker(settings)

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
    serve(BrokerSettings())
    return 0
