"""``RecentIds``: the newest N ids a worker has seen, for "did this one come before?".

A worker lives for weeks, so what it remembers about past requests must not grow: the oldest
id goes when a new one comes beyond ``size`` (a dict keeps insertion order).  Written here
because the worker installs without the server's ``cachetools``, and an LRU would be more
than this needs (an id is looked up, never refreshed).
"""

from __future__ import annotations


class RecentIds:
    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: dict[str, None] = {}

    def add(self, request_id: str) -> None:
        self._ids[request_id] = None
        while len(self._ids) > self.size:
            del self._ids[next(iter(self._ids))]

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)
