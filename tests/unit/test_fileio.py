"""rexec_magic.fileio alone: how a transfer's OS errors are worded."""

from __future__ import annotations

import errno

import pytest

from rexec_magic import fileio

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
