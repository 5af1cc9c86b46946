"""The broker's connection watch (``broker/connections.py``) on a real ROUTER over loopback.

libzmq's I/O thread writes monitor events with a blocking send, so a watch that cannot take an
event stops every socket of its context, silently.  Each test runs in a context of its own
(never terminated when the test fails, since terminating a wedged context never returns), so a
failure here cannot wedge the tests after it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq

from broker.connections import ConnectionWatch

WAIT_MS = 10_000


class Endpoint:
    """A ROUTER with a connection watch, and DEALERs to it, all in one private context."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.watch = ConnectionWatch(self.router)

    def dealer(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(f"tcp://127.0.0.1:{self.port}")
        return sock

    def arrive(self, sock: zmq.Socket, text: bytes) -> bytes:
        """``sock`` says ``text``; the ROUTER receives it, and the watch binds its route."""
        sock.send(text)
        assert self.router.poll(WAIT_MS), "the ROUTER received nothing: its context is stuck"
        route, frame = self.router.recv_multipart(copy=False)
        assert frame.bytes == text
        self.watch.bind(ConnectionWatch.fd_of(frame), route.bytes)
        return route.bytes

    def still_routes(self) -> bool:
        """A new connection still gets a message through (the I/O thread is not stuck)."""
        sock = self.dealer()
        try:
            sock.send(b"still there?")
            return bool(self.router.poll(WAIT_MS))
        finally:
            sock.close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.watch.close()
    e.router.close()
    # A stuck I/O thread would keep term() waiting for ever: never wait on it.
    threading.Thread(target=e.ctx.term, daemon=True).start()


def test_connections_closed_while_the_broker_is_busy_never_stop_its_sockets(endpoint):
    """Thousands of connections close while the broker reads none of the watch's events (a
    busy routing loop, or an attacker churning connections): every socket keeps moving, and
    the broker later learns of every closed connection's route, none missed."""
    routes: set[bytes] = set()
    for batch in range(25):  # 2,500 closes, beyond libzmq's default 2 x 1,000 monitor queue
        socks = [endpoint.dealer() for _ in range(100)]
        routes |= {endpoint.arrive(s, b"%d" % batch) for s in socks}
        for s in socks:
            s.close()
    assert endpoint.still_routes()
    gone: set[bytes] = set()
    while len(gone) < len(routes) and endpoint.watch.monitor.poll(WAIT_MS):
        gone.update(endpoint.watch.closed())
    assert gone == routes


def test_a_connection_that_closes_as_the_broker_shuts_down_stops_nothing(endpoint):
    """The broker closes its watch, then its sockets; a peer that hangs up in between (a
    client closing as the broker stops) leaves every other socket of the process working."""
    peer = endpoint.dealer()
    endpoint.arrive(peer, b"hello")
    endpoint.watch.close()
    peer.close()  # its disconnect reaches the ROUTER after the watch's reader is gone
    assert endpoint.still_routes()
