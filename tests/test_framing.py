"""The supervisor-executor link (worker_image/framing.py) over real Unix socket pairs, in one
process (the link between real processes: tests/test_supervisor.py)."""

from __future__ import annotations

import select
import socket
import struct
import threading

import numpy as np
import pytest

from worker_image import framing

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def read_all(reader: framing.Reader, count: int) -> list[list[bytes]]:
    """``count`` messages from a non-blocking reader, waiting on the socket between reads."""
    out = []
    while len(out) < count:
        msg = reader.next()
        if msg is None:
            assert not reader.eof, f"the stream ended after {len(out)} messages"
            select.select([reader.sock], [], [], 5)
            continue
        out.append([bytes(f) for f in msg])
    return out


def test_messages_of_every_shape_arrive_whole_and_in_order(pair):
    """Small, empty and large frames (larger than the socket buffer), in one stream."""
    sender, receiver = pair
    receiver.setblocking(False)
    big = np.arange(3 * 2**20, dtype=np.uint8).tobytes()  # read straight into its own buffer
    messages = [
        [b"RX1", b"execute", b'{"id":"a"}'],
        [b"RX1", b"", b"{}"],
        [b"RX1", b"done", b'{"id":"a"}', big, b"tail"],
        [b"x" * (framing.BIG_FRAME - 1), b"y" * framing.BIG_FRAME],
        [memoryview(big)[1:100], bytearray(b"ba")],
    ]
    expected = [[bytes(f) for f in m] for m in messages]
    thread = threading.Thread(target=lambda: [framing.send(sender, m) for m in messages])
    thread.start()
    got = read_all(framing.Reader(receiver), len(messages))
    thread.join(10)
    assert got == expected


def test_a_large_frame_arrives_writable_so_an_array_needs_no_copy(pair):
    sender, receiver = pair
    data = np.arange(2**18, dtype=np.float64)
    thread = threading.Thread(target=framing.send, args=(sender, [b"h", memoryview(data)]))
    thread.start()
    msg = framing.Reader(receiver).next()  # blocking socket: waits for the whole message
    thread.join(10)
    arr = np.frombuffer(msg[1], dtype=np.float64)
    arr[0] = 7.0  # writable in place
    assert arr[0] == 7.0 and (arr[1:] == data[1:]).all()


def test_writer_never_blocks_and_finishes_as_the_socket_takes_more(pair):
    """The supervisor's side: a request larger than the socket buffer is written in parts
    (``pending`` until done); what the reader gets is the whole message."""
    writer_end, reader_end = pair
    writer_end.setblocking(False)
    writer = framing.Writer(writer_end)
    payload = b"z" * (16 * 2**20)
    writer.queue([b"RX1", b"execute", payload])
    writer.flush()
    assert writer.pending  # 16 MiB does not fit a socket buffer: no wait, the rest later
    assert 0 < writer.written < writer.queued
    received: list = []
    thread = threading.Thread(target=lambda: received.append(framing.Reader(reader_end).next()))
    thread.start()
    while writer.pending:
        select.select([], [writer_end], [], 5)
        writer.flush()
    thread.join(10)
    assert writer.written == writer.queued
    assert [bytes(f) for f in received[0]] == [b"RX1", b"execute", payload]


def test_writer_to_a_closed_reader_raises_and_says_nothing_went(pair):
    writer_end, reader_end = pair
    reader_end.close()
    writer_end.setblocking(False)
    writer = framing.Writer(writer_end)
    writer.queue([b"RX1", b"execute", b"{}"])
    with pytest.raises(OSError):
        writer.flush()
    assert writer.written == 0 and not writer.pending


def test_end_of_stream_mid_message_is_eof_not_a_message(pair):
    sender, receiver = pair
    receiver.setblocking(False)
    framing.send(sender, [b"whole"])
    encoded = b"".join(bytes(v) for v in framing.encode([b"RX1", b"cut short"]))
    sender.sendall(encoded[:-3])
    sender.close()
    reader = framing.Reader(receiver)
    assert [bytes(f) for f in read_all(reader, 1)[0]] == [b"whole"]
    while not reader.eof:
        assert reader.next() is None
        select.select([receiver], [], [], 5)
    assert reader.next() is None


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack("<I", 5) + b"\0" * 64,  # plausible as a count, but no message mark
        framing.MESSAGE_MARK + struct.pack("<I", framing.MAX_FRAMES + 1) + b"\0" * 64,
        framing.MESSAGE_MARK + struct.pack("<IQ", 1, 2**62),  # no memory holds that frame
    ],
    ids=["no mark", "too many frames", "too large a frame"],
)
def test_a_corrupt_stream_is_an_error_not_a_huge_allocation(pair, garbage):
    sender, receiver = pair
    sender.sendall(garbage)
    reader = framing.Reader(receiver)  # blocking: the first read takes what was sent
    with pytest.raises(framing.FramingError):
        reader.next()
    assert reader.ready()  # a caller polling ``ready`` goes on to ``next`` and sees it
    reader.eof = True  # the caller gave up on the link
    assert not reader.ready()


def test_a_message_of_many_frames_arrives_whole(pair):
    """More frames than ZeroMQ-era tests ever sent (a pull of 70,000 arrays)."""
    sender, receiver = pair
    frames = [i.to_bytes(4, "little") for i in range(70_000)]
    thread = threading.Thread(target=framing.send, args=(sender, frames))
    thread.start()
    got = framing.Reader(receiver).next()
    thread.join(10)
    assert [bytes(f) for f in got] == frames


def test_a_read_budget_ends_a_call_before_a_large_frame_is_complete(pair):
    """The supervisor reads a few MiB per turn of its loop, not a whole 64 MiB frame."""
    sender, receiver = pair
    receiver.setblocking(False)
    big = bytes(64 * 2**20)
    thread = threading.Thread(target=framing.send, args=(sender, [b"h", big]))
    thread.start()
    reader = framing.Reader(receiver)
    calls = 0
    while (msg := reader.next(budget=2**20)) is None:
        calls += 1
        select.select([receiver], [], [], 5)
    thread.join(10)
    assert calls >= 63  # 64 MiB, at most 1 MiB per call
    assert bytes(msg[1]) == big
