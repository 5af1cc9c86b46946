"""Run the spawner under uvicorn (``rexec spawner`` calls ``serve(SpawnerSettings())``).

SIGTERM / SIGINT: uvicorn stops accepting requests and runs the app's shutdown, which stops
every worker (SIGTERM, then SIGKILL) before the process exits.  Should the spawner be killed
outright, its workers still die: the local backend gives them a parent-death signal.
"""

from __future__ import annotations

import argparse

import uvicorn

from rexec_magic import logs
from spawner.app import create_app
from spawner.config import SpawnerSettings


def serve(settings: SpawnerSettings | None = None) -> None:
    """Serve the spawner on ``settings.host:settings.spawner_port`` until SIGTERM/SIGINT."""
    settings = settings or SpawnerSettings()
    logs.configure(log_file=settings.log_file)
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


def main(argv: list[str] | None = None) -> int:
    """run the spawner (settings from REXEC_* variables)"""
    argparse.ArgumentParser(
        prog="rexec spawner", description="Run the rexec spawner; settings from REXEC_* variables."
    ).parse_args(argv)
    serve(SpawnerSettings())
    return 0
