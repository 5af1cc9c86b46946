"""Requests of one session take the connection in the order they were made (a ticket lock).

``remote_func(...).submit()`` sends its call from a background thread.  With a plain lock, a
call made after ``submit()`` in the caller's own thread could take the connection first and
run on the worker before the call submitted earlier: ``f.submit(); g()`` would see the state
before ``f``.  Here a request takes its ticket when it is made (``submit()`` takes it in the
caller's thread) and holds the connection only when every earlier ticket is done or given up.

Why not a library: the standard library's locks make no promise of order, and none of the
project's dependencies has a FIFO lock; this is the textbook ticket lock on one
``threading.Condition``, plus what rexec needs around it: what holds the connection and since
when (for "waiting for this notebook's previous call (running 12 s)"), and giving a ticket up
(a future cancelled before its turn, an interrupt while waiting).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CANCEL_POLL_S = 0.05  # how soon a cancel from another thread is noticed (nothing notifies)


class Turns:
    """FIFO turns on one resource.  ``take()`` a ticket, ``wait()`` for its turn, ``leave()``.

    ``leave`` is idempotent and may come before the turn (the ticket is then skipped), so a
    ticket that is never used cannot block later ones as long as it is left.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0  # the next ticket to hand out
        self._turn = 0  # the ticket whose turn it is (held, or about to be claimed)
        self._gone: set[int] = set()  # tickets left before their turn came
        self.holder: tuple[str, float] = ("", 0.0)  # what holds the turn, since (monotonic)

    @property
    def waiting(self) -> int:
        """How many tickets wait behind the one whose turn it is (none given up)."""
        with self._cond:
            return max(0, self._next - self._turn - 1 - len(self._gone))

    def take(self) -> int:
        with self._cond:
            ticket = self._next
            self._next += 1
            return ticket

    def wait(
        self,
        ticket: int,
        what: str,
        on_wait: Callable[[str, float, int], None] | None = None,
        cancel: threading.Event | None = None,
        first_notice_s: float = 2.0,
        notice_every_s: float = 30.0,
    ) -> bool:
        """Block until ``ticket``'s turn (True) or until ``cancel`` is set, also as the turn
        comes (False; the ticket is then left).  While waiting, ``on_wait(holder_what,
        held_for_s, ahead)`` is called after ``first_notice_s`` and then every
        ``notice_every_s`` (never once cancelled).  A KeyboardInterrupt while waiting leaves
        the ticket and propagates."""
        next_notice = time.monotonic() + first_notice_s
        try:
            while True:
                with self._cond:
                    if cancel is not None and cancel.is_set():
                        self._leave(ticket)
                        return False
                    if self._turn == ticket:
                        self.holder = (what, time.monotonic())
                        return True
                    now = time.monotonic()
                    if on_wait is None or now < next_notice:
                        limit = next_notice - now if on_wait is not None else None
                        if cancel is not None:
                            limit = CANCEL_POLL_S if limit is None else min(limit, CANCEL_POLL_S)
                        self._cond.wait(limit)
                        continue
                    held, since = self.holder
                    ahead = ticket - self._turn - sum(1 for t in self._gone if t < ticket)
                # Outside the lock: a note may take a while (a display in a kernel).
                on_wait(held, now - since if since else 0.0, ahead)
                next_notice = time.monotonic() + notice_every_s
        except BaseException:
            self.leave(ticket)
            raise

    def try_hold(self, what: str, timeout_s: float) -> int | None:
        """A ticket holding the turn now, if nobody holds or waits within ``timeout_s``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._turn == self._next, timeout_s):
                return None
            ticket = self._next
            self._next += 1
            self.holder = (what, time.monotonic())
            return ticket

    def leave(self, ticket: int) -> None:
        with self._cond:
            self._leave(ticket)

    def _leave(self, ticket: int) -> None:
        if ticket < self._turn:
            return  # over already
        if ticket > self._turn:
            self._gone.add(ticket)
            return
        self._turn += 1
        while self._turn in self._gone:
            self._gone.discard(self._turn)
            self._turn += 1
        self.holder = ("", 0.0)
        self._cond.notify_all()
