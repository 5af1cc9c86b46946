"""``worker_image.phase``: the page an executor marks and its supervisor reads, across two
real processes (the reader needs nothing from the writer: it may hold the GIL for seconds)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from worker_image.phase import PhaseBoard

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": ROOT}


def test_a_request_marked_packing_in_another_process_is_seen_and_cleared():
    board, fd = PhaseBoard.create()
    mark = (
        "import sys, os\nfrom worker_image.phase import PhaseBoard\n"
        "b = PhaseBoard(int(sys.argv[1]))\nb.packing(sys.argv[2])\n"
    )
    try:
        assert not board.is_packing("cell-7")
        run = [sys.executable, "-c", mark, str(fd), "cell-7"]
        subprocess.run(
            run, pass_fds=(fd,), check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}
        )
        assert board.is_packing("cell-7")
        assert not board.is_packing("cell-70") and not board.is_packing("cell-")
        clear = mark.replace("b.packing(sys.argv[2])", "b.clear()")
        run = [sys.executable, "-c", clear, str(fd), "-"]
        subprocess.run(
            run, pass_fds=(fd,), check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}
        )
        assert not board.is_packing("cell-7")
    finally:
        os.close(fd)
        board.close()
