"""The frame codec and header models of rexec_magic.protocol, alone: no broker, no worker.

Pure and fast: every kind round-trips plain and routed, and each way a message can be
malformed (too few frames, wrong marker, unreadable kind, non-JSON, non-object, wrong field
types, over-long fields) raises ProtocolError, whose text never quotes the bad value.
"""

from __future__ import annotations

import json

import pytest
import zmq

from rexec_magic import protocol as P

pytestmark = pytest.mark.unit

REQ = "0123456789ab-0"
VERSIONS = {"python": "3.12.3", "dill": "0.3.9"}
VAR = {"name": "x", "nbuffers": 1, "nbytes": 10}
PLACEMENT = {"session": "5e55" * 8, "namespace": "team", "notebook": "a.ipynb", "keepalive_s": 10.0}

# One well-formed header per kind, as its sender builds it today (buffers: how many follow).
SAMPLES: dict[str, tuple[dict, int]] = {
    P.Kind.HELLO: ({"token": "tok", "client": VERSIONS}, 0),
    P.Kind.PING: ({"t": 12.5}, 0),
    P.Kind.EXECUTE: (
        {
            "id": REQ,
            "code": "y = x + 1",
            "vars": [VAR],
            "pull": ["y"],
            "pull_limit": 2**28,
            "client": VERSIONS,
            "have": ["df"],
            "watch": ["x", "y", "df"],
            "pull_changed": True,
            "result": False,
            "cell": 7,
            "credit": 256,
            **PLACEMENT,
            "instance": "9f" * 16,
        },
        1,
    ),
    P.Kind.CALL: (
        {
            "id": REQ,
            "vars": [
                {"name": "fn", "nbuffers": 1},
                {"name": "args", "nbuffers": 2},
                {"name": "globals", "nbuffers": 1},
            ],
            "have": ["OFFSET"],
            "watch": ["OFFSET", "lst"],
            "pull_limit": 2**28,
            "credit": 256,
            **PLACEMENT,
        },
        4,
    ),
    P.Kind.INTERRUPT: ({"id": REQ}, 0),
    P.Kind.INSPECT: ({"id": REQ, **PLACEMENT}, 0),
    P.Kind.ACK: ({"id": REQ, "n": 64}, 0),
    P.Kind.NEXT: ({"id": REQ, "throw": True, "nbuffers": 1}, 1),
    P.Kind.KEEPALIVE: ({"id": REQ, **PLACEMENT}, 0),
    P.Kind.PUT_OPEN: ({"id": REQ, "path": "data", "name": "x.csv", "dir": False}, 0),
    P.Kind.PUT_FILE: ({"id": REQ, "rel": "a/b.txt", "size": 3, "mode": 0o644, "dir": False}, 0),
    P.Kind.PUT_CHUNK: ({"id": REQ}, 1),
    P.Kind.PUT_CLOSE: ({"id": REQ}, 0),
    P.Kind.GET_OPEN: ({"id": REQ, "path": "results/"}, 0),
    P.Kind.FILE_ACK: ({"id": REQ, "received": 1 << 20}, 0),
    P.Kind.FILE_CANCEL: ({"id": REQ}, 0),
    P.Kind.COMPLETE: ({"id": REQ, "code": "df.co", "cursor_pos": 5, **PLACEMENT}, 0),
    P.Kind.INTROSPECT: ({"id": REQ, "name": "df.groupby", "detail_level": 1, **PLACEMENT}, 0),
    P.Kind.WELCOME: (
        {
            "user": "u-1",
            "username": "alice",
            "worker": None,
            "session_key": "ab" * 32,
            "max_header_bytes": 65536,
            "uploads": True,
        },
        0,
    ),
    P.Kind.DENIED: ({"message": "The token has expired."}, 0),
    P.Kind.PONG: ({"t": 1.5, "worker": {"pid": 3, "busy": True}, "pending": [REQ]}, 0),
    P.Kind.FAIL: ({"id": None, "code": P.FailCode.NO_WORKER, "message": "No worker."}, 0),
    P.Kind.ACCEPTED: ({"id": REQ}, 0),
    P.Kind.STREAM: ({"id": REQ, "seq": 0, "name": "stderr", "text": "é\n"}, 0),
    P.Kind.DISPLAY: (
        {"id": REQ, "seq": 1, "data": {"text/plain": "1"}, "metadata": {}, "transient": {}},
        0,
    ),
    P.Kind.RESULT: (
        {"id": REQ, "seq": 2, "data": {"text/plain": "2"}, "metadata": {}, "execution_count": 4},
        0,
    ),
    P.Kind.ERROR: (
        {"id": REQ, "seq": 3, "ename": "ValueError", "evalue": "no", "traceback": ["a", "b"]},
        0,
    ),
    P.Kind.YIELD: ({"id": REQ, "seq": 4, "nbuffers": 1}, 1),
    P.Kind.DONE: (
        {
            "id": REQ,
            "seq": 5,
            "status": P.DoneStatus.OK,
            "vars": [
                {
                    **VAR,
                    "digest": "ab" * 16,
                    "reads": ["OFFSET"],
                    "type": "DataFrame",
                    "module": "pandas.core.frame",
                }
            ],
            "skipped": [
                {"name": "big", "reason": "too large", "type": "ndarray", "module": "numpy"}
            ],
            "duration": 0.25,
            "execution_count": 4,
            "changed": ["x", "big"],
            "deleted": ["old"],
            "result_name": "x",
            "unloaded": [{"name": "bar", "reason": "could not be loaded on the worker"}],
            "exit": False,
        },
        1,
    ),
    P.Kind.INSPECT_REPLY: (
        {"id": REQ, "worker": {"pid": 1}, "variables": [], "executors": [{"state": "idle"}]},
        0,
    ),
    P.Kind.NOTICE: ({"id": REQ, "seq": 6, "text": "waiting for this notebook's previous cell"}, 0),
    P.Kind.FILE_META: (
        {"id": REQ, "rel": "", "size": 3, "mode": 0o755, "dir": True, "total": 10},
        0,
    ),
    P.Kind.FILE_CHUNK: ({"id": REQ}, 1),
    P.Kind.FILE_DONE: ({"id": REQ, "path": "/w/x.csv", "files": 1, "bytes": 3}, 0),
    P.Kind.FILE_ERROR: ({"id": REQ, "message": "The disk is full on the worker."}, 0),
    P.Kind.COMPLETE_REPLY: (
        {"id": REQ, "matches": ["df.copy", "df.count"], "cursor_start": 3, "cursor_end": 5},
        0,
    ),
    P.Kind.INTROSPECT_REPLY: ({"id": REQ, "found": True, "data": {"text/plain": "doc"}}, 0),
    P.Kind.UPLOAD: ({"id": REQ}, 2),
    P.Kind.UPLOADED: ({"id": REQ, "set": "u" + "ab" * 16}, 0),
    P.Kind.REGISTER: (
        {
            "user": "u-1",
            "nonce": "n",
            "secret": "f" * 64,
            **VERSIONS,
            "pid": 7,
            "instance": "9f" * 16,
            "pool": True,
        },
        0,
    ),
    P.Kind.HEARTBEAT: ({"busy": False, "executors": [{"notebook": "a.ipynb", "pid": 9}]}, 0),
    P.Kind.REGISTERED: ({"key": "cd" * 32}, 0),
    P.Kind.REJECTED: ({"message": "bad worker secret"}, 0),
    P.Kind.ASSIGN: ({"user": "u-1", "nonce": "n", "secret": "f" * 64}, 0),
    P.Kind.CLIENT_CLOSED: ({"handle": "ab" * 16}, 0),
    P.Kind.STATUS: ({"secret": "admin"}, 0),
    P.Kind.SHUTDOWN: ({"secret": "admin"}, 0),
    P.Kind.CLAIM: (
        {"secret": "admin", "pool": "p1", "user": "u-1", "nonce": "n", "worker_secret": "f" * 64},
        0,
    ),
}


def all_kinds() -> list[str]:
    return sorted(v for k, v in vars(P.Kind).items() if k.isupper())


def test_every_kind_with_fields_has_a_model_and_a_sample():
    assert set(SAMPLES) == set(P.HEADERS)
    assert set(P.HEADERS) <= set(all_kinds())


@pytest.mark.parametrize("route", [None, b"", b"\x00client-route"])
@pytest.mark.parametrize("kind", all_kinds())
def test_every_kind_round_trips_plain_and_routed(kind, route):
    header, nbuffers = SAMPLES.get(kind, ({}, 0))
    buffers = [bytes([i]) * 3 for i in range(nbuffers)]
    frames = P.encode(kind, header, buffers, route=route)
    assert len(frames) == 3 + nbuffers + (route is not None)
    msg = P.decode(frames, routed=route is not None)
    assert (msg.kind, msg.header, msg.buffers, msg.route) == (kind, header, buffers, route)
    assert msg.to_frames() == frames
    if kind in P.HEADERS:  # what the receiver reads agrees with what was sent
        fields = msg.read(P.HEADERS[kind])
        for name, value in header.items():
            if name in type(fields).model_fields and not isinstance(value, list | dict):
                assert getattr(fields, name) == value


def test_zmq_frames_decode_like_bytes():
    frames = P.encode(P.Kind.STREAM, SAMPLES[P.Kind.STREAM][0], route=b"r")
    msg = P.decode([zmq.Frame(f) for f in frames], routed=True)
    assert msg.route == b"r"
    assert msg.read(P.Stream).text == "é\n"


def test_wire_bytes_are_compact_json_as_before():
    """Legacy clients and older workers read these bytes: the header stays plain JSON."""
    header = {"id": REQ, "code": "x = 1", "vars": []}
    frames = P.encode(P.Kind.EXECUTE, header, route=b"r")
    assert frames[:3] == [b"r", b"RX1", b"execute"]
    assert frames[3] == json.dumps(header, separators=(",", ":")).encode()
    assert P.encode(P.Kind.GOODBYE) == [b"RX1", b"goodbye", b"{}"]


def test_an_encoded_header_is_sent_as_given():
    assert P.encode(P.Kind.STREAM, b'{"id":"a"}')[2] == b'{"id":"a"}'


def test_peek_reads_route_and_kind_without_the_header():
    assert P.peek([b"r", b"RX1", b"done", b"{not json"], routed=True) == (b"r", "done")


def test_split_hands_over_the_header_bytes_unparsed():
    raw = P.split([b"r", b"RX1", b"done", b"{not json", b"buf"], routed=True)
    assert (raw.route, raw.kind, raw.header, raw.buffers) == (b"r", "done", b"{not json", [b"buf"])
    with pytest.raises(P.ProtocolError):
        raw.message()
    frames = P.encode(P.Kind.STREAM, SAMPLES[P.Kind.STREAM][0])
    assert P.split([zmq.Frame(f) for f in frames]).message().read(P.Stream).text == "é\n"


MALFORMED = {
    "no frames": [],
    "too few frames": [b"RX1", b"execute"],
    "wrong marker": [b"RX2", b"execute", b"{}"],
    "legacy marker": [b"", b"tok", b"fn", b"args"],
    "unreadable kind": [b"RX1", b"\xff\xfe", b"{}"],
    "not JSON": [b"RX1", b"execute", b"{not json"],
    "not UTF-8": [b"RX1", b"execute", b"\xff{}"],
    "a JSON list": [b"RX1", b"execute", b"[1, 2]"],
    "a JSON string": [b"RX1", b"execute", b'"id"'],
    "nested too deeply": [b"RX1", b"execute", b"[" * 100_000 + b"]" * 100_000],
}


@pytest.mark.parametrize("frames", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_frames_raise_protocol_error(frames):
    with pytest.raises(P.ProtocolError):
        P.decode(frames)
    with pytest.raises(P.ProtocolError):
        P.decode([b"route", *frames], routed=True)


def test_a_routed_message_without_its_route_is_malformed():
    with pytest.raises(P.ProtocolError):
        P.decode([b"RX1", b"execute", b"{}"], routed=True)


LONG = "x" * (P.SHORT_MAX + 1)
BAD_HEADERS = [
    (P.Execute, {"code": "1"}, 0),  # no id
    (P.Execute, {"id": "", "code": "1"}, 0),  # empty id
    (P.Execute, {"id": LONG, "code": "1"}, 0),  # over-long id
    (P.Execute, {"id": 7, "code": "1"}, 0),  # an int is not a string id
    (P.Execute, {"id": REQ, "code": 42}, 0),
    (P.Execute, {"id": REQ, "code": "1", "vars": "x"}, 0),
    (P.Execute, {"id": REQ, "code": "1", "vars": [{"name": "x"}]}, 1),
    (P.Execute, {"id": REQ, "code": "1", "vars": [{"name": "x", "nbuffers": 0}]}, 0),
    (P.Execute, {"id": REQ, "code": "1", "vars": [{"name": "x", "nbuffers": "1"}]}, 1),
    (P.Execute, {"id": REQ, "code": "1", "vars": [VAR]}, 2),  # buffers do not match
    (P.Execute, {"id": REQ, "code": "1", "pull": "y"}, 0),
    (P.Execute, {"id": REQ, "code": "1", "pull": [LONG]}, 0),
    (P.Execute, {"id": REQ, "code": "1", "pull_limit": -1}, 0),
    (P.Execute, {"id": REQ, "code": "1", "pull_limit": True}, 0),
    (P.Execute, {"id": REQ, "code": "1", "pull_limit": 1.5}, 0),
    (P.Execute, {"id": REQ, "code": "1", "client": "3.12"}, 0),
    (P.Execute, {"id": REQ, "code": "1", "client": {"python": LONG}}, 0),
    (P.Call, {"id": REQ, "vars": [{"name": "args", "nbuffers": 1}]}, 1),  # no fn
    (
        P.Call,
        {"id": REQ, "vars": [{"name": "fn", "nbuffers": 1}, {"name": "os", "nbuffers": 1}]},
        2,
    ),
    (P.Call, {"id": REQ, "vars": [{"name": "fn", "nbuffers": 1}], "inband": "yes"}, 1),
    (P.Interrupt, {"id": None}, 0),
    (P.Execute, {"id": REQ, "code": "1", "credit": 0}, 0),
    (P.Execute, {"id": REQ, "code": "1", "credit": P.MAX_CREDIT + 1}, 0),
    (P.Execute, {"id": REQ, "code": "1", "session": LONG}, 0),
    (P.Execute, {"id": REQ, "code": "1", "keepalive_s": 0.0}, 0),
    (P.Call, {"id": REQ, "vars": [{"name": "fn", "nbuffers": 1}], "namespace": 3}, 1),
    (P.Ack, {"id": REQ}, 0),  # no count
    (P.Ack, {"id": REQ, "n": -1}, 0),
    (P.Keepalive, {"session": "s"}, 0),  # no id: the broker could not route it
    (P.Heartbeat, {"busy": False, "executors": ["row"]}, 0),
    (P.Hello, {"token": 5}, 0),
    (P.Hello, {"token": "t" * (P.TOKEN_MAX + 1)}, 0),
    (P.Ping, {"t": "now"}, 0),
    (P.Register, {"user": 1, "nonce": "n", "secret": "s"}, 0),
    (P.Register, {"user": LONG, "nonce": "n", "secret": "s"}, 0),
    (P.Register, {"user": "u", "nonce": LONG, "secret": "s"}, 0),
    (P.Register, {"user": "u", "nonce": "n", "secret": "s" * (P.SECRET_MAX + 1)}, 0),
    (P.Register, {"user": "u", "nonce": "n", "secret": "s", "python": LONG}, 0),
    (P.Register, {"user": "u", "nonce": "n", "secret": "s", "pid": "7"}, 0),
    (P.Register, {"user": "u", "nonce": "n", "secret": "s", "pool": 1}, 0),
    (P.Heartbeat, {"busy": "no"}, 0),
    (P.Assign, {"user": "u", "nonce": "n"}, 0),
    (P.Admin, {"secret": ["admin"]}, 0),
    (P.Claim, {"secret": "a", "pool": "p", "user": "u", "nonce": "n"}, 0),
    (P.Welcome, {"user": None}, 0),
    (P.Pong, {"pending": "abc"}, 0),
    (P.Stream, {"id": REQ, "text": None}, 0),
    (P.Display, {"id": REQ, "data": "text"}, 0),
    (P.Error, {"id": REQ, "traceback": "one string"}, 0),
    (P.Done, {"id": REQ, "seq": 1}, 0),  # no status
    (P.Done, {"id": REQ, "status": "ok", "duration": "1s"}, 0),
    (P.Done, {"id": REQ, "status": "ok", "vars": [VAR]}, 0),  # the value's buffers are missing
    (P.Execute, {"id": REQ, "code": "1", "have": "df"}, 0),
    (P.Execute, {"id": REQ, "code": "1", "watch": [1]}, 0),
    (P.Execute, {"id": REQ, "code": "1", "pull_changed": 1}, 0),
    (P.Execute, {"id": REQ, "code": "1", "cell": "3"}, 0),
    (P.Call, {"id": REQ, "vars": [{"name": "fn", "nbuffers": 1}], "pull_limit": -1}, 1),
    (P.Done, {"id": REQ, "status": "ok", "changed": "x"}, 0),
    (P.Done, {"id": REQ, "status": "ok", "unloaded": ["x"]}, 0),
    (P.Done, {"id": REQ, "status": "ok", "vars": [{**VAR, "reads": "x"}]}, 1),
    (P.Done, {"id": REQ, "status": "ok", "vars": [{**VAR, "type": LONG}]}, 1),
    (P.Done, {"id": REQ, "status": "ok", "vars": [{**VAR, "module": 3}]}, 1),
    (P.Execute, {"id": REQ, "code": "1", "instance": LONG}, 0),
    (P.Register, {"user": "u", "nonce": "n", "secret": "s", "instance": 5}, 0),
    (P.PutOpen, {"id": REQ, "path": "p" * (P.PATH_MAX + 1)}, 0),
    (P.PutOpen, {"id": REQ, "dir": "no"}, 0),
    (P.PutFile, {"id": REQ, "size": -1}, 0),
    (P.PutFile, {"id": REQ, "mode": "0644"}, 0),
    (P.GetOpen, {"id": REQ}, 0),  # no path
    (P.FileAck, {"id": REQ, "received": "1"}, 0),
    (P.FileAck, {"received": 1}, 0),  # no id
    (P.Complete, {"id": REQ, "code": "x", "cursor_pos": -1}, 0),
    (P.Introspect, {"id": REQ, "name": "x", "detail_level": True}, 0),
    (P.FileMeta, {"id": REQ, "size": 1.5}, 0),
    (P.FileDone, {"id": REQ, "files": None}, 0),
    (P.CompleteReply, {"id": REQ, "matches": "df.copy"}, 0),
    (P.IntrospectReply, {"id": REQ, "data": ["text"]}, 0),
]


@pytest.mark.parametrize(
    ("model", "header", "nbuffers"),
    BAD_HEADERS,
    ids=[f"{m.__name__}-{i}" for i, (m, _, _) in enumerate(BAD_HEADERS)],
)
def test_headers_that_do_not_fit_raise_protocol_error(model, header, nbuffers):
    msg = P.Message("kind", header, [b"b"] * nbuffers)
    with pytest.raises(P.ProtocolError, match=f"bad {model.__name__} header"):
        msg.read(model)


def test_the_reason_names_the_field_but_never_its_value():
    secret = "s3cr3t-" + "9" * P.SECRET_MAX
    with pytest.raises(P.ProtocolError) as caught:
        P.Register.read({"user": "u", "nonce": "n", "secret": secret})
    assert "secret" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    assert len(str(caught.value)) < 200


def test_unknown_fields_are_ignored_and_defaults_fill_in():
    """A newer sender may add fields; an older one may leave optional ones out."""
    ex = P.Execute.read({"id": REQ, "code": "1", "vars": None, "pull": None, "future": [1]})
    assert (ex.vars, ex.pull, ex.pull_limit, ex.client) == ([], [], None, None)
    assert P.Heartbeat.read({}).busy is False
    assert P.Register.read({"user": "u", "nonce": "n", "secret": "s"}).pool is False
    assert P.Ping.read({"t": 3}).t == 3.0  # a JSON integer is a number too


def test_the_namespace_sync_fields_are_read_not_dropped():
    """The sync fields (rexec_magic/sync.py) must be declared: models drop unknown fields."""
    header, _ = SAMPLES[P.Kind.EXECUTE]
    ex = P.Execute.read(header)
    assert (ex.have, ex.watch, ex.pull_changed, ex.result, ex.cell) == (
        ["df"],
        ["x", "y", "df"],
        True,
        False,
        7,
    )
    call = P.Call.read(SAMPLES[P.Kind.CALL][0])
    assert (call.have, call.watch, call.pull_limit) == (["OFFSET"], ["OFFSET", "lst"], 2**28)
    done = P.Done.read(SAMPLES[P.Kind.DONE][0])
    assert (done.vars[0].digest, done.vars[0].reads) == ("ab" * 16, ["OFFSET"])
    assert (done.changed, done.deleted, done.result_name) == (["x", "big"], ["old"], "x")
    assert [(u.name, u.reason) for u in done.unloaded] == [
        ("bar", "could not be loaded on the worker")
    ]
    resend = P.Done.read({"id": REQ, "status": P.DoneStatus.RESEND, "missing": ["df"]})
    assert resend.missing == ["df"]
    bare = P.Execute.read({"id": REQ, "code": "1"})  # an older client sends none of them
    assert (bare.have, bare.watch, bare.pull_changed, bare.result, bare.cell) == (
        [],
        [],
        False,
        False,
        None,
    )


def test_the_buffer_count_is_only_checked_when_known():
    header = {"id": REQ, "code": "1", "vars": [VAR]}
    assert P.Execute.read(header).vars[0].name == "x"
    with pytest.raises(P.ProtocolError, match="announce 1 buffers but 0 came"):
        P.Execute.read(header, nbuffers=0)
