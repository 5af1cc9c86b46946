"""``Recent``: the newest N entries a worker has seen, for "did this one come before?".

A worker lives for weeks, so what it remembers about past requests must not grow: the oldest
entry goes when a new one comes beyond ``size`` (a dict keeps insertion order).  Written here
because the worker installs without the server's ``cachetools``, and an LRU would be more
than this needs (an entry is looked up or taken, never refreshed).
"""

from __future__ import annotations

from typing import Any


class Recent(dict[str, Any]):
    """A dict that keeps only its ``size`` newest keys; ``add(key)`` for a set of ids."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.size:
            del self[next(iter(self))]

    def add(self, key: str) -> None:
        self[key] = None
