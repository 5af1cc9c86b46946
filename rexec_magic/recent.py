"""``Recent``: the newest N entries, for "did this one come before?" on both sides.

A worker lives for weeks and a kernel for days, so what either remembers about past
requests, runs and cells must not grow: the oldest entry goes when a new one comes beyond
``size``.  Setting a key again makes it the newest (a cell that runs again is a recent one).
Written here because the worker and the kernel install without the server's ``cachetools``,
and an LRU would be more than this needs (a lookup does not refresh an entry).  Not
thread-safe: callers that share one hold their own lock.
"""

from __future__ import annotations

from typing import Any


class Recent(dict[str, Any]):
    """A dict that keeps only its ``size`` newest keys (newest: the last set); ``add(key)``
    for a set of ids."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: str, value: Any) -> None:
        self.pop(key, None)  # (set again: the newest now, as dict order goes)
        super().__setitem__(key, value)
        while len(self) > self.size:
            del self[next(iter(self))]

    def add(self, key: str) -> None:
        self[key] = None
