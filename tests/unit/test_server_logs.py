"""A server's log file is rotated, so what any token holder can make it log cannot fill the
disk (``logs.ROTATE_BYTES``): the broker wrote a line per connection, 41 KB/s from one
connect-and-close loop, about 3.5 GB a day, into one file that only grew (tester BW)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rexec_magic import logs

pytestmark = pytest.mark.unit


def test_a_servers_log_is_rotated_and_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(logs, "ROTATE_BYTES", 4096)
    path = tmp_path / "broker.log"
    logger = logs.configure("rexec-test-rotated", log_file=path, rotate=True, propagate=False)
    try:
        for i in range(2_000):  # (~150 KB of lines)
            logger.info("client connected for user bob (%d)", i)
    finally:
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["broker.log", "broker.log.1", "broker.log.2"], files
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    assert "(1999)" in path.read_text()  # (the newest lines are in the file itself)


def test_a_client_log_is_not_rotated(tmp_path: Path, monkeypatch) -> None:
    """The kernels of a user share one client log: one kernel's rotation would pull it from
    under the others, so it is a plain file."""
    monkeypatch.setattr(logs, "ROTATE_BYTES", 4096)
    path = tmp_path / "rexec.log"
    logger = logs.configure("rexec-test-plain", log_file=path, propagate=False)
    try:
        for i in range(200):
            logger.info("line %d", i)
    finally:
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)
    assert [p.name for p in tmp_path.iterdir()] == ["rexec.log"]
