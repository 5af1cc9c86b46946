"""Notebooks that take their output produced between requests as it comes.

Output a notebook's threads, timers and child processes write after its request ended
(``ExecutorProcess.keep_late``) used to wait in the supervisor for that notebook's next
request: a remote thread's progress showed only when the user ran another remote cell,
and past ``LATE_HOLD_*`` (1 MiB) the thread itself waited, with no word (tester Y).  A
local kernel shows it at once, under the kernel's current parent (ipykernel publishes a
thread's output with the parent of the cell running then, or of the last one).

A client's keepalive connection (``rexec_magic.session._keep_alive``, a thread of its own
that reads between cells) declares itself with ``Keepalive.late``: the number of late
events it has read on that connection.  The supervisor sends it its notebook's late
output, numbered per connection, while fewer than ``LATE_WINDOW`` are unread: credit-based
flow control, as for a request (a kernel that does not read, e.g. busy in C code holding
the GIL, leaves the output kept here, and past the hold its writers wait).  What no
listener took still goes at the top of the notebook's next request, as before.

Events sent to a connection that then went away (the broker restarted, the client made a
new connection) may not have been shown, and cannot be told from shown ones: the new
connection hears how many, in one notice, rather than get them twice or never hear.
"""

from __future__ import annotations

from dataclasses import dataclass

LATE_WINDOW = 64  # late events a listener may have unread (each at most 64 KiB of text)


@dataclass
class Listener:
    """One notebook's connection for late output."""

    route: bytes | None  # None: its connection is gone (a broker restart); none sent
    id: str  # the id its events carry (that of the keepalive that declared it)
    sent: int = 0  # late events sent on this connection
    read: int = 0  # of them, read (its last keepalive said)
    unsure: int = 0  # sent on an earlier connection and never said read: maybe not shown

    @property
    def room(self) -> int:
        return 0 if self.route is None else max(0, LATE_WINDOW - (self.sent - self.read))


class LateListeners:
    """Each client session's listener (``Listener``), by session id."""

    def __init__(self) -> None:
        self.by_session: dict[str, Listener] = {}

    def declared(self, session: str, route: bytes, keepalive_id: str, read: int) -> Listener:
        """A keepalive with ``late`` = ``read`` came from ``route``: a new connection starts
        its count again, and what the old one never said it read is ``unsure``."""
        lst = self.by_session.get(session)
        if lst is None or lst.route != route:
            unsure = 0 if lst is None else lst.unsure + lst.sent - lst.read
            lst = self.by_session[session] = Listener(route, keepalive_id, unsure=unsure)
        lst.read = min(max(lst.read, read), lst.sent)
        return lst

    def room(self, session: str) -> int:
        lst = self.by_session.get(session)
        return 0 if lst is None else lst.room

    def forget(self, session: str) -> None:
        self.by_session.pop(session, None)

    def connections_gone(self) -> None:
        """The broker restarted: every route is stale until its listener declares again."""
        for lst in self.by_session.values():
            lst.unsure += lst.sent - lst.read
            lst.route, lst.sent, lst.read = None, 0, 0

    def __bool__(self) -> bool:
        return bool(self.by_session)
