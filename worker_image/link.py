"""What the worker's link to the broker needs besides the loop: who it registers as, exit
codes, and a JSON header encoder that never fails (user display data need not be JSON).

The loop itself is the supervisor's (``worker_image.supervisor``).
"""

from __future__ import annotations

import json
import logging
import uuid
from base64 import b64encode
from dataclasses import dataclass
from typing import Any

from rexec_magic import protocol
from rexec_magic.contract import ExitCode

log = logging.getLogger(__name__)

EXIT_OK = ExitCode.OK
EXIT_SOFTWARE = ExitCode.SOFTWARE
EXIT_CONFIG = ExitCode.CONFIG

# Random per worker (supervisor) process: the broker reports it, so a client can tell a
# restarted worker (a new namespace) from one that registered again; a pid cannot tell inside
# a container.  An executor that restarts is told to its notebook in-band (done restarting /
# lost) and answers ``resend`` for the names it lacks.
INSTANCE = uuid.uuid4().hex


@dataclass(frozen=True)
class Registration:
    user: str
    nonce: str
    secret: str
    broker_url: str
    # A warm-pool worker: ``user`` is its pool id; it waits for ASSIGN to learn its user.
    pool: bool = False

    def __repr__(self) -> str:  # never show the secret
        return f"Registration(user={self.user!r}, broker_url={self.broker_url!r}, pool={self.pool})"


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return b64encode(bytes(value)).decode("ascii")
    return repr(value)


def encode_header(header: dict[str, Any]) -> bytes:
    """protocol.encode_header that never fails: user display data need not be plain JSON."""
    try:
        return protocol.encode_header(header)
    except (TypeError, ValueError, RecursionError):
        pass
    try:  # bytes as base64 (as Jupyter does), anything else as its repr
        return json.dumps(header, separators=(",", ":"), default=_json_default).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        note = f"<output could not be encoded as JSON: {type(exc).__name__}: {exc}>"
        safe = {k: header[k] for k in ("id", "seq", "name", "execution_count") if k in header}
        if "data" in header:
            safe.update(data={"text/plain": note}, metadata={}, transient={})
        if "text" in header:
            safe["text"] = note
        return protocol.encode_header(safe)
