"""Notebooks that take their output produced between requests as it comes.

Output a notebook's threads, timers and child processes write after its request ended
(``ExecutorProcess.keep_late``) used to wait in the supervisor for that notebook's next
request: a remote thread's progress showed only when the user ran another remote cell,
and past ``LATE_HOLD_*`` (1 MiB) the thread itself waited, with no word (tester Y).  A
local kernel shows it at once, under the kernel's current parent (ipykernel publishes a
thread's output with the parent of the cell running then, or of the last one).

A client's keepalive connection (``rexec_magic.session._keep_alive``, a thread of its own
that reads between cells) declares itself with ``Keepalive.late``: how many events of its
stream (``late_stream``: the id its events carry) it has read.  The supervisor sends it its
notebook's late output, numbered (``seq``), while fewer than ``LATE_WINDOW`` are unread:
credit-based flow control, as for a request (a kernel that does not read, e.g. busy in C
code holding the GIL, leaves the output kept here, and past the hold its writers wait).
What no listener took still goes at the top of the notebook's next request, as before.

Exactly once across connections: the events not yet said read are kept (at most the
window), and sent again when the listener declares itself from another connection (the
client made a new one; the broker restarted, and what was on its way went with it); the
client shows each ``seq`` of a stream once.  (A first version counted per connection and
only said how many "may not have been shown": tester Z lost up to 3,415 lines of a flood
when the keepalive connection was made again after a first call, and 64 at a broker
restart with no word.)
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

LATE_WINDOW = 64  # late events a listener may have unread (each at most 64 KiB of text)


@dataclass
class Listener:
    """One notebook's connection for late output, and the stream of events sent to it."""

    route: bytes
    id: str  # the stream's id, in each of its events (new for each listener kept here)
    sent: int = 0  # events numbered so far: the next one's seq
    read: int = 0  # of them, read (its last keepalive said)
    # Its notebook's last request that began, the executor it ran in, and the first seq
    # written after it began (``Event.after``, on that executor's output only: the client
    # shows those after that request's own output; the notebook's other namespaces are
    # not held back by it, tester Z2).
    after: str | None = None
    after_in: str | None = None
    after_from: int = 0
    # (seq, kind, header, buffers) of the events not yet said read, oldest first.
    unread: deque[tuple[int, str, bytes, Any]] = field(default_factory=deque)

    @property
    def room(self) -> int:
        return max(0, LATE_WINDOW - (self.sent - self.read))

    def acknowledged(self, read: int) -> None:
        self.read = min(max(self.read, read), self.sent)
        while self.unread and self.unread[0][0] < self.read:
            self.unread.popleft()


class LateListeners:
    """Each client session's listener (``Listener``), by session id."""

    def __init__(self) -> None:
        self.by_session: dict[str, Listener] = {}
        self._ids = (f"{secrets.token_hex(4)}-{n}" for n in itertools.count(1))

    def declared(
        self, session: str, route: bytes, stream: str | None, read: int
    ) -> tuple[Listener, bool]:
        """A keepalive that says it read ``read`` events of ``stream`` came from ``route``:
        the listener, and whether it came from another connection (its unread events are
        to be sent again there)."""
        lst = self.by_session.get(session)
        if lst is None:
            lst = self.by_session[session] = Listener(route, next(self._ids))
            return lst, False
        if stream == lst.id:  # (another stream's count, or none yet, says nothing of this one)
            lst.acknowledged(read)
        moved = route != lst.route
        lst.route = route
        return lst, moved

    def room(self, session: str) -> int:
        lst = self.by_session.get(session)
        return 0 if lst is None else lst.room

    def forget(self, session: str) -> None:
        self.by_session.pop(session, None)

    def __bool__(self) -> bool:
        return bool(self.by_session)
