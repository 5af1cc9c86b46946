"""Which routing ids belong to a connection that closed: sessions end with their connection.

ZMQ_ROUTER_NOTIFY would say so directly, but it is a DRAFT option that the libzmq pyzmq ships
(4.3.5, no draft API) refuses.  The stable way: every message carries the file descriptor of
the connection it came on (``zmq_msg_get(ZMQ_SRCFD)``), and a socket monitor reports
``EVENT_DISCONNECTED`` with that descriptor.  The broker drains the monitor *after* receiving a
message and *before* handling it: libzmq emits DISCONNECTED before it closes the descriptor,
so a new connection that reuses the number can only deliver messages after that event is
readable, and no live session is ever ended for another connection's close.

libzmq's I/O thread writes monitor events with a *blocking* send.  A monitor pipe that is
full (at the default high-water marks, 1,000 events at each end, while the broker is busy) or
that lost its reader (the broker closed its end first, at shutdown) therefore blocks that
thread for good, and with it every socket of the context: nothing connects or moves again,
in silence.  So the reading
end has no high-water mark (an event is a few dozen bytes, and the broker drains them on every
turn of its loop), and ``close`` stops the monitor before it closes the reading end.  pyzmq's
``get_monitor_socket`` can do neither, and names the endpoint after the socket's descriptor,
which a later socket may reuse while the old endpoint is still being torn down.
"""

from __future__ import annotations

import itertools
import os

import zmq
from zmq.utils.monitor import recv_monitor_message

from rexec_magic import zmqio

_inproc_numbers = itertools.count()


def inproc_address(purpose: str) -> str:
    """An ``inproc://`` endpoint name no other socket of this process has used.

    libzmq frees a closed socket's endpoint names later, in its reaper thread, so a name that
    a new socket may share with a just-closed one (one made from ``id()`` or a descriptor)
    can be refused as in use.
    """
    return f"inproc://rexec-{purpose}-{os.getpid()}-{next(_inproc_numbers)}"


class ConnectionWatch:
    """Routing ids by connection descriptor for one ROUTER socket, and their closing."""

    def __init__(self, sock: zmq.Socket) -> None:
        address = inproc_address("connections")
        sock.monitor(address, zmq.EVENT_DISCONNECTED)
        self._watched = sock
        self.monitor = sock.context.socket(zmq.PAIR)
        self.monitor.rcvhwm = 0  # no limit: a full monitor pipe blocks libzmq's I/O thread
        self.monitor.linger = 0
        self.monitor.connect(address)
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
        while self.monitor.get(zmqio.EVENTS) & zmqio.POLLIN:
            event = recv_monitor_message(self.monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                gone.extend(self.routes.pop(int(event["value"]), ()))
        return gone

    def close(self) -> None:
        """Stop the monitor, then close its reading end (never the other way round)."""
        if not self._watched.closed:
            self._watched.disable_monitor()
        self.monitor.close(linger=0)
