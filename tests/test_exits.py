"""How an executor's end is put into words (``worker_image/exits.py``), read from the same
kind of files the kernel writes: a cgroup v2 ``memory.events`` / ``memory.max`` in a
directory of the test's own (no cgroup OOM can be caused here without privileges)."""

from __future__ import annotations

import os
import signal

import pytest

from worker_image import exits

pytestmark = pytest.mark.unit


def test_exit_codes_and_signals_in_words():
    assert exits.describe_exit(3) == "exit code 3"
    assert exits.describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV (segmentation fault)"
    assert exits.describe_exit(-signal.SIGKILL) == "killed by SIGKILL (killed)"
    assert exits.describe_exit(-signal.SIGUSR1) == "killed by SIGUSR1"


def test_the_kernels_oom_counter_makes_a_sigkill_out_of_memory(tmp_path):
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert exits.oom_kills(tmp_path) == 1
    text = exits.describe_exit(-signal.SIGKILL, oom_counted=True)
    assert text == "killed: out of memory (the kernel's OOM killer)"


def test_a_sigkill_near_the_memory_limit_is_most_likely_out_of_memory(tmp_path):
    (tmp_path / "memory.max").write_text(f"{1024 * 2**20}\n")
    limit = exits.memory_limit(tmp_path)
    text = exits.describe_exit(-signal.SIGKILL, last_rss=1000 * 2**20, limit=limit)
    assert "1000 MB of its 1024 MB memory limit: most likely out of memory" in text
    far = exits.describe_exit(-signal.SIGKILL, last_rss=100 * 2**20, limit=limit)
    assert far == "killed by SIGKILL (killed)"


def test_unlimited_or_unreadable_cgroups_say_nothing():
    assert exits.oom_kills(None) is None
    assert exits.memory_limit(None) is None


def test_this_process_can_be_read_from_proc():
    assert exits.rss_bytes(os.getpid()) > 0
    assert exits.proc_state(os.getpid()) in ("R", "S")
