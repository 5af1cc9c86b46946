"""Output pipes of executors that ended while processes they started still hold them.

A cell may start a process that outlives its executor (``subprocess.Popen('train.sh')``,
``os.system('job &')``); it writes to the executor's stdout and stderr pipes, which it
inherited.  If the supervisor closed its read ends when the executor died, the process's
next write would kill it with SIGPIPE: a crash of the notebook's executor would also end the
user's background job, which a local kernel's death does not (its children write on to the
terminal).  So the supervisor keeps reading such pipes until their last writer closes them,
and what comes goes to the notebook the executor served: into its new executor's output
(``Supervisor._left_text``), or kept here until that executor exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rexec_magic.recent import Recent
from worker_image.executors import (
    LATE_HOLD_CHARS,
    LATE_MAX_CHARS,
    PIPE_READ,
    Late,
    PipeReader,
    for_listeners,
    late_size,
)

log = logging.getLogger(__name__)

MAX_ADOPTED = 64  # pipes kept open at once; past that a dead executor's pipes are closed
WAITING_KEPT = 64  # namespaces whose text waits for their next executor (the newest)
EVERY_EVENT = 2**62  # every mark is behind us: the executor that wrote them is gone


@dataclass
class Adopted:
    key: str | None  # the namespace the executor served (None: a spare)
    owner: str  # the client session whose output it is (whose request ran, or ended, last)
    request: str  # that request
    number: int  # the executor's number, for the log
    reader: PipeReader  # its reader, with any character still half-decoded


class LeftoverPipes:
    """Pipes adopted from dead executors (``adopt``), read until end of file (``read``);
    output for a namespace with no executor yet waits in ``waiting`` (``take``).  Past
    ``LATE_HOLD_CHARS`` waiting for a namespace its pipes are not read (``full``): the
    writers wait, as for any late output; ``LATE_MAX_CHARS`` bounds the rest (the oldest go).
    """

    def __init__(self) -> None:
        self.pipes: dict[int, Adopted] = {}
        self.waiting = Recent(WAITING_KEPT)  # key -> deque of ``Late``
        self._chars: dict[str, int] = {}  # key -> characters waiting (``full`` each turn)

    def adopt(
        self, fd: int, key: str | None, owner: str, request: str, number: int, reader: PipeReader
    ) -> None:
        """Keep reading ``fd`` (now ours to close); closed at once past ``MAX_ADOPTED``."""
        if len(self.pipes) >= MAX_ADOPTED:
            log.warning("executor %d: too many pipes left open by processes; closed", number)
            with contextlib.suppress(OSError):
                os.close(fd)
            return
        reader.other = None  # (its writers now are child processes: they mark no switches)
        self.pipes[fd] = Adopted(key, owner, request, number, reader)

    def read(self, fd: int) -> tuple[Adopted, str]:
        """Read what ``fd`` holds now: (whose it is, the text).  At end of file the pipe
        is closed and forgotten (its last writer is gone)."""
        adopted = self.pipes[fd]
        try:
            data = os.read(fd, PIPE_READ)
        except BlockingIOError:
            data = None
        except OSError:
            data = b""
        text = ""
        if data:
            adopted.reader.feed(data)
            text = "".join(piece for piece, _ in adopted.reader.release(EVERY_EVENT)[0])
        elif data is not None:  # end of file
            text = adopted.reader.finish()
            del self.pipes[fd]
            with contextlib.suppress(OSError):
                os.close(fd)
        return adopted, text

    def keep(
        self,
        key: str,
        kind: str,
        payload: Any,
        owner: str,
        buffers: list[Any] | None = None,
        request: str = "",
    ) -> None:
        """Output for namespace ``key``, which has no executor now, for its next one: text
        (``kind`` stdout / stderr, ``payload`` a str) or an event's header and buffers (a
        display a thread made after ``exit()``).  An event counts as one character."""
        kept = self.waiting.get(key)
        if kept is None:
            kept = self.waiting[key] = deque()
            self._chars = {k: n for k, n in self._chars.items() if k in self.waiting}
        kept.append(Late(kind, payload, buffers or [], owner, request))
        total = self._chars.get(key, 0) + late_size(payload)
        while total > LATE_MAX_CHARS and kept:
            total -= late_size(kept.popleft().payload)
        self._chars[key] = total

    def full(self, key: str | None) -> bool:
        return key is not None and self._chars.get(key, 0) >= LATE_HOLD_CHARS

    def take_for_listeners(self, room: Callable[[str], int]) -> list[tuple[str, Late]]:
        """What waits here for notebooks whose late-output listener has room (``room(owner)``
        events, ``late_listeners``): ``(key, item)``, each notebook's in order (one that does
        not fit keeps the rest of that notebook's).  It used to wait for the namespace's next
        executor, so a background process's output after its executor died showed only in
        the next cell, and as that cell's own (tester AB, 3 of 3)."""
        taken: list[tuple[str, Late]] = []
        left: dict[str, int] = {}  # (shared: nothing taken here is sent before the end)
        for key in list(self.waiting):
            items, rest = for_listeners(self.waiting[key], room, left)
            taken += [(key, item) for item in items]
            if rest:
                self.waiting[key] = rest  # (a key kept keeps its place)
                self._chars[key] = sum(late_size(item.payload) for item in rest)
            else:
                del self.waiting[key]
                self._chars.pop(key, None)
        return taken

    def take(self, key: str) -> list[Late]:
        """What waits for ``key``'s new executor."""
        self._chars.pop(key, None)
        return list(self.waiting.pop(key, ()))

    def close(self) -> None:
        for fd in self.pipes:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pipes.clear()
