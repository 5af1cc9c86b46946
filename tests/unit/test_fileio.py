"""rexec_magic.fileio alone: how a transfer's OS errors are worded, and its window."""

from __future__ import annotations

import errno
import os
import time

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


def _entry(path):
    return next(fileio.walk(path))


def _write(path, mode: str, data: bytes) -> None:
    with open(path, mode) as fh:
        fh.write(data)


@pytest.mark.parametrize(
    "change",
    [
        lambda p: os.truncate(p, 1000),
        lambda p: _write(p, "ab", b"more"),
        lambda p: _write(p, "r+b", b"Z" * 10),  # in place: the same size
    ],
    ids=["shrunk", "grown", "rewritten"],
)
def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path, change):
    """A file written to while a transfer reads it (after its first chunk) raises one
    sentence rather than giving a copy that mixes two versions or ends short or long."""
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * 300_000)
    entry = _entry(path)
    chunks = fileio.read_chunks(entry, 65_536, "here")
    next(chunks)
    time.sleep(0.01)  # (a modification time the file system tells from the first)
    change(path)
    with pytest.raises(fileio.TransferError) as caught:
        list(chunks)
    assert str(caught.value) == (
        f"{path} changed here while it was being sent (it is still being written?), so its "
        "copy was not kept; send it again once it is complete."
    )


def test_an_unchanged_file_is_read_whole_and_a_replaced_one_as_it_was(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 1000)
    assert b"".join(fileio.read_chunks(_entry(path), 65_536, "here")) == path.read_bytes()
    chunks = fileio.read_chunks(_entry(path), 65_536, "here")
    first = next(chunks)
    (tmp_path / "new.bin").write_bytes(b"new")
    os.replace(tmp_path / "new.bin", path)  # renamed over: the open file is the old one
    assert first + b"".join(chunks) == bytes(range(256)) * 1000


@pytest.mark.parametrize("name", ["..", ".", "", "a/b"])
def test_a_source_that_has_no_name_of_its_own_gets_the_default_one(tmp_path, name):
    """``%rexec_get ..`` into the current folder went to ``./..``: the folder above, which
    the transfer then tried to replace."""
    assert fileio.target_for(tmp_path, name, "download") == tmp_path / "download"
    assert fileio.target_for(tmp_path, "data.csv", "download") == tmp_path / "data.csv"
