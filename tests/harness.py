"""Helpers several test modules share: a real broker in a thread, bounded waits, /proc reads."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from broker.broker import Broker
from broker.config import BrokerSettings


@contextmanager
def broker_in_thread(worker_key: str, admin_secret: str, **settings: Any) -> Iterator[Broker]:
    """The real broker, routing in a thread, on random loopback ports."""
    b = Broker(
        BrokerSettings(
            host="127.0.0.1",
            broker_port=0,
            control_port=0,
            worker_port=0,
            worker_key=worker_key,
            admin_secret=admin_secret,
            tokens_file=settings.pop("tokens_file", os.devnull),
            **settings,
        )
    )
    thread = threading.Thread(target=b.run, name="test-broker", daemon=True)
    thread.start()
    try:
        yield b
    finally:
        b.stop()
        thread.join(10)


def wait_for(predicate: Callable[[], Any], what: str = "condition", timeout_s: float = 20.0) -> Any:
    """Poll until ``predicate()`` is truthy and return it; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
