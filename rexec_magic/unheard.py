"""Ordering this notebook's own changes against a request whose end it never heard.

A request whose DONE the notebook never read (the user stopped waiting with a second
Ctrl-C; the worker or the broker went silent while it ran) may have changed the names it
watched on the worker (``RexecClient.missed_names``).  The worker applies the notebook's
push of such a name only while its value there is still the one the notebook last
exchanged (``Execute.missed_base``); else it keeps its own, since the request may have
changed it after the notebook's copy was made.  That is right when the notebook's copy
was changed *before* the request ended, and wrong when the user changed it here after the
request ended (tester AU: ``a = 100`` in a local cell 3 s after the given-up cell that
assigned ``a = 2`` ended came back as 2).

This module gives the worker what it needs to tell the two apart (``Execute.missed_after``):

- ``LocalChanges`` takes the content hash of each such name's local value when the
  notebook stops hearing the request, and moves that mark forward to the start of each
  later cell that finds the value still unchanged (an IPython ``pre_run_cell`` hook).  A
  value pushed later that hashes differently was changed here no earlier than its mark.
- ``WorkerClock`` turns that mark (``time.monotonic()`` here) into the worker's clock,
  from the ``at`` of the ACCEPTED and DONE events (``time.time()`` there) and when each
  was read here (an ACCEPTED comes at once: the first request has one, tester AV).  Each
  estimate is early by that DONE's transit time, so the best is the latest; an early mark
  only ever keeps the worker's value in a close call, never sends an older copy.

The worker applies the push when the value there last changed before the mark, by its own
record of when each name last changed (``worker_image.variables.Watch.changed_at``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rexec_magic import serialize, sync


@dataclass
class Mark:
    """One name's local value as of ``since`` (``time.monotonic()``)."""

    digest: str | None  # None: not bound here (or not one that can travel)
    since: float
    settled: bool = False  # found changed at a cell's start: ``since`` stays


class LocalChanges:
    """The marks of the names a request this notebook never heard the end of may have
    changed (see the module docstring)."""

    def __init__(self) -> None:
        # (No lock: a ``remote_func`` future's thread may end its request while a cell
        # begins, so each method works on a snapshot of the keys, and a race only marks a
        # name a moment later.  A lock taken in a request's ``finally`` could be left held
        # by a Ctrl-C that came just as it was acquired, and the next request hung on it.)
        self._marks: dict[str, Mark] = {}

    def track(self, namespace: Mapping[str, Any], missed: Iterable[str], now: float) -> None:
        """Mark the ``missed`` names not marked yet with their local value as of ``now``
        (one not bound here too: a name the request made, assigned here later, tester AW);
        forget the marks of names no longer missed (a DONE that carried them came)."""
        missed = list(missed)
        for name in set(self._marks).difference(missed):
            self._marks.pop(name, None)
        for name in missed:
            if name not in self._marks:
                self._marks.setdefault(name, Mark(_digest(namespace, name), now))

    def cell_began(self, namespace: Mapping[str, Any], now: float) -> None:
        """A cell starts at ``now``: a marked value still unchanged cannot have been changed
        before it, so its mark moves to ``now``; a changed one keeps its mark for good.
        Costs one hash per such name per cell, only while a request's end is unheard."""
        for name, mark in list(self._marks.items()):
            if mark.settled:
                continue
            if _digest(namespace, name) == mark.digest:
                mark.since = now
            else:
                mark.settled = True

    def digests(self) -> dict[str, str | None]:
        """Each marked name's digest as marked (None: not bound here then).  A name bound
        here to a value that hashes otherwise goes with the next request that reads it,
        even when that value is the one last exchanged (``v = 100`` exchanged, ``v = 1``,
        the request assigns 2 there, then ``v = 100`` again here: taken as unchanged, it
        was not sent, and the worker's 2 came back over it without a word, tester AV).
        ``sync.NamespaceSync.plan`` compares them with the digests it computes anyway."""
        return {name: mark.digest for name, mark in list(self._marks.items())}

    def changed_since(self, name: str, digest: str | None) -> float | None:
        """When (``time.monotonic()``) ``name`` was changed here at the earliest, as a value
        that hashes to ``digest`` (None: deleted); None when it is the value marked, or
        unmarked."""
        mark = self._marks.get(name)
        if mark is None or digest == mark.digest:
            return None
        return mark.since

    def forget(self) -> None:
        """The worker is new or gone: nothing of it was missed."""
        self._marks.clear()


def _digest(namespace: Mapping[str, Any], name: str) -> str | None:
    """The content hash of ``namespace[name]`` (None: absent, a placeholder, or unpicklable:
    such a value is never sent, so its order never matters)."""
    value = namespace.get(name, _ABSENT)
    if value is _ABSENT or isinstance(value, sync.RemoteOnly):
        return None
    try:
        return serialize.pack_value(value).digest
    except serialize.SerializationError:
        return None


_ABSENT = object()


class WorkerClock:
    """The worker's ``time.time()`` at a moment of this process's ``time.monotonic()``,
    estimated from the events read that carry it (``Accepted.at``, ``Done.at``), early by at
    most the fastest one's transit time.  None until one came from the current worker
    process."""

    def __init__(self) -> None:
        self._offset: float | None = None  # worker time minus monotonic here, at the most

    def saw(self, at: Any, read_at: float) -> None:
        """An event stamped ``at`` (worker clock, seconds) was read at ``read_at``."""
        if isinstance(at, (int, float)) and not isinstance(at, bool):
            offset = float(at) - read_at
            if self._offset is None or offset > self._offset:
                self._offset = offset

    def at(self, monotonic: float) -> float | None:
        """The worker's clock at ``monotonic`` (None: no DONE of this worker read yet)."""
        return None if self._offset is None else monotonic + self._offset

    def forget(self) -> None:
        """Another worker process: its clock may differ."""
        self._offset = None
