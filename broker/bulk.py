"""The broker's side of the bulk side channel: buffers an executor sent straight here, held
until the DONE that names them passes (``rexec_magic.protocol``, "The bulk side channel").

Why: a 100 MiB result relayed executor -> supervisor -> broker -> client is copied whole
three times in a row; sent here directly it is copied twice, as raw ZeroMQ would.  What is
held is bounded per user (``BULK_MAX_HELD`` sets, ``BULK_MAX_HELD_BYTES``): past that an
upload is refused and the executor sends its buffers the usual way, so a bound never loses
a value.  A set is let go when its DONE takes it or its worker is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rexec_magic import protocol as P


def _nbytes(frames: list[Any]) -> int:
    return sum(len(f) for f in frames)


@dataclass
class Held:
    """One user's held buffer sets, by id, in arrival order."""

    sets: dict[str, list[Any]] = field(default_factory=dict)
    nbytes: int = 0


class BulkStore:
    """Buffer sets by user and id (ids are the executor's, random, never reused)."""

    def __init__(
        self, max_sets: int = P.BULK_MAX_HELD, max_bytes: int = P.BULK_MAX_HELD_BYTES
    ) -> None:
        self.max_sets = max_sets
        self.max_bytes = max_bytes
        self._by_user: dict[str, Held] = {}

    def hold(self, user: str, set_id: str, frames: list[Any]) -> str | None:
        """Keep ``frames`` for ``user``'s DONE naming ``set_id``; None, or why not (a
        sentence for the log: the executor then sends them the usual way)."""
        held = self._by_user.setdefault(user, Held())
        size = _nbytes(frames)
        if set_id in held.sets:
            return "that id is held already"
        if len(held.sets) >= self.max_sets:
            return f"{len(held.sets)} sets are held for this user already"
        if held.nbytes + size > self.max_bytes:
            return f"{held.nbytes + size} bytes would be held for this user"
        held.sets[set_id] = frames
        held.nbytes += size
        return None

    def take(self, user: str, set_id: str) -> list[Any] | None:
        """The set, no longer held; None when none is held under that id."""
        held = self._by_user.get(user)
        frames = held.sets.pop(set_id, None) if held is not None else None
        if held is not None and frames is not None:
            held.nbytes -= _nbytes(frames)
            if not held.sets:
                del self._by_user[user]
        return frames

    def drop_user(self, user: str) -> int:
        """Let go of everything held for ``user`` (its worker was dropped); how many sets."""
        held = self._by_user.pop(user, None)
        return len(held.sets) if held is not None else 0

    def held_bytes(self) -> int:
        return sum(h.nbytes for h in self._by_user.values())

    def held_sets(self) -> int:
        return sum(len(h.sets) for h in self._by_user.values())
