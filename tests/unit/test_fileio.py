"""rexec_magic.fileio alone: how a transfer's OS errors are worded, and its window."""

from __future__ import annotations

import errno

import pytest

from rexec_magic import fileio
from rexec_magic.protocol import FILE_MESSAGE_COST, FILE_WINDOW_BYTES

pytestmark = pytest.mark.unit


def test_a_full_disk_is_one_sentence():
    """The ENOSPC of a real write to /dev/full, worded as a transfer reports it."""
    with pytest.raises(OSError) as info, open("/dev/full", "wb", buffering=0) as fh:
        fh.write(b"x")
    assert info.value.errno == errno.ENOSPC
    sentence = fileio.error_sentence(info.value, "data/big.bin", "on the worker")
    assert (
        sentence == "The disk on the worker is full: data/big.bin could not be written completely."
    )


def test_a_sender_never_waits_on_a_receiver_that_kept_up():
    """Played message by message, a folder of 5,000 empty files and then a large file: the
    receiver acknowledges often enough that what is unacknowledged stays below an eighth of
    the window, so the sender, which stops at the window, never waits for nothing."""
    send, receive = fileio.SendWindow(), fileio.ReceiveWindow()
    acked = 0
    for nbytes in [0] * 5000 + [1 << 20] * 40:
        upto = send.charge(nbytes)
        assert not send.must_wait(upto, acked)
        ack = receive.chunk(nbytes) if nbytes else receive.item()
        acked = ack if ack is not None else acked
        assert send.sent - acked < FILE_WINDOW_BYTES // 8
    assert acked == send.sent == receive.received == 5040 * FILE_MESSAGE_COST + 40 * (1 << 20)
    assert send.must_wait(acked + FILE_WINDOW_BYTES + 1, acked)  # a receiver that fell behind
