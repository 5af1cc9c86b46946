"""Which routing ids belong to a connection that closed: sessions end with their connection.

ZMQ_ROUTER_NOTIFY would say so directly, but it is a DRAFT option that the libzmq pyzmq ships
(4.3.5, no draft API) refuses.  The stable way: every message carries the file descriptor of
the connection it came on (``zmq_msg_get(ZMQ_SRCFD)``), and a socket monitor reports
``EVENT_DISCONNECTED`` with that descriptor.  The broker drains the monitor *after* receiving a
message and *before* handling it: libzmq emits DISCONNECTED before it closes the descriptor,
so a new connection that reuses the number can only deliver messages after that event is
readable, and no live session is ever ended for another connection's close.
"""

from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message


class ConnectionWatch:
    """Routing ids by connection descriptor for one ROUTER socket, and their closing."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.routes: dict[int, set[bytes]] = {}

    @staticmethod
    def fd_of(frame: zmq.Frame) -> int:
        """The descriptor of the connection a received frame came on (-1: unknown)."""
        try:
            return frame.get(zmq.SRCFD)
        except zmq.ZMQError:
            return -1

    def bind(self, fd: int, route: bytes) -> None:
        """``route`` lives on connection ``fd`` (forgotten when it closes)."""
        if fd >= 0:
            self.routes.setdefault(fd, set()).add(route)

    def closed(self) -> list[bytes]:
        """Routing ids whose connection closed since the last call (cheap when none did)."""
        gone: list[bytes] = []
        while self.monitor.get(zmq.EVENTS) & zmq.POLLIN:
            event = recv_monitor_message(self.monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                gone.extend(self.routes.pop(int(event["value"]), ()))
        return gone

    def close(self) -> None:
        self.monitor.close(linger=0)
