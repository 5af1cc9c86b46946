"""The broker's side of the bulk side channel: buffers an executor sent straight here, held
until the DONE that names them passes (``rexec_magic.protocol``, "The bulk side channel").

Why: a 100 MiB result relayed executor -> supervisor -> broker -> client is copied whole
three times in a row; sent here directly it is copied twice, as raw ZeroMQ would.

What is held is bounded, counted in bytes plus ``FRAME_COST`` per frame (a set of a million
empty frames is 200 MB of Python objects, not 0 bytes): per user ``BULK_MAX_HELD`` sets and
``BULK_MAX_HELD_BYTES``, and in all ``BULK_MAX_HELD_BYTES_TOTAL``.  Past a bound an upload
is refused and the executor sends its buffers the usual way, so a bound never loses a value.
A set is let go when its DONE takes it, when its worker is dropped, when the same
connection (one executor) has uploaded ``BULK_MAX_PER_UPLOADER`` newer sets (an executor
uploads for one DONE at a time and sends that DONE before it runs anything else, so an
older set nobody took is an orphan: its executor gave up waiting for the answer), or
``BULK_CLOSED_GRACE_S`` after the connection it came on closed (its executor ended, or died
between upload and DONE; an executor's last DONE is read out of its link as it exits,
whatever the client's credit, so it has long passed by then).

The other way (``fetch`` sets): a client's large request's buffers, held for the executor
that runs it to fetch (``protocol.BULK_FETCH_REF``).  Under the same bounds (past them the
request goes whole), never orphans (a client may have many requests waiting their turn); let
go when fetched, when the request's DONE passes without a fetch, ``BULK_CLOSED_GRACE_S``
after the client's connection closed, or when the worker is dropped.

Uploads (``protocol.UPLOAD_AHEAD_BYTES``): a client's large request's buffers sent ahead of it
on a connection of their own, held until the request that names them comes right after
(then held as a ``fetch`` set of that request, or forwarded).  Outside the bounds (those bytes
would otherwise be in the broker's memory as the request in transit), but one per upload
connection (a newer upload lets an unclaimed older one go) and at most
``protocol.UPLOAD_CLAIM_S``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from rexec_magic import protocol as P

FRAME_COST = 1024  # bytes counted per frame beyond its data (~200 measured per zmq.Frame)


def frames_nbytes(frames: list[Any]) -> int:
    """The data bytes of received frames (``zmq.Frame`` or bytes)."""
    return sum(len(f) for f in frames)


def cost(frames: list[Any]) -> int:
    """What holding ``frames`` counts against the bounds."""
    return frames_nbytes(frames) + FRAME_COST * len(frames)


@dataclass
class HeldSet:
    frames: list[Any]
    cost: int
    uploader: bytes  # the routing id of the connection it came on
    expires: float | None = None  # monotonic time it is let go (its connection closed)
    fetch: bool = False  # a client request's buffers, for its executor to fetch
    upload: bool = False  # a client request's buffers sent ahead, for the request to claim


class BulkStore:
    """Buffer sets by user and id (ids are the executor's, random, never reused)."""

    def __init__(
        self,
        max_sets: int = P.BULK_MAX_HELD,
        max_bytes: int = P.BULK_MAX_HELD_BYTES,
        max_total_bytes: int = P.BULK_MAX_HELD_BYTES_TOTAL,
        max_per_uploader: int = P.BULK_MAX_PER_UPLOADER,
    ) -> None:
        self.max_sets = max_sets
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.max_per_uploader = max_per_uploader
        self._by_user: dict[str, OrderedDict[str, HeldSet]] = {}
        self.held_bytes = 0  # counted as ``cost`` does
        self.let_go = 0  # sets no DONE took (orphans, and those of dropped workers)

    def hold(
        self, user: str, set_id: str, frames: list[Any], uploader: bytes, fetch: bool = False
    ) -> str | None:
        """Keep ``frames`` for ``user``'s DONE naming ``set_id`` (``fetch``: for the executor
        that runs the client request they came with, ``uploader`` that client's connection);
        None, or why not (for the log: they then go the usual way)."""
        sets = self._by_user.setdefault(user, OrderedDict())
        if set_id in sets:
            return "that id is held already"
        if not fetch:  # (a client may have many requests waiting their turn: no orphans)
            mine = [k for k, held in sets.items() if held.uploader == uploader and not held.fetch]
            for key in mine[: max(0, len(mine) - self.max_per_uploader + 1)]:
                self._release(user, key)  # orphans of this executor (the module's docstring)
                self.let_go += 1
        size = cost(frames)
        user_bytes = sum(held.cost for held in sets.values())
        refusal = None
        if len(sets) >= self.max_sets:
            refusal = f"{len(sets)} sets are held for this user already"
        elif user_bytes + size > self.max_bytes:
            refusal = f"{user_bytes + size} bytes would be held for this user"
        elif self.held_bytes + size > self.max_total_bytes:
            refusal = f"{self.held_bytes + size} bytes would be held for all users"
        if refusal is not None:
            if not sets:
                del self._by_user[user]
            return refusal
        sets[set_id] = HeldSet(frames, size, uploader, fetch=fetch)
        self.held_bytes += size
        return None

    def hold_upload(
        self, user: str, set_id: str, frames: list[Any], uploader: bytes, now: float
    ) -> None:
        """Keep ``frames`` sent ahead of their request for ``take_upload``: unbounded, but the
        uploader's older unclaimed upload goes, and this one goes ``UPLOAD_CLAIM_S`` from
        ``now`` if no request claims it (the module's docstring)."""
        for key in [
            k for k, held in self._by_user.get(user, {}).items()
            if held.upload and held.uploader == uploader
        ]:  # fmt: skip
            self._release(user, key)
            self.let_go += 1
        sets = self._by_user.setdefault(user, OrderedDict())
        size = cost(frames)
        expires = now + P.UPLOAD_CLAIM_S
        sets[set_id] = HeldSet(frames, size, uploader, expires=expires, upload=True)
        self.held_bytes += size

    def take_upload(self, user: str, set_id: str) -> list[Any] | None:
        """The uploaded set ``set_id`` of ``user``, no longer held; None when none is."""
        sets = self._by_user.get(user)
        held = sets.get(set_id) if sets is not None else None
        if held is None or not held.upload:
            return None
        self._release(user, set_id)
        return held.frames

    def take(self, user: str, set_id: str, fetch: bool = False) -> list[Any] | None:
        """The set, no longer held; None when none of that kind (``fetch``: a request's, for
        its executor; else an upload, for its DONE) is held under that id."""
        sets = self._by_user.get(user)
        held = sets.get(set_id) if sets is not None else None
        if held is None or held.fetch != fetch or held.upload:
            return None
        self._release(user, set_id)
        return held.frames

    def drop_user(self, user: str) -> int:
        """Let go of everything held for ``user`` (its worker was dropped); how many sets."""
        sets = self._by_user.pop(user, None) or {}
        self.held_bytes -= sum(held.cost for held in sets.values())
        self.let_go += len(sets)
        return len(sets)

    def uploader_closed(self, uploader: bytes, now: float) -> None:
        """The connection ``uploader`` closed: what it uploaded goes at ``now`` plus the
        grace (``expire``), unless a DONE takes it first."""
        for sets in self._by_user.values():
            for held in sets.values():
                if held.uploader != uploader:
                    continue
                if held.upload:  # its request can no longer come from there: gone now
                    held.expires = now
                elif held.expires is None:
                    held.expires = now + P.BULK_CLOSED_GRACE_S

    def expire(self, now: float) -> None:
        """Let go of the sets whose connection closed more than the grace ago."""
        for user, sets in list(self._by_user.items()):
            for key in [k for k, h in sets.items() if h.expires is not None and h.expires <= now]:
                self._release(user, key)
                self.let_go += 1

    def held_sets(self) -> int:
        return sum(len(sets) for sets in self._by_user.values())

    def status(self) -> dict[str, int]:
        """For the broker's status: what is held now, and how many sets no DONE took."""
        return {"held_sets": self.held_sets(), "held_bytes": self.held_bytes, "let_go": self.let_go}

    def _release(self, user: str, set_id: str) -> HeldSet | None:
        sets = self._by_user.get(user)
        held = sets.pop(set_id, None) if sets is not None else None
        if held is not None:
            self.held_bytes -= held.cost
            if not sets:
                del self._by_user[user]
        return held
