"""Run the spawner under uvicorn (``rexec spawner`` calls ``serve(SpawnerSettings())``).

SIGTERM / SIGINT: uvicorn stops accepting requests and runs the app's shutdown, which stops
every worker (SIGTERM, then SIGKILL) before the process exits when the backend says so
(local: `rexec up`'s Ctrl-C; Kubernetes keeps them for the next spawner).  Should the
spawner be killed outright, its workers live on and the next spawner adopts them.
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from broker.guard import make_undumpable
from rexec_magic import logs
from rexec_magic.contract import Env
from spawner.app import create_app
from spawner.config import SpawnerSettings


def serve(settings: SpawnerSettings | None = None) -> None:
    """Serve the spawner on ``settings.host:settings.spawner_port`` until SIGTERM/SIGINT."""
    settings = settings or SpawnerSettings()
    logs.configure(log_file=settings.log_file)
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


def main(argv: list[str] | None = None) -> int:
    """run the spawner (settings from REXEC_* variables)"""
    argparse.ArgumentParser(
        prog="rexec spawner", description="Run the rexec spawner; settings from REXEC_* variables."
    ).parse_args(argv)
    # Secrets come as 0600 files from $REXEC_SECRETS_DIR (written by `rexec up`), not from an
    # environment anyone of our OS user can read.
    serve(SpawnerSettings(_secrets_dir=os.environ.get(Env.SECRETS_DIR) or None))
    return 0
