"""Run the spawner under uvicorn (``rexec spawner`` calls ``serve(SpawnerSettings())``).

SIGTERM / SIGINT: uvicorn stops accepting requests and runs the app's shutdown, which stops
every worker (SIGTERM, then SIGKILL) before the process exits.  Should the spawner be killed
outright, its workers still die: the local backend gives them a parent-death signal.
"""

from __future__ import annotations

import logging

import uvicorn

from broker.guard import make_undumpable
from spawner.app import create_app
from spawner.config import SpawnerSettings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(log_file: str | None) -> None:
    """Log to ``log_file`` (or stderr) unless the caller configured logging already."""
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def serve(settings: SpawnerSettings | None = None) -> None:
    """Serve the spawner on ``settings.host:settings.spawner_port`` until SIGTERM/SIGINT."""
    settings = settings or SpawnerSettings()
    configure_logging(settings.log_file)
    make_undumpable()  # workers run user code as our OS user: keep our memory from them
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.spawner_port,
        lifespan="on",
        log_config=None,  # keep the logging configured above
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT after a clean shutdown
        pass
    if not server.started:
        raise SystemExit(f"The spawner could not start on {settings.host}:{settings.spawner_port}.")


if __name__ == "__main__":  # pragma: no cover
    serve()
