"""The real worker (``python -m worker_image.worker``) with one addition: SIGUSR1 ends its
process at once with exit code ``EXIT_CODE``, as a supervisor that crashed with an exit code
of its own would end (no signal sent from outside gives a process an exit code).  A test runs
it as the spawner's worker module (``REXEC_WORKER_MODULE=tests.worker_that_exits``)."""

from __future__ import annotations

import os
import signal
import sys

from worker_image.worker import main

EXIT_CODE = 3

if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, lambda *_: os._exit(EXIT_CODE))
    sys.exit(main())
