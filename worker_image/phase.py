"""Where an executor's main thread is, readable by its supervisor without the executor's help.

One page of memory shared by the two (``memfd_create``, passed to the executor as
``REXEC_EXECUTOR_PHASE_FD``): the executor's main thread writes there the id of the request
whose user code has ended while what it bound is packed to go back, and clears it as the
request's DONE goes.  An interrupt's grace period is for code deaf to it: a request past
its code is not, and gets its own bound (``Supervisor.PACK_GRACE_S``).

Why memory, not a message: the executor's threads cannot answer while its main thread holds
the GIL (pickling a large structure, a ``__getstate__`` in C), which is just when it is
asked (tester AT: a 9 s pack interrupted 1 s in was killed as "did not stop"); and a message
per cell would cost every cell a wakeup of the supervisor.  A write to this page costs the
cell about a microsecond.

Layout: bytes 0-1 are the length of the id (little-endian; 0: none), the id's UTF-8 bytes
follow.  The id is written before its length, so a reader sees none or the whole id (a
torn read can only make a request look not yet packing: it is then treated as before).
The page's last 4 bytes count the interrupts the executor's code was given (a
KeyboardInterrupt raised for one, little-endian, written by its main thread only): the
supervisor sends again only an interrupt that was not (``ExecutorProcess.interrupt_again``).
The 32 bytes before them count the bytes the supervisor took from the executor's stdout
and stderr pipes: for each pipe a sequence number, odd while a read is under way, and the
count (little-endian 64-bit each, written by the supervisor only).  With what is still
unread there, the executor knows whether bytes it did not write (C code, a child process)
went into a pipe, and orders its Python text after them (``outbox.StreamOrder``); a read of
the count under way, or one that began meanwhile (the sequence moved), is no answer.
"""

from __future__ import annotations

import mmap
import os
import struct

PAGE = 4096  # bytes: the length and a request id (``protocol.Short``: 256 chars, 1 KiB UTF-8)
_HEAD = 2
_TAKEN = PAGE - 4  # where the count of interrupts taken is
_PIPES = _TAKEN - 32  # where the (sequence, count) of bytes taken from stdout and stderr are
PIPE_STREAMS = ("stdout", "stderr")  # the pipes' counts, in the page's order (their index)
_PIPE_COUNT = struct.Struct("<QQ")


class PhaseBoard:
    """The shared page, seen from either side."""

    def __init__(self, fd: int) -> None:
        self._page = mmap.mmap(fd, PAGE)

    @classmethod
    def create(cls) -> tuple[PhaseBoard, int]:
        """A new page (supervisor side) and the fd to hand the executor (close it once
        handed: the mapping stays)."""
        fd = os.memfd_create("rexec-phase")
        os.ftruncate(fd, PAGE)
        return cls(fd), fd

    def packing(self, request_id: str) -> None:
        """Executor: ``request_id``'s user code is over; what it bound is being packed."""
        raw = request_id.encode()[: _PIPES - _HEAD]
        self._page[_HEAD : _HEAD + len(raw)] = raw
        self._page[0:_HEAD] = len(raw).to_bytes(_HEAD, "little")

    def clear(self) -> None:
        """Executor: no request is being packed (its DONE goes)."""
        self._page[0:_HEAD] = b"\0\0"

    def is_packing(self, request_id: str) -> bool:
        """Supervisor: whether ``request_id``'s code is over and its values are packing."""
        length = int.from_bytes(self._page[0:_HEAD], "little")
        raw = request_id.encode()[: _PIPES - _HEAD]
        return length == len(raw) and self._page[_HEAD : _HEAD + length] == raw

    def took_interrupt(self) -> None:
        """Executor (main thread): a KeyboardInterrupt was raised in user code for an
        interrupt."""
        taken = (self.interrupts_taken() + 1) % 2**32
        self._page[_TAKEN:PAGE] = taken.to_bytes(4, "little")

    def interrupts_taken(self) -> int:
        """How many interrupts the executor's code was given so far (``took_interrupt``)."""
        return int.from_bytes(self._page[_TAKEN:PAGE], "little")

    def reading_pipe(self, index: int) -> None:
        """Supervisor: a read of pipe ``index`` (0: stdout, 1: stderr) begins."""
        at = _PIPES + 16 * index
        sequence = int.from_bytes(self._page[at : at + 8], "little") + 1
        self._page[at : at + 8] = sequence.to_bytes(8, "little")

    def read_pipe(self, index: int, nbytes: int) -> None:
        """Supervisor: the read of pipe ``index`` took ``nbytes`` and is over."""
        at = _PIPES + 16 * index
        count = int.from_bytes(self._page[at + 8 : at + 16], "little") + nbytes
        self._page[at + 8 : at + 16] = count.to_bytes(8, "little")
        sequence = int.from_bytes(self._page[at : at + 8], "little") + 1
        self._page[at : at + 8] = sequence.to_bytes(8, "little")

    def pipe_count(self, index: int) -> tuple[int, int]:
        """Executor: (sequence, bytes taken so far) of pipe ``index``; an odd sequence, or
        one that moved by the next look, says a read was under way meanwhile."""
        return _PIPE_COUNT.unpack_from(self._page, _PIPES + 16 * index)

    def close(self) -> None:
        self._page.close()
