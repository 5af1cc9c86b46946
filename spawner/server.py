"""Run the spawner under uvicorn (``rexec spawner`` calls ``serve(SpawnerSettings())``).

SIGTERM / SIGINT: uvicorn stops accepting requests and runs the app's shutdown, which stops
every worker (SIGTERM, then SIGKILL) before the process exits when the backend says so
(local: `rexec up`'s Ctrl-C; Kubernetes keeps them for the next spawner).  Should the
spawner be killed outright, its workers live on and the next spawner adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import uvicorn

from broker.guard import make_undumpable
from rexec_magic import logs
from rexec_magic.contract import Env
from spawner.app import create_app
from spawner.config import SpawnerSettings


class QuietStatusPolls(logging.Filter):
    """Keeps answered ``GET /status`` requests out of the access log.

    An open JupyterLab sidebar long-polls through its server, which asks the spawner about
    four times a second: 2,971 of 3,000 log lines in 17 minutes were those, burying the lines
    that matter.  A failed status request (4xx, 5xx) is still logged, and so is every other
    request.  uvicorn's access record carries (client, method, path, HTTP version, status).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5:
            return True
        _client, method, path, _version, code = args
        polled = method == "GET" and str(path).split("?", 1)[0] == "/status"
        return not (polled and isinstance(code, int) and 200 <= code < 400)


def serve(settings: SpawnerSettings | None = None) -> None:
    """Serve the spawner on ``settings.host:settings.spawner_port`` until SIGTERM/SIGINT."""
    settings = settings or SpawnerSettings()
    logs.configure(log_file=settings.log_file, rotate=True)
    logging.getLogger("uvicorn.access").addFilter(QuietStatusPolls())
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


def remove_workers(settings: SpawnerSettings) -> int:
    """Delete this installation's worker pods and Secrets (Kubernetes), say how many; 1 with
    one sentence on stderr when the API refuses."""
    from spawner.backends.kubernetes import KubernetesBackend
    from spawner.errors import SpawnerError

    logs.configure(log_file=settings.log_file, rotate=True)
    if settings.backend != "kubernetes":
        print("rexec spawner --remove-workers is for the kubernetes backend.", file=sys.stderr)
        return 2
    try:
        removed = asyncio.run(KubernetesBackend(settings).remove_all_workers())
    except SpawnerError as exc:
        print(f"Could not remove the workers: {exc.message}", file=sys.stderr)
        return 1
    print(f"Removed {len(removed)} worker pod(s) and their Secrets: {', '.join(removed) or '-'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """run the spawner (settings from REXEC_* variables)"""
    parser = argparse.ArgumentParser(
        prog="rexec spawner", description="Run the rexec spawner; settings from REXEC_* variables."
    )
    parser.add_argument(
        "--remove-workers",
        action="store_true",
        help="delete every worker pod and Secret of this installation, then exit "
        "(the Helm chart's post-delete hook)",
    )
    args = parser.parse_args(argv)
    # Secrets come as 0600 files from $REXEC_SECRETS_DIR (written by `rexec up`), not from an
    # environment anyone of our OS user can read.
    settings = SpawnerSettings(_secrets_dir=os.environ.get(Env.SECRETS_DIR) or None)
    if args.remove_workers:
        return remove_workers(settings)
    serve(settings)
    return 0
