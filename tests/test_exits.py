"""How an executor's end is put into words (``worker_image/exits.py``), read from the same
kind of files the kernel writes: cgroup v2 ``memory.events`` / ``memory.max`` and v1
``memory.oom_control`` / ``memory.limit_in_bytes`` in a directory of the test's own (no
cgroup OOM can be caused here without privileges)."""

from __future__ import annotations

import os
import signal

import pytest

from worker_image import exits

pytestmark = pytest.mark.unit


def test_exit_codes_and_signals_in_words():
    assert exits.describe_exit(3) == "exit code 3"
    assert exits.describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV: a segmentation fault"
    assert exits.describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert exits.describe_exit(-signal.SIGUSR1) == "killed by SIGUSR1"


def test_a_kill_at_the_cpu_time_limit_says_so_and_other_kills_do_not():
    reached = exits.CpuUse(used_s=10.0, soft_s=10.0, hard_s=10.0)
    assert exits.describe_exit(-signal.SIGKILL, cpu=reached) == (
        "killed by SIGKILL: it used up its CPU time limit (RLIMIT_CPU, 10 s)"
    )
    soft = exits.CpuUse(used_s=4.99, soft_s=6.0, hard_s=None)  # (the kernel raised it by 1 s)
    assert exits.describe_exit(-signal.SIGXCPU, cpu=soft) == (
        "killed by SIGXCPU: it reached its CPU time limit (RLIMIT_CPU) after 5.0 s of CPU time"
    )
    # A process with threads read 3 clock ticks short of the limit that killed it.
    threads = exits.CpuUse(used_s=0.97, soft_s=1.0, hard_s=1.0)
    assert exits.describe_exit(-signal.SIGKILL, cpu=threads) == (
        "killed by SIGKILL: it used up its CPU time limit (RLIMIT_CPU, 1 s)"
    )
    below = exits.CpuUse(used_s=3.0, soft_s=10.0, hard_s=10.0)
    assert exits.describe_exit(-signal.SIGKILL, cpu=below) == "killed by SIGKILL"
    assert exits.describe_exit(-signal.SIGKILL, cpu=None) == "killed by SIGKILL"
    assert exits.describe_exit(-signal.SIGSEGV, cpu=reached).startswith("killed by SIGSEGV")
    assert exits.describe_exit(1, cpu=reached) == "exit code 1"


def test_this_processs_cpu_use_and_limit_are_read():
    use = exits.cpu_use(os.getpid())
    assert use is not None and use.used_s > 0
    assert exits.cpu_use(2**22 + 12345) is None  # no such process


def test_the_kernels_oom_counter_makes_a_sigkill_out_of_memory(tmp_path):
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert exits.oom_kills(tmp_path) == 1
    text = exits.describe_exit(-signal.SIGKILL, oom_counted=True)
    assert text == "killed: out of memory, by the kernel's OOM killer"


def test_a_sigkill_near_the_memory_limit_is_most_likely_out_of_memory(tmp_path):
    (tmp_path / "memory.max").write_text(f"{1024 * 2**20}\n")
    limit = exits.memory_limit(tmp_path)
    text = exits.describe_exit(-signal.SIGKILL, last_rss=1000 * 2**20, limit=limit)
    assert "1000 MB of its 1024 MB memory limit: most likely out of memory" in text
    far = exits.describe_exit(-signal.SIGKILL, last_rss=100 * 2**20, limit=limit)
    assert far == "killed by SIGKILL"


def test_unlimited_or_unreadable_cgroups_say_nothing():
    assert exits.oom_kills(None) is None
    assert exits.memory_limit(None) is None


def test_this_process_can_be_read_from_proc():
    assert exits.rss_bytes(os.getpid()) > 0
    assert exits.proc_state(os.getpid()) in ("R", "S")


def test_cgroup_v1_files_are_read_too(tmp_path):
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (tmp_path / "memory.limit_in_bytes").write_text(f"{512 * 2**20}\n")
    assert exits.oom_kills(tmp_path) == 2
    assert exits.memory_limit(tmp_path) == 512 * 2**20
    (tmp_path / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert exits.memory_limit(tmp_path) is None


def test_this_process_has_a_readable_memory_cgroup_or_none():
    """On this machine (v1 or v2) the counter is found, or None: never a wrong file."""
    directory = exits.cgroup_dir(os.getpid())
    if directory is not None:
        assert exits.oom_kills(directory) is not None
    assert exits.cgroup_dir(2**22 + 12345) is None  # no such process


def test_a_sigkill_while_the_machine_oom_killed_is_most_likely_out_of_memory(tmp_path, monkeypatch):
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1\noom_kill 7\n")
    monkeypatch.setattr(exits, "VMSTAT", vmstat)
    assert exits.system_oom_kills() == 7
    text = exits.describe_exit(-signal.SIGKILL, system_oom=True)
    assert "OOM killer" in text and "most likely out of memory" in text
    assert exits.describe_exit(-signal.SIGTERM, system_oom=True) == "killed by SIGTERM"
