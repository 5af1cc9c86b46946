"""Run the broker as a process: logging, signals, then the routing loop."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from broker.broker import Broker
from broker.config import BrokerSettings
from broker.guard import make_undumpable


def setup_logging(log_file: str | None, level: int = logging.INFO) -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


def serve(settings: BrokerSettings) -> None:
    """Bind, route until SHUTDOWN or SIGTERM/SIGINT, then close every socket."""
    setup_logging(settings.log_file)
    make_undumpable()  # no same-user process may read our memory (keys, tokens in flight)
    broker = Broker(settings)

    def stop(signum: int, frame: Any) -> None:
        broker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    broker.run()
