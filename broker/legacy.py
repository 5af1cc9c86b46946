"""SciDx Rexec's legacy frames, translated to and from rexec messages: the one place that does it.

The model system's clients (``rexec.client_api.remote_func``, ``ndp_ep``) open one DEALER per
call and send ``[b"", token, fn_dill, args_dill]``; a cancel is
``[b"", token, b"__REXEC_CANCEL__", b"keyboard_interrupt"]``.  Each reply is
``[b"", dill.dumps(event)]`` where ``event`` is a dict ``{"type": START|DATA|END|ERROR,
"sequence": n, "channel": stdout|stderr|return|yield, "data": ...}``; ``ERROR`` carries its text
in ``"message"`` (that is what ``ExecStream`` raises as ``RuntimeError``).

The broker uses this module in both directions: a legacy call becomes an ordinary ``CALL`` for
the user's worker (``inband``: values come back as one plain pickle each), and the worker's
events for that call become legacy replies.  The broker never unpickles anything a user sent
or a worker produced: a returned or yielded value's pickle is spliced, as it is, into the
reply dict's pickle (``_dict_pickle_with``), so a hostile pickle can never run in the broker.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rexec_magic import protocol as P

START, DATA, END, ERROR = "START", "DATA", "END", "ERROR"
CALL_VARS = [{"name": "fn", "nbuffers": 1}, {"name": "args", "nbuffers": 1}]


class LegacyFrameError(ValueError):
    """Frames that start like a legacy message but do not follow its layout."""


@dataclass
class LegacyRequest:
    """One legacy message: its token and either a call (fn and args pickles) or a cancel."""

    token: str
    cancel: bool
    fn: Any = None  # zmq Frame or bytes, forwarded undecoded
    args: Any = None


def _as_bytes(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes


def parse_request(frames: Sequence[Any]) -> LegacyRequest:
    """Read ``[b"", token, fn, args]`` or a cancel (``frames`` as the client sent them)."""
    if len(frames) != 4 or _as_bytes(frames[0]) != P.LEGACY:
        raise LegacyFrameError(f"a legacy message has 4 frames, got {len(frames)}")
    try:
        token = _as_bytes(frames[1]).decode("utf-8")
    except UnicodeDecodeError:
        raise LegacyFrameError("the token frame is not UTF-8") from None
    if _as_bytes(frames[2]) == P.LEGACY_CANCEL:
        return LegacyRequest(token, cancel=True)
    return LegacyRequest(token, cancel=False, fn=frames[2], args=frames[3])


def call_header(request_id: str) -> dict[str, Any]:
    """The CALL header for a legacy call: fn and args pickles, values back in band."""
    return {"id": request_id, "vars": CALL_VARS, "inband": True, "legacy": True}


# --------------------------------------------------------------------------- replies
def event(kind: str, sequence: int, channel: str | None = None, data: Any = None) -> bytes:
    """One legacy reply payload holding only plain data (text, None)."""
    body: dict[str, Any] = {"type": kind, "sequence": sequence}
    if channel is not None:
        body["channel"] = channel
        body["data"] = data
    return pickle.dumps(body, protocol=4)


def error(sequence: int, message: str) -> bytes:
    return pickle.dumps({"type": ERROR, "sequence": sequence, "message": message}, protocol=4)


def _short_str(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE (keys here are < 256 bytes)


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)  # BININT


def _dict_pickle_with(head: dict[str, str | int], key: str, value_pickle: bytes) -> bytes:
    """The pickle of ``{**head, key: value}`` built around ``value``'s own pickle bytes.

    A pickle is a program for a stack machine: ``PROTO, EMPTY_DICT, MARK, k1, v1, ..., key,
    <value's opcodes>, SETITEMS, STOP`` loads as the dict with the value in it.  The value's
    own PROTO header and final STOP are dropped; its memo indices stay valid because the
    opcodes around it use no memo.  Its FRAME opcodes stay valid too: frames only group bytes.
    """
    if not (value_pickle[:1] == b"\x80" and value_pickle[-1:] == b"."):
        raise ValueError("not a protocol 2+ pickle")
    body = value_pickle[2:-1]
    if body[:1] == b"\x95":  # the first FRAME: drop it, the bytes it grouped follow anyway
        (length,) = struct.unpack("<Q", body[1:9])
        if length == len(body) - 9 + 1:  # it framed the whole value (and the STOP we dropped)
            body = body[9:]
    out = [b"\x80\x05", b"}", b"("]
    for k, v in head.items():
        out.append(_short_str(k))
        out.append(_int(v) if isinstance(v, int) else _short_str(v))
    out += [_short_str(key), body, b"u", b"."]
    return b"".join(out)


def value_event(sequence: int, channel: str, value_pickle: bytes) -> bytes:
    """A DATA reply whose ``data`` is the value pickled (in band) by the worker."""
    head: dict[str, str | int] = {"type": DATA, "sequence": sequence, "channel": channel}
    return _dict_pickle_with(head, "data", value_pickle)


def error_message(err: P.Error) -> str:
    """The text of a legacy ERROR for a rexec ERROR event: the exception and its traceback."""
    lines = err.traceback
    trace = "".join(line if line.endswith("\n") else line + "\n" for line in lines).rstrip()
    first = f"Remote function raised {err.ename}" + (f": {err.evalue}" if err.evalue else "")
    return f"{first}\n{trace}" if trace else first


def replies(msg: P.Message) -> list[bytes]:
    """The legacy reply payloads for one worker event of a legacy call (maybe none).

    Raises ProtocolError when the event's header does not fit its kind.
    """
    kind, buffers = msg.kind, msg.buffers
    if kind == P.Kind.ACCEPTED:
        return [event(START, 0)]
    if kind == P.Kind.STREAM:
        stream = msg.read(P.Stream)
        channel = "stderr" if stream.name == "stderr" else "stdout"
        return [event(DATA, stream.seq, channel, stream.text)]
    if kind == P.Kind.YIELD and buffers:
        return [value_event(msg.read(P.Yield).seq, "yield", _as_bytes(buffers[0]))]
    if kind == P.Kind.ERROR:
        err = msg.read(P.Error)
        if err.shown:  # caught where it happened while the call went on: output, not its end
            return [event(DATA, err.seq, "stderr", error_message(err) + "\n")]
        return [error(err.seq, error_message(err))]
    if kind == P.Kind.DONE:
        done = msg.read(P.Done)
        if done.status == P.DoneStatus.OK:
            out = [value_event(done.seq, "return", _as_bytes(buffers[0]))] if buffers else []
            return [*out, event(END, done.seq + 1)]
        if done.status in (P.DoneStatus.ERROR, P.DoneStatus.LOST):
            return []  # the ERROR before it already ended the client's stream
        return [error(done.seq, done.message or "The remote call was interrupted.")]
    return []


def frames_for(payload: bytes) -> list[bytes]:
    """A reply's frames after the client's route: the empty delimiter, then the payload."""
    return [P.LEGACY, payload]
