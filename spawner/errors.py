"""Errors a user may read, kept apart from internal ones.

A ``SpawnerError`` carries one plain sentence and the HTTP status it maps to; the routes turn
it into ``{"detail": message}``.  Anything else that escapes is an internal error: the client
gets a fixed sentence and the traceback goes to the spawner log only.
"""

from __future__ import annotations


class SpawnerError(Exception):
    """An error meant for the user: ``message`` is one sentence, safe to show."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(SpawnerError):
    """The request asks for something that can never work (bad requirement, wrong Python)."""

    status_code = 422


class Conflict(SpawnerError):
    """The request clashes with the worker that runs now."""

    status_code = 409


class StartFailed(SpawnerError):
    """Preparing or starting the worker failed; the worker's state becomes ``failed``."""

    status_code = 500


class UpstreamError(SpawnerError):
    """Kubernetes (or another service the spawner needs) refused or failed the request."""

    status_code = 502


class UpstreamTimeout(SpawnerError):
    """Kubernetes (or another service the spawner needs) did not answer in time."""

    status_code = 504


INTERNAL_ERROR = "Internal spawner error; see the spawner log."
