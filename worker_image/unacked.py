"""A request's output events sent and not yet acknowledged by its client: what a broker
restart may have lost on its way, sent again to the client that asks (``Inspect.seen``).

Why: a broker that dies takes with it what it had not yet passed on, and a worker sends
nothing while it registers with the new one; a cell ran on meanwhile (until the worker
stopped it, nobody hearing it) and what it printed was lost (tester BN).  The client's
acknowledgements (``Ack``, every ``CLIENT_CREDIT // 4`` events) already bound what can be
in flight (``CLIENT_CREDIT``), so keeping those events costs at most that many; only an
abandoned request (no client hears it) and a flood of large displays reach the byte bound,
beyond which the oldest are dropped, counted, and the client told.  The idea is TCP's
retransmission queue: what the peer has not acknowledged stays until it has.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, NamedTuple

from rexec_magic import serialize
from rexec_magic.protocol import RESENT_KINDS, RESENT_MAX_BYTES
from rexec_magic.recent import Recent

# Those of ended requests, for a client that asks after its broker restarted: within
# seconds (a client waits up to 30 s for a broker to come back), so kept for a while and
# within bounds, not as long as the fates themselves (``FATES_KEPT``).  What a client
# already had, never acknowledged as a request ends, is most of it.
ENDED_KEPT = 16
ENDED_MAX_BYTES = 32 << 20
ENDED_KEEP_S = 120.0


class Sent(NamedTuple):
    seq: int
    kind: str
    header: bytes  # as sent: numbered, with the request's id
    buffers: list[Any]
    size: int


class Unacked:
    """One request's kept events, by ``seq``; ``dropped``: ranges ``[start, end)`` of
    seqs dropped for room, so the client can be told what it will never see."""

    __slots__ = ("events", "size", "dropped")

    def __init__(self) -> None:
        self.events: deque[Sent] = deque()
        self.size = 0
        self.dropped: list[list[int]] = []

    def add(self, seq: int, kind: str, header: bytes, buffers: Any) -> None:
        if kind not in RESENT_KINDS:
            return
        buffers = list(buffers)
        size = len(header) + serialize.nbytes(buffers)
        self.events.append(Sent(seq, kind, header, buffers, size))
        self.size += size
        while self.size > RESENT_MAX_BYTES and self.events:
            old = self.events.popleft()
            self.size -= old.size
            if self.dropped and self.dropped[-1][1] == old.seq:
                self.dropped[-1][1] = old.seq + 1
            else:
                self.dropped.append([old.seq, old.seq + 1])

    def ack(self, n: int) -> None:
        """The client has handled every event before seq ``n``."""
        while self.events and self.events[0].seq < n:
            self.size -= self.events.popleft().size
        self.dropped = [r for r in self.dropped if r[1] > n]

    def since(self, seen: int) -> tuple[list[Sent], int]:
        """The kept events from seq ``seen`` on, and how many from there were dropped."""
        missing = sum(end - max(start, seen) for start, end in self.dropped if end > seen)
        return [e for e in self.events if e.seq >= seen], missing


class EndedTails:
    """The kept events of requests that ended, oldest first: the ``ENDED_KEPT`` newest
    (``Recent``), within ``ENDED_MAX_BYTES`` and ``ENDED_KEEP_S`` seconds."""

    def __init__(self) -> None:
        self._tails = Recent(ENDED_KEPT)  # request id -> (when it ended, its tail)

    @property
    def size(self) -> int:
        """Bytes kept (a sum over at most ``ENDED_KEPT``)."""
        return sum(tail.size for _, tail in self._tails.values())

    def keep(self, request_id: str, tail: Unacked) -> None:
        """(An empty one too: kept, it says that nothing was left unacknowledged.)"""
        self._tails[request_id] = (time.monotonic(), tail)
        too_old = time.monotonic() - ENDED_KEEP_S
        while self._tails and (
            self.size > ENDED_MAX_BYTES or next(iter(self._tails.values()))[0] < too_old
        ):
            del self._tails[next(iter(self._tails))]

    def get(self, request_id: str) -> Unacked | None:
        kept = self._tails.get(request_id)
        if kept is None or kept[0] < time.monotonic() - ENDED_KEEP_S:
            return None
        return kept[1]
