"""The rexec spawner: a FastAPI service that starts, reports and stops each user's worker.

Layers, outermost first: ``app`` (FastAPI app, auth dependency, error mapping) ->
``routes`` (HTTP API) -> ``service`` (per-user worker state machine, supervision, readiness
through the broker's control port) -> ``backends`` (how a worker process or pod is actually
started and stopped).  ``server.serve`` runs it under uvicorn.
"""
