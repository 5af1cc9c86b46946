"""Client for the broker's control port (admin status and shutdown), used by the spawner and CLI."""

from __future__ import annotations

from typing import Any

import zmq

from rexec_magic import protocol as P


class BrokerControlError(RuntimeError):
    """The control port did not answer or refused the request."""


def control_request(
    url: str,
    admin_secret: str,
    kind: str,
    timeout_s: float = 2.0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Send one admin request (``extra``: its other header fields); wait (bounded) for it."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(url)
        sock.send_multipart(P.encode(kind, {**(extra or {}), "secret": admin_secret}))
        if not sock.poll(int(timeout_s * 1000)):
            raise BrokerControlError(f"the broker control port did not answer within {timeout_s}s")
        msg = P.decode(sock.recv_multipart())
    finally:
        sock.close()
    if msg.kind == P.Kind.FAIL:
        try:
            why = msg.read(P.Fail).message or "refused"
        except P.ProtocolError:
            why = "refused"
        raise BrokerControlError(why)
    return msg.header


def broker_status(url: str, admin_secret: str, timeout_s: float = 2.0) -> dict[str, Any]:
    """``{"users": n, "workers": {user: info}, "counters": {...}}``."""
    return control_request(url, admin_secret, P.Kind.STATUS, timeout_s)


def claim_pool_worker(
    url: str, admin_secret: str, pool_id: str, user: str, nonce: str, worker_secret: str
) -> None:
    """Hand the warm-pool worker ``pool_id`` to ``user`` (raises BrokerControlError if gone)."""
    control_request(
        url,
        admin_secret,
        P.Kind.CLAIM,
        extra={"pool": pool_id, "user": user, "nonce": nonce, "worker_secret": worker_secret},
    )
