"""Output the worker sends between requests, shown as it comes, as a local thread's is.

What a notebook's threads, timers and child processes write on the worker after its
request ended reaches the kernel's keepalive thread (``session._keep_alive``, which reads
its own connection between beats; the worker's half is ``worker_image/late_listeners.py``).
It is shown there and then, through the kernel's own streams and display publisher, so it
goes where ipykernel puts a thread's output: under the parent of the cell running now, or
of the last one.  In the cell whose remote request the worker ran last (its output is still
live), it reads as that cell's own; anywhere else (a local cell ran since, another cell
runs) it comes under rexec's "output produced after the previous remote cell or call
ended" line, once per cell.  What the thread could not take (none ran yet, the kernel busy
in C code) comes at the top of the next remote cell, as before.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from rexec_magic import protocol as P


def current_parent() -> str | None:
    """The msg_id of the cell output written now goes to (ipykernel's stream parent: the
    running cell, else the last one; for a thread it is the shell's latest), or None
    outside a kernel."""
    header = getattr(sys.stdout, "parent_header", None)
    return header.get("msg_id") if isinstance(header, dict) else None


class LateOutput:
    """Callable the keepalive thread gives each late event it reads; counts them (``read``:
    its credit, told to the worker with each keepalive)."""

    def __init__(self, last_parent: Callable[[], str | None]) -> None:
        self.read = 0
        self._last_parent = last_parent  # the cell whose remote request ran last
        self._parent: Any = object()  # (none yet)
        self._renderer: Any = None
        self._lock = threading.Lock()

    def restart(self) -> None:
        """A new connection: the worker counts its events from 0 again."""
        self.read = 0

    def __call__(self, msg: P.Message) -> None:
        from rexec_magic.render import EventRenderer  # (IPython's display: only when shown)

        self.read += 1
        with self._lock:
            parent = current_parent()
            if self._renderer is None or parent != self._parent:
                self._parent = parent
                self._renderer = EventRenderer()
                # In the cell that started it while that cell's output is live: its own.
                own = parent is not None and parent == self._last_parent()
                self._renderer.late_header = not own
            self._renderer(msg)


class Wakeup:
    """An event a thread can wait on together with a socket (``threading.Event`` cannot be
    polled): a pipe with a byte in it while set.  ``set`` after ``close`` does nothing (the
    descriptor numbers may be another file's by then)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def fileno(self) -> int:
        return self._r

    def set(self) -> None:
        with self._lock:
            if self._w >= 0:
                try:
                    os.write(self._w, b"!")
                except BlockingIOError:  # (set many times already)
                    pass

    def clear(self) -> bool:
        """Empty it; whether it was set."""
        was = False
        try:
            while os.read(self._r, 512):
                was = True
        except BlockingIOError:
            pass
        return was

    def close(self) -> None:
        with self._lock:
            if self._w >= 0:
                os.close(self._r)
                os.close(self._w)
                self._r = self._w = -1


def wait_for(wakeup: Wakeup, sock: Any, timeout_s: float) -> None:
    """Until ``wakeup`` is set, ``sock`` (a ZeroMQ socket, or None) is readable, or
    ``timeout_s`` passed."""
    items: list[tuple[Any, int]] = [(wakeup.fileno(), zmq.POLLIN)]
    if sock is not None:
        items.append((sock, zmq.POLLIN))
    end = time.monotonic() + timeout_s
    try:
        zmq.zmq_poll(items, max(0, int((end - time.monotonic()) * 1000)))
    except zmq.ZMQError:  # (a socket closed meanwhile: the caller looks again)
        pass
