"""What keeps hostile peers from crashing, stalling or flooding the broker.

* ``seed_routing_ids``: libzmq numbers the routing ids a ROUTER makes up from ``rand()``, which
  it never seeds, so every broker process would hand out the same ids (``00 6b8b4567``, ...).
  A peer may also choose its own id, and when a made-up id meets one a peer already holds,
  libzmq aborts the process (``zmq_assert`` in ``add_out_pipe``, socket_base.cpp:2113 in 4.3.5).
  ZAP cannot refuse peer-chosen ids (its request carries the *server* socket's own id, see
  zap_client.cpp), so we make the ids a ROUTER will make up unguessable: ``rand()`` is seeded
  from the OS before any socket exists, and the broker never shows a routing id to anyone
  (workers see an opaque per-connection handle instead).  A peer then has to hit a random
  32-bit window with the ids it holds.
* ``PeerRateLimiter``: token buckets per peer (bounded LRU, so a flood of new peers cannot grow
  it) plus one bucket for all unauthenticated traffic.
* ``RateLimitedLog``: at most N lines per window, each line cut to a bounded length.
* ``make_undumpable``: ``prctl(PR_SET_DUMPABLE, 0)``, so no same-user process can read this
  process's memory, environment or ``/proc/<pid>/mem`` (ptrace needs a dumpable target).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from typing import Any

from cachetools import LRUCache

_PR_SET_DUMPABLE = 4
MAX_LOG_LINE = 300  # characters of one malformed-input log line


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def seed_routing_ids() -> None:
    """Seed the C library's ``rand()`` (which libzmq uses for routing ids) from the OS.

    Call before any ROUTER socket is created.  glibc's ``rand()`` is process-wide, so this
    reaches the libzmq that pyzmq loaded.
    """
    if sys.platform.startswith("linux") or sys.platform == "darwin":
        _libc().srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "little")))


def make_undumpable() -> bool:
    """Mark this process non-dumpable (Linux); True when it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    return _libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0


class TokenBucket:
    """``rate`` events per second, bursts up to ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class PeerRateLimiter:
    """Admit unauthenticated messages per peer and in total; memory bounded by ``max_peers``.

    A peer forgotten by the LRU starts with a full bucket again, which is why the shared
    ``total`` bucket exists: many peers together still cannot exceed it.
    """

    def __init__(
        self,
        per_peer_rate: float = 20.0,
        per_peer_burst: float = 40.0,
        total_rate: float = 2000.0,
        max_peers: int = 4096,
    ) -> None:
        self.rate, self.burst = per_peer_rate, per_peer_burst
        self.peers: LRUCache[bytes, TokenBucket] = LRUCache(maxsize=max_peers)
        self.total = TokenBucket(total_rate, total_rate, time.monotonic())
        self.refused = 0

    def admit(self, peer: bytes) -> bool:
        now = time.monotonic()
        bucket = self.peers.get(peer)
        if bucket is None:
            bucket = self.peers[peer] = TokenBucket(self.rate, self.burst, now)
        if bucket.take(now) and self.total.take(now):
            return True
        self.refused += 1
        return False


class RateLimitedLog:
    """At most ``per_window`` lines per ``window_s``; the rest are counted and summarized.

    Every line is cut to ``MAX_LOG_LINE`` characters, so input cannot make lines long.
    """

    def __init__(
        self, logger: logging.Logger, per_window: int = 20, window_s: float = 10.0
    ) -> None:
        self.log = logger
        self.per_window = per_window
        self.window_s = window_s
        self._start = 0.0
        self._n = 0
        self._dropped = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._start > self.window_s:
            if self._dropped:
                self.log.warning("... %d similar messages suppressed", self._dropped)
            self._start, self._n, self._dropped = now, 0, 0
        self._n += 1
        if self._n <= self.per_window:
            return True
        self._dropped += 1
        return False

    def warning(self, msg: str, *args: Any) -> None:
        if self.allow():
            text = msg % args if args else msg
            self.log.warning("%s", text[:MAX_LOG_LINE])
