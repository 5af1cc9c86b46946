"""Logging set-up, one for every rexec process: one format, one place.

* Servers (broker, spawner) log to their ``REXEC_LOG_FILE`` or stderr, on the root logger.
* The worker logs to the real stderr on its own logger, so that a cell's
  ``logging.basicConfig()`` still configures the root logger the way the user expects.
* The client side (kernel) logs to one file per user, so that an internal error can point at
  it; nothing goes to the notebook.
"""

from __future__ import annotations

import logging
import os
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TextIO

from jupyter_core.paths import jupyter_runtime_dir

from rexec_magic.contract import Env

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A server's log file (``rotate=True``) is rotated at this size, keeping this many old ones:
# what any token holder can make a service log (a line per connection: 41 KB/s from one
# connect-and-close loop, tester BW) cannot fill the disk.  (Only servers: one process
# writes each; the kernels of a user share one client log, which a rotation by one of
# them would pull from under the others.)
ROTATE_BYTES = 64 * 2**20
ROTATE_KEEP = 2
_MARK = "_rexec_handler"


def _level(name: str | None) -> int:
    level = logging.getLevelName((name or "INFO").upper())
    return level if isinstance(level, int) else logging.INFO


def configure(
    logger_name: str | None = None,
    *,
    log_file: str | Path | None = None,
    stream: TextIO | None = None,
    level: str | None = None,
    propagate: bool = True,
    rotate: bool = False,
) -> logging.Logger:
    """Send ``logger_name`` (None: the root logger) to ``log_file``, else to ``stream``
    (default stderr), in the one rexec format.  Idempotent: a second call changes nothing.
    ``rotate``: ``log_file`` is a server's own, rotated at ``ROTATE_BYTES``.

    ``level`` is a level name (default ``$REXEC_LOG_LEVEL``, else INFO).  A log file that
    cannot be opened falls back to ``stream``; logging never stops a process from starting.
    """
    logger = logging.getLogger(logger_name)
    if any(getattr(h, _MARK, False) for h in logger.handlers):
        return logger
    handler: logging.Handler
    if log_file:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            if rotate:
                handler = RotatingFileHandler(
                    log_file, maxBytes=ROTATE_BYTES, backupCount=ROTATE_KEEP
                )
            else:
                handler = logging.FileHandler(log_file)
        except OSError:
            handler = logging.StreamHandler(stream or sys.stderr)
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _MARK, True)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
    logger.setLevel(_level(level or os.environ.get(Env.LOG_LEVEL)))
    logger.propagate = propagate
    return logger


# ---------------------------------------------------------------------------- client side
def log_path() -> Path:
    env = os.environ.get(Env.CLIENT_LOG)
    return Path(env) if env else Path(jupyter_runtime_dir()) / "rexec-magic.log"


def setup_logging() -> None:
    """The kernel side: rexec's loggers to the client log file, never to the notebook."""
    logger = logging.getLogger("rexec")
    if any(getattr(h, _MARK, False) for h in logger.handlers):
        return
    try:
        configure("rexec", log_file=log_path(), propagate=False)
    except OSError:  # pragma: no cover - configure already falls back
        logger.addHandler(logging.NullHandler())
    if not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
        # No writable log file: stay silent rather than print into the notebook.
        for h in list(logger.handlers):
            logger.removeHandler(h)
        null = logging.NullHandler()
        setattr(null, _MARK, True)
        logger.addHandler(null)
