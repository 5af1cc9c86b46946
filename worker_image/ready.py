"""Container readiness: ``python -m worker_image.ready`` exits 0 while the worker is heard.

The worker touches ``REXEC_WORKER_ALIVE_FILE`` each time the broker acknowledges its
heartbeat (``link.BrokerLink``), so a fresh file means "registered and talking to the broker",
which is what ready means for a worker.  Used by the pod's readinessProbe and the image's
HEALTHCHECK.
"""

from __future__ import annotations

import os
import sys
import time

from rexec_magic.contract import Env

FRESH_S = 10.0


def is_ready(path: str | None, now: float | None = None) -> bool:
    if not path:
        return False
    try:
        age = (time.time() if now is None else now) - os.stat(path).st_mtime
    except OSError:
        return False
    return age <= FRESH_S


if __name__ == "__main__":
    sys.exit(0 if is_ready(os.environ.get(Env.WORKER_ALIVE_FILE)) else 1)
