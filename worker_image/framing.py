"""Multipart messages over a Unix stream socket: the link between supervisor and executor.

Why not ZeroMQ here: every ZeroMQ message between two processes passes through an I/O thread
on each side, four thread wake-ups per hop.  A request and its DONE cross this link once each
per cell; measured on a 2-core machine with a 3 ms pause between round trips (as between
notebook cells), an ipc PUSH/PULL round trip took 160 µs and the same bytes over a pipe 6 µs.
The link is private to one machine and two processes that trust each other's framing, so
what ZeroMQ adds (reconnection, routing, many peers) is not needed; its flow control is the
socket buffer (a sender blocks when the reader stops reading, as PUSH blocks at its
high-water mark).

A message is a list of frames (bytes-like), written as::

    b"RXL\x01" | u32 n | n x u64 length | frame 1 | ... | frame n     (little-endian)

The 4-byte mark starts every message, so bytes that are no message (a cell writing to a
descriptor it did not open) are found at once, not read as a count of frames.

``send`` (blocking, the executor) writes one whole message; ``Writer`` (non-blocking, the
supervisor) queues messages and writes what the socket takes; ``Reader`` takes whole
messages out of the bytes read so far, reading a large frame straight into memory of its
own (one copy from the kernel, and the memory is writable, so an array loaded from it needs
no copy of its own).
"""

from __future__ import annotations

import errno
import mmap
import socket
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

MESSAGE_MARK = b"RXL\x01"
_HEAD = struct.Struct("<4sI")  # the mark and the number of frames
_LENGTH = struct.Struct("<Q")
# More frames than any message has (a pull of 16 million arrays): a corrupt stream.  Its
# lengths alone would be 128 MiB.
MAX_FRAMES = 1 << 24
READ_CHUNK = 1 << 18  # bytes read per recv for small frames
BIG_FRAME = 1 << 16  # frames this large are read straight into a buffer of their own
SOCKET_BUFFER = 4 << 20  # SO_SNDBUF asked for (Linux caps it at net.core.wmem_max)
_IOV_MAX = 512  # buffers per sendmsg (Linux allows 1024)


class FramingError(ValueError):
    """The byte stream does not hold messages (a bug or a corrupt peer): drop the link."""


def encode(frames: Sequence[Any]) -> list[memoryview]:
    """The buffers of one message, prefix first, ready for ``sendmsg`` (no frame copied)."""
    views = [memoryview(f).cast("B") if not isinstance(f, bytes) else memoryview(f) for f in frames]
    prefix = _HEAD.pack(MESSAGE_MARK, len(views)) + b"".join(_LENGTH.pack(v.nbytes) for v in views)
    return [memoryview(prefix), *(v for v in views if v.nbytes)]


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of Unix stream sockets for one link, with send buffers of
    ``SOCKET_BUFFER`` (fewer wake-ups for bulk data).  OSError when out of descriptors."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in pair:
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    return pair


def _advance(views: deque[memoryview], sent: int) -> None:
    """Drop ``sent`` bytes from the front of ``views``."""
    while sent:
        head = views[0]
        if sent >= head.nbytes:
            sent -= head.nbytes
            views.popleft()
        else:
            views[0] = head[sent:]
            sent = 0


class Writer:
    """Messages queued for a non-blocking socket, written as it takes them (the supervisor:
    it never waits on an executor).  ``flush`` after each ``queue`` and on POLLOUT.

    ``queued`` and ``written`` count bytes over the writer's life: a message queued when
    ``queued`` was Q has not been touched while ``written <= Q``.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._views: deque[memoryview] = deque()  # each holds its frame alive until written
        self.queued = 0
        self.written = 0

    @property
    def pending(self) -> bool:
        return bool(self._views)

    def queue(self, frames: Sequence[Any]) -> None:
        views = encode(frames)
        self._views.extend(views)
        self.queued += sum(v.nbytes for v in views)

    def flush(self) -> None:
        """Write what the socket takes now.  OSError (e.g. BrokenPipeError) when the reader
        is gone."""
        while self._views:
            batch = [self._views[i] for i in range(min(len(self._views), _IOV_MAX))]
            try:
                sent = self.sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._views.clear()  # the link is dead: nothing queued can go any more
                raise
            _advance(self._views, sent)
            self.written += sent


def send(sock: socket.socket, frames: Sequence[Any]) -> None:
    """Write one whole message on a blocking socket (``Writer.flush`` returns only once all
    of it is written).  OSError when the peer is gone.

    The caller keeps signals that raise (SIGINT) from cutting a message in two: a partial
    message would leave the stream unreadable (see ``outbox.EventChannel``).
    """
    writer = Writer(sock)
    writer.queue(frames)
    writer.flush()


def _fresh(length: int) -> memoryview:
    """Writable memory for one large frame, not zeroed first: an anonymous private mapping
    whose pages appear as the frame is read into them (``bytearray(n)`` writes every byte
    before the read writes it again: 39 ms of 100 MiB here).  Freed when the last view of it
    goes (an array loaded from it keeps it)."""
    return memoryview(mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE))


class Unreceived:
    """Stands for a frame whose memory could not be had (``MemoryError``, ``ENOMEM``: a
    memory limit the executor's own code set, ``resource.setrlimit``); its bytes were read
    and dropped, so the link reads on and the request still comes, with this in that
    frame's place: the value it carried fails to load, saying why (``nbytes``: its size).
    It used to end the link, and with it the executor and its namespace, as "exit code 0"
    (tester AS)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def __len__(self) -> int:
        return self.nbytes


# A frame longer than this cannot be meant (a corrupt length): the link is unreadable.
MAX_FRAME_BYTES = 1 << 48


class Reader:
    """Whole messages out of a stream socket (blocking or not).

    ``next()`` returns the next whole message (a list of frames: ``bytes`` for small ones,
    a writable ``memoryview`` of memory of their own for large ones) or None: on a
    non-blocking socket when the rest has not come yet, and at end of stream (``eof``).
    FramingError when the bytes are no message (the link cannot be read on).  ``ready()``
    says whether a whole message is already here, without reading: a caller that stopped
    taking messages (flow control) looks there before it waits for the socket, which knows
    nothing of them.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.eof = False
        self.received = 0  # bytes read so far (all time)
        self._buf = bytearray()
        self._pos = 0
        self._lengths: list[int] | None = None
        self._frames: list[Any] = []
        self._big: memoryview | None = None  # a large frame being read, and how much is in
        self._big_filled = 0
        self._dropping: int | None = None  # the length of a frame being dropped (Unreceived)
        self._drop_left = 0
        self._done: deque[list[Any]] = deque()

    def ready(self) -> bool:
        try:
            self._parse()
        except FramingError:  # ``next()`` raises it, where the caller handles it (and gives
            return not self.eof  # up on the link: ``eof``)
        return bool(self._done)

    def next(self, budget: int | None = None) -> list[Any] | None:
        """The next whole message, or None.  ``budget``: read at most about this many bytes
        in this call, then return None even though the socket has more (a non-blocking
        caller with other work, e.g. the supervisor: a 3 GiB frame is read over many turns
        of its loop instead of in one second-long call)."""
        read = 0
        while True:
            self._parse()
            if self._done:
                return self._done.popleft()
            if self.eof or (budget is not None and read >= budget):
                return None
            got = self._read(None if budget is None else budget - read)
            if not got:
                return None
            read += got

    # ------------------------------------------------------------------ internals
    def _read(self, most: int | None) -> int:
        """Read once, at most ``most`` bytes (None: as much as fits); the bytes read, 0 when
        none came (would block, or end of stream)."""
        try:
            if self._big is not None:
                end = None if most is None else self._big_filled + most
                n = self.sock.recv_into(self._big[self._big_filled : end])
                self._big_filled += n
            else:
                if self._pos:
                    del self._buf[: self._pos]
                    self._pos = 0
                data = self.sock.recv(READ_CHUNK if most is None else min(most, READ_CHUNK))
                n = len(data)
                self._buf += data
        except (BlockingIOError, InterruptedError):
            return 0
        except (ConnectionResetError, BrokenPipeError):
            n = 0
        if n == 0:
            self.eof = True
        self.received += n
        return n

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return out

    def _parse(self) -> None:
        while True:
            if self._lengths is None:
                if self._available() < _HEAD.size:
                    return
                mark, count = _HEAD.unpack_from(self._buf, self._pos)
                if mark != MESSAGE_MARK:
                    raise FramingError(f"no message starts with {mark!r}")
                if count > MAX_FRAMES:
                    raise FramingError(f"a message of {count} frames")
                if self._available() < _HEAD.size + count * _LENGTH.size:
                    return
                self._pos += _HEAD.size
                self._lengths = list(struct.unpack_from(f"<{count}Q", self._buf, self._pos))
                self._pos += count * _LENGTH.size
                self._frames = []
            while len(self._frames) < len(self._lengths):
                length = self._lengths[len(self._frames)]
                if self._dropping is not None:
                    drop = min(self._available(), self._drop_left)
                    self._pos += drop
                    self._drop_left -= drop
                    if self._drop_left:
                        return
                    self._frames.append(Unreceived(self._dropping))
                    self._dropping = None
                elif self._big is not None:
                    if self._big_filled < length:
                        return
                    self._frames.append(self._big)
                    self._big = None
                elif length >= BIG_FRAME:
                    try:
                        if length > MAX_FRAME_BYTES:
                            raise OverflowError("no such length")
                        big = _fresh(length)
                    except (MemoryError, OSError) as exc:
                        if not isinstance(exc, MemoryError) and exc.errno != errno.ENOMEM:
                            raise FramingError(f"a frame of {length:,} bytes ({exc})") from None
                        self._dropping, self._drop_left = length, length  # (read on, drop it)
                        continue
                    except OverflowError as exc:  # e.g. 2**62 bytes
                        raise FramingError(f"a frame of {length:,} bytes ({exc})") from None
                    have = min(self._available(), length)
                    big[:have] = memoryview(self._buf)[self._pos : self._pos + have]
                    self._pos += have
                    self._big, self._big_filled = big, have
                elif self._available() >= length:
                    self._frames.append(self._take(length))
                else:
                    return
            self._done.append(self._frames)
            self._lengths, self._frames = None, []
