"""The client's keepalives, against a ROUTER playing the broker over loopback.

The stand-in speaks the wire protocol with ``rexec_magic.protocol`` as the real broker does
(HELLO answered by WELCOME) and records what the client sends: what these tests check is
what leaves the notebook and when, which the real broker does not show.
"""

from __future__ import annotations

import zmq

from rexec_magic import protocol as P
from rexec_magic.connection import ConnectionInfo
from rexec_magic.contract import Env
from rexec_magic.session import RemoteSession

KEY = b"k" * P.SESSION_KEY_BYTES
WAIT_MS = 20_000


def test_a_first_rexec_attach_tells_the_namespace_at_once(monkeypatch):
    """A notebook whose first remote action is ``%rexec_attach team`` is one of that shared
    namespace's notebooks from then on (it hears if the namespace is lost before a cell of
    it ran there), so the attach sends a keepalive naming it at once.  No request of the
    notebook had started the keepalive, so it said nothing until its first cell."""
    monkeypatch.setenv(Env.KEEPALIVE_S, "3600")  # only the attach can make it beat now
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    info = ConnectionInfo("http://127.0.0.1:9", broker_url=f"tcp://127.0.0.1:{port}", token="t")
    session = RemoteSession(info)
    try:
        session.attach("team")
        kinds = []
        while True:
            assert router.poll(WAIT_MS), f"the attach sent no keepalive (only {kinds})"
            route, *frames = router.recv_multipart()
            _mac, msg = P.decode_signed(frames)
            kinds.append(msg.kind)
            if msg.kind == P.Kind.HELLO:
                welcome = {"user": "alice", "session_key": KEY.hex()}
                router.send_multipart([route, *P.encode(P.Kind.WELCOME, welcome)])
            elif msg.kind == P.Kind.KEEPALIVE:
                break
        assert msg.header["namespace"] == "team"
        assert msg.header["session"] == session.session_id
    finally:
        session.forget()
        router.close()
        ctx.term()
