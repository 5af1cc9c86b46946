"""Where the client side logs: one file per user, so an internal error can point at it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir


def log_path() -> Path:
    env = os.environ.get("REXEC_CLIENT_LOG")
    return Path(env) if env else Path(jupyter_runtime_dir()) / "rexec-magic.log"


def setup_logging() -> None:
    """Send rexec's client loggers to the log file (once); nothing goes to the notebook."""
    logger = logging.getLogger("rexec")
    if any(getattr(h, "_rexec", False) for h in logger.handlers):
        return
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path)
    except OSError:
        handler = logging.NullHandler()
    handler._rexec = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
