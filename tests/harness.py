"""Helpers several test modules share: a real broker in a thread, bounded waits, /proc reads."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from broker.broker import Broker
from broker.config import BrokerSettings
from rexec_magic import protocol as P

# Ceilings for waits on a condition.  A wait returns as soon as its condition holds, so a
# ceiling costs nothing on a quiet machine; it is there to turn a real hang into a failure with
# a message before pytest-timeout's per-test limit.  Each is a generous multiple of the
# protocol's own liveness times, never a guess of how fast this machine is.
WAIT_S = 60 * P.WORKER_HEARTBEAT_S  # sixty heartbeats: a process to start, a state to settle
# An interrupted cell answers at the latest when the worker gives up on it (INTERRUPT_GRACE_S,
# then it restarts) or when the broker gives up on a silent busy worker.
INTERRUPT_ANSWER_S = P.INTERRUPT_GRACE_S + P.BUSY_WORKER_DEAD_AFTER_S


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


def wait_for(
    predicate: Callable[[], Any], what: str = "condition", timeout_s: float = WAIT_S
) -> Any:
    """Poll until ``predicate()`` is truthy and return it; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class WhenFlag:
    """Do ``action`` once, as soon as the file ``flag`` exists; never after :meth:`cancel`.

    Remote test code creates ``flag`` (workers run on this machine, so they share the file
    system) at the moment it has really started; acting on the flag rather than after a fixed
    delay means a slow start can neither make the action come too early nor too late.  Use as
    a context manager so that a failed test never leaves a pending action for the next one.

    ``main_in``: also wait until the main thread runs that function (a frame of its code is
    on the main thread's stack), for an action aimed at a wait: a call submitted before the
    ``with`` can create its flag before the main thread reaches the wait (under load, before
    ``__enter__`` returned: the Ctrl-C landed outside the test's ``pytest.raises``).
    """

    def __init__(
        self, flag: Path, action: Callable[[], Any], main_in: Callable[..., Any] | None = None
    ) -> None:
        self.flag = Path(flag)
        self.action = action
        self._main_code = main_in.__code__ if main_in is not None else None
        self.done = threading.Event()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="when-flag", daemon=True)

    def _main_runs_it(self) -> bool:
        if self._main_code is None:
            return True
        frame = sys._current_frames().get(threading.main_thread().ident or 0)
        while frame is not None:
            if frame.f_code is self._main_code:
                return True
            frame = frame.f_back
        return False

    def _watch(self) -> None:
        while not self._cancelled.wait(0.02):
            if self.flag.exists() and self._main_runs_it():
                self.action()
                self.done.set()
                return

    def cancel(self) -> None:
        self._cancelled.set()
        self._thread.join()

    def __enter__(self) -> WhenFlag:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def ctrl_c_when(flag: Path, main_in: Callable[..., Any] | None = None) -> WhenFlag:
    """Press Ctrl-C (SIGINT to the main thread, as a kernel interrupt does) once ``flag`` exists
    (and the main thread runs ``main_in``: ``WhenFlag``)."""
    main = threading.main_thread().ident
    assert main is not None
    return WhenFlag(flag, lambda: signal.pthread_kill(main, signal.SIGINT), main_in)


class CtrlCInDel:
    """An object whose ``__del__`` presses Ctrl-C (a real SIGINT, handled at once): the
    KeyboardInterrupt is raised where Python cannot pass it on and drops it ("Exception
    ignored in"), as it does in pyzmq's ``Frame.__dealloc__`` when a Ctrl-C lands there."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def ctrl_c_right_after(
    monkeypatch: Any, owner: Any, name: str, when: Callable[..., bool]
) -> threading.Event:
    """Press Ctrl-C at an exact point: right after the first call of ``owner.name`` in the
    main thread for which ``when(self, args, result)`` holds, once the returned event is set.

    A real SIGINT, handled at once (``signal.raise_signal``), so the KeyboardInterrupt lands
    where a user's could, between two steps that no timing could hit on purpose.  The event
    is cleared when the Ctrl-C was pressed.
    """
    armed = threading.Event()
    real = getattr(owner, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(self, *args, **kwargs)
        main = threading.current_thread() is threading.main_thread()
        if main and armed.is_set() and when(self, args, result):
            armed.clear()
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(owner, name, wrapper)
    return armed


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (field 3 on: state, ppid, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def pid_started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, ``/proc/PID/stat`` field 22): with the
    pid, it names one process, where a pid alone may be another's later (pids are reused,
    32,768 of them here, threads included)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True while ``pid`` runs (a zombie counts as gone); with ``started``
    (``pid_started``), only while it is still that process."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def process_report(pid: int) -> str:
    """What a process left running is doing, for a failing test's message: its command
    line, state, and each thread's name, state and kernel wait channel."""
    base = Path(f"/proc/{pid}")
    try:
        cmd = base.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        threads = []
        for task in sorted(base.joinpath("task").iterdir()):
            name = task.joinpath("comm").read_text().strip()
            state = task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
            wchan = task.joinpath("wchan").read_text().strip()
            threads.append(f"{task.name} {name} {state} {wchan}")
    except OSError as exc:
        return f"{pid}: {exc}"
    return f"{pid} ({cmd.strip()}): " + "; ".join(threads)


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
