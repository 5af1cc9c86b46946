"""Errors a notebook user reads.

Two kinds, as in sparkmagic: *expected* errors (``RexecError`` and subclasses: bad token, no
worker, unserializable value, remote exception, timeout) render as one plain sentence with no
rexec traceback; *internal* errors (``InternalError``) say so and point at the log.  IPython
calls ``_render_traceback_`` to draw an exception, which is how the local machinery stays out
of sight.  An interrupted cell raises a KeyboardInterrupt subclass so Run All stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

RED = "\x1b[0;31m"
RESET = "\x1b[0m"


def _line(name: str, message: str) -> list[str]:
    return [f"{RED}{name}{RESET}: {message}"]


class RexecError(Exception):
    """An expected failure; ``str(exc)`` is one sentence meant for the user."""

    def _render_traceback_(self) -> list[str]:
        return _line(type(self).__name__, str(self))


class NotLoggedIn(RexecError):
    pass


class AuthDenied(RexecError):
    pass


class Forbidden(AuthDenied):
    """The token is valid but its user may not use rexec (not in an allowed group)."""


class SpawnerUnavailable(RexecError):
    pass


class SpawnFailed(RexecError):
    """The spawner refused or could not start the worker; ``http_status`` is its answer's."""

    http_status: int | None = None


class NoWorker(RexecError):
    pass


class WorkerLost(RexecError):
    """The worker went (or went silent) during a request.

    ``while_running``: "cell" or "call" where its process stopped while that request ran and
    the sentence does not say why (the broker saw its connection close): the session asks
    the spawner, which saw the process end, and puts its words in (``stopped_while_running``).
    ``registered_at``: when that worker registered with the broker (epoch s, the broker's
    clock): an exit the spawner saw before it was an earlier process's, not this one's."""

    def __init__(
        self, message: str, while_running: str = "", registered_at: float | None = None
    ) -> None:
        super().__init__(message)
        self.while_running = while_running
        self.registered_at = registered_at


def stopped_while_running(what: str, cause: str = "") -> str:
    """The sentence for a ``what`` ("cell", "call") whose worker process stopped while it
    ran, with how it ended where that is known (``cause``: the spawner's words, "killed by
    signal 9", "exit code 3", "killed: out of memory").  What the request wrote just
    before is said to be possibly missing: it was on its way through the worker process,
    which ended before it could pass it on (a tester: a flushed ``print`` right before a
    SIGKILL of the worker was lost 2 of 3 times under a sentence that did not say so)."""
    why = f" ({cause})" if cause else ""
    return (
        f"The remote worker stopped while running the {what}{why}; what the {what} wrote just "
        "before may be missing, and the remote namespace was lost."
    )


class ExecutorDied(WorkerLost):
    """This notebook's executor died during the request (exit code, signal, out of memory):
    its namespace is lost; the worker and other notebooks' namespaces go on.  ``ended``:
    how it ended in a few words ("exit code 7", ``protocol.Done.ended``; "" from a worker
    that does not say); ``returncode``: its exit status as ``subprocess`` gives it (7, -9
    for SIGKILL; ``protocol.Done.returncode``), or None."""

    def __init__(self, message: str, ended: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.ended = ended
        self.returncode = returncode


class BrokerUnreachable(RexecError):
    """``started``: the request had reached the worker and started when contact was lost
    (its values are there; what it made of them did not come back)."""

    def __init__(self, message: str, started: bool = False) -> None:
        super().__init__(message)
        self.started = started


class UnserializableVariable(RexecError):
    pass


class DeserializationFailed(RexecError):
    pass


class CellTimeout(RexecError):
    """The request ran past its ``--timeout`` and was interrupted."""

    def __init__(self, message: str, namespace_lost: bool = False) -> None:
        super().__init__(message)
        # A cell's CellOutcome: what it bound before the timeout's interrupt stopped it.
        self.outcome: object | None = None
        # It did not stop, so its executor was restarted (as ``RemoteInterrupted``'s).
        self.namespace_lost = namespace_lost


class CallTimeout(CellTimeout):
    """A ``remote_func`` call ran past its ``timeout`` and was interrupted (a
    ``CellTimeout``, so one ``except`` catches both; a script's traceback named a cell)."""


class RemoteCellError(RexecError):
    """The cell raised on the worker.  Shows the remote traceback, not ours."""

    def __init__(
        self,
        ename: str,
        evalue: str,
        traceback: list[str],
        exception: BaseException | None = None,
    ) -> None:
        super().__init__(f"{ename}: {evalue}")
        self.ename = ename
        self.evalue = evalue
        self.remote_traceback = traceback
        self.exception = exception  # the remote exception itself, when it loads here
        self.outcome: object | None = None  # a cell's CellOutcome (what it bound before raising)

    def _render_traceback_(self) -> list[str]:
        return list(self.remote_traceback) or _line(self.ename, self.evalue)


class RemoteInterrupted(KeyboardInterrupt):
    """The remote cell was interrupted (a KeyboardInterrupt, so following cells do not run).

    ``namespace_lost``: it did not stop, so its executor was restarted (the namespace is new).
    ``traceback``: the remote traceback to show instead of the sentence (where the code was
    when it stopped, and the words it raised it with, ``except KeyboardInterrupt: ...; raise
    KeyboardInterrupt("checkpoint saved")``), as a local cell shows it.
    """

    def __init__(
        self,
        message: str = "The remote cell was interrupted.",
        namespace_lost: bool = False,
        traceback: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.namespace_lost = namespace_lost
        self.remote_traceback = list(traceback or ())
        # A cell's CellOutcome: what it bound before the interrupt stopped it (or before the
        # interrupt came, too late to stop it), which comes back as from a local cell.
        self.outcome: object | None = None
        # The user stopped waiting for it (a second Ctrl-C): it may run on, with the values
        # it was sent, and end unseen.
        self.abandoned = False

    def __str__(self) -> str:
        return self.message

    def _render_traceback_(self) -> list[str]:
        return self.remote_traceback or _line("KeyboardInterrupt", self.message)


@contextmanager
def interrupt_says(message: str) -> Iterator[None]:
    """A Ctrl-C (a bare KeyboardInterrupt) inside becomes ``RemoteInterrupted(message)``: one
    sentence saying what it stopped, not a traceback from deep inside rexec.  A
    RemoteInterrupted passes as it is (it says its own)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if isinstance(exc, RemoteInterrupted):
            raise
        raise RemoteInterrupted(message) from None


class InternalError(Exception):
    """A bug in rexec itself: the user is told so and where the details are."""

    def __init__(self, what: str, log_path: str) -> None:
        super().__init__(f"rexec internal error ({what}); details are in {log_path}")

    def _render_traceback_(self) -> list[str]:
        return _line("InternalError", str(self) + " Please report it.")
