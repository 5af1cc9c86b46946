"""Completion and ``obj?`` answered from the worker's namespace.

The kernel asks with COMPLETE / INTROSPECT and waits only a fraction of a second
(``rexec_magic.assist``), so the answers come from a thread of their own in the notebook's
executor (the supervisor hands the questions on, as it does INSPECT), never from the main
thread (a cell may be running) and never from the supervisor (an attribute lookup on a user
object is user code, and may be slow).  IPython's own completer and inspector do the work,
so the answers are the ones a local kernel would give: names, attributes, dict keys,
signatures, docstrings.
Jedi is off: it can take seconds on first use, and the kernel would have given up by then.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

from rexec_magic import protocol
from rexec_magic.protocol import Kind, Message
from worker_image.outbox import EventSender, Target

log = logging.getLogger(__name__)

KINDS = frozenset({Kind.COMPLETE, Kind.INTROSPECT})
MAX_MATCHES = 500


def complete(shell: InteractiveShell, code: str, cursor_pos: int) -> dict[str, Any]:
    """IPython's matches at ``cursor_pos`` of ``code``: ``{matches, cursor_start, cursor_end}``."""
    cursor_pos = max(0, min(int(cursor_pos), len(code)))
    line_start = code.rfind("\n", 0, cursor_pos) + 1
    line_end = code.find("\n", cursor_pos)
    line = code[line_start : len(code) if line_end < 0 else line_end]
    text, matches = shell.complete("", line, cursor_pos - line_start)
    return {
        "matches": list(dict.fromkeys(matches))[:MAX_MATCHES],
        "cursor_start": max(0, cursor_pos - len(text)),
        "cursor_end": cursor_pos,
    }


def inspect(shell: InteractiveShell, name: str, detail_level: int) -> dict[str, Any]:
    """What ``name?`` (detail 0) or ``name??`` (detail 1) shows: ``{found, data}``."""
    try:
        data = shell.object_inspect_mime(name, detail_level=detail_level)
    except KeyError:
        return {"found": False, "data": {}}
    return {"found": True, "data": data}


class Introspector:
    """Answers COMPLETE and INTROSPECT in its own thread."""

    def __init__(self, shell: InteractiveShell, outbox: EventSender) -> None:
        self.shell = shell
        self.outbox = outbox
        shell.Completer.use_jedi = False
        self._inbox: queue.Queue[tuple[Target, Message]] = queue.Queue(maxsize=64)
        thread = threading.Thread(target=self._loop, name="rexec-introspect", daemon=True)
        thread.start()

    def handle(self, route: bytes, msg: Message) -> bool:
        """I/O thread: take a COMPLETE / INTROSPECT (True) or leave it to the caller."""
        if msg.kind not in KINDS:
            return False
        request_id = msg.read(protocol.Request).id  # a bad one: dropped, logged by the caller
        try:
            self._inbox.put_nowait((Target(route, request_id), msg))
        except queue.Full:  # someone types faster than we answer: they stopped waiting anyway
            log.info("introspection queue full: %s dropped", msg.kind)
        return True

    def _loop(self) -> None:
        while True:
            target, msg = self._inbox.get()
            try:
                if msg.kind == Kind.COMPLETE:
                    kind = Kind.COMPLETE_REPLY
                    ask = msg.read(protocol.Complete)
                    reply = complete(self.shell, ask.code, ask.cursor_pos)
                else:
                    kind = Kind.INTROSPECT_REPLY
                    what = msg.read(protocol.Introspect)
                    reply = inspect(self.shell, what.name, 1 if what.detail_level else 0)
            except Exception as exc:  # a user object's __dir__ or __doc__ may raise anything
                log.info("%s failed: %s: %s", msg.kind, type(exc).__name__, exc)
                kind = Kind.COMPLETE_REPLY if msg.kind == Kind.COMPLETE else Kind.INTROSPECT_REPLY
                reply = {"matches": [], "found": False, "data": {}}
            self.outbox.event(target, kind, {"id": target.id, **reply}, numbered=False)
