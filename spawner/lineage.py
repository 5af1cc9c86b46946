"""A child process that ends with the process that started it (Linux ``PR_SET_PDEATHSIG``).

Why: a parent killed with SIGKILL (or by a terminal's hangup, before it could stop its
children) runs no clean-up, and its children live on unseen: a `rexec up` killed that way
left its broker, spawner and worker running for as long as nobody looked (80 minutes seen).
The kernel's parent-death signal is the one thing that still reaches them.  (Prior art:
kubespawner has no such need, the kubelet owns the pods; ``supervisord`` and systemd do the
same job with a daemon of their own.)
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

if sys.platform.startswith("linux"):
    _libc = ctypes.CDLL(None, use_errno=True)
    _PR_SET_PDEATHSIG = 1

    def die_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None] | None:
        """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``signum`` when the
        thread that started it ends (so start it from the main thread), and exits at once
        if that parent died before the ``prctl`` took effect.  SIGTERM lets a child that
        handles it clean up after itself (the spawner stops its workers); SIGKILL does not.
        ``None`` where the platform has no such signal (macOS)."""
        parent = os.getpid()

        def preexec() -> None:  # runs in the child between fork and exec: keep it tiny
            _libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

        return preexec

else:  # pragma: no cover - macOS dev machines: no parent-death signal

    def die_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None] | None:
        return None
