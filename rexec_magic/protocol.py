"""The rexec wire protocol: the one place that says what a frame means.

Every component (magic, broker, worker, spawner) imports this module, so a frame layout
or message kind is defined exactly once.  See docs/ARCHITECTURE.md for the whole picture.

Frames of a rexec message, as seen by the *sender* (ZeroMQ adds/strips routing ids):

    [PROTOCOL, kind, header, *buffers]

* ``PROTOCOL`` is the magic first frame ``b"RX1"``.  Legacy SciDx Rexec clients send an
  empty first frame, so both protocols share the client port.
* ``kind`` is a short ASCII word (``Kind``).
* ``header`` is a small UTF-8 JSON object (ids, names, sizes; never bulk data).
* ``buffers`` are opaque: pickles and their out-of-band buffers.  The broker forwards them
  untouched and never decodes them.

On the worker link a routing frame comes first: the broker sends
``[client_route, PROTOCOL, kind, header, *buffers]`` to a worker, and the worker answers with
the same ``client_route`` so the broker knows which client gets the event.  A worker message
meant for the broker itself (register, heartbeat) carries an empty route ``b""``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PROTOCOL = b"RX1"
TO_BROKER = b""

# SciDx Rexec's legacy frames (their translation lives in broker/legacy.py only):
#   call    [LEGACY, token, fn_dill, args_dill]
#   cancel  [LEGACY, token, LEGACY_CANCEL, LEGACY_CANCEL_TEXT]
# and each reply is [LEGACY, dill.dumps({"type", "sequence", "channel", "data"})].
LEGACY = b""
LEGACY_CANCEL = b"__REXEC_CANCEL__"
LEGACY_CANCEL_TEXT = b"keyboard_interrupt"


class Kind:
    """Message kinds.  Grouped by who sends them."""

    # client -> broker
    HELLO = "hello"  # {token, client: versions}  -> WELCOME | DENIED
    PING = "ping"  # {t}  -> PONG (answered by the broker, says whether the worker is alive)
    # client -> worker (routed by the broker to the user's worker)
    # {id, code, vars: [{name, nbuffers}], pull, pull_limit, instance?} + buffers
    EXECUTE = "execute"
    INTERRUPT = "interrupt"  # {id}
    INSPECT = "inspect"  # {id}  -> INSPECT_REPLY
    # {id, vars: [{name: fn|args|kwargs, nbuffers}], inband, client} + buffers: call fn(*args,
    # **kwargs); a generator's items come as YIELD, the return value with DONE (vars "return")
    CALL = "call"
    # Files (rexec_magic/transfer.py <-> worker_image/files.py).  Relative paths mean the
    # worker's own folder.  Chunks travel one buffer each; the receiver acknowledges the bytes
    # it has written so far and the sender keeps at most FILE_WINDOW_BYTES unacknowledged.
    PUT_OPEN = "put_open"  # {id, path, dir}  -> FILE_ACK {id, path: resolved, received: 0}
    PUT_FILE = "put_file"  # {id, rel, size, mode}: the next file of the upload ("" = the file)
    PUT_CHUNK = "put_chunk"  # {id} + one buffer: the next bytes of the current file
    PUT_CLOSE = "put_close"  # {id}: the upload is complete  -> FILE_DONE (renamed into place)
    GET_OPEN = "get_open"  # {id, path}  -> FILE_META / FILE_CHUNK ... FILE_DONE | FILE_ERROR
    FILE_ACK = "file_ack"  # {id, received: bytes written so far} (both directions)
    FILE_CANCEL = "file_cancel"  # {id}: stop the transfer, leave nothing half-written
    # Introspection for completion and ``obj?`` (worker_image/introspect.py)
    COMPLETE = "complete"  # {id, code, cursor_pos}  -> COMPLETE_REPLY
    INTROSPECT = "introspect"  # {id, name, detail_level}  -> INTROSPECT_REPLY
    # broker -> client
    WELCOME = "welcome"  # {user, username, worker: WorkerInfo | None}
    DENIED = "denied"  # {message}
    PONG = "pong"  # {t, worker: WorkerInfo | None, pending: [ids]}
    FAIL = "fail"  # {id | None, code, message}: a broker-side failure for one request
    # worker -> client
    ACCEPTED = "accepted"  # {id}: the worker has the cell and starts it
    STREAM = "stream"  # {id, seq, name: stdout|stderr, text}
    DISPLAY = "display"  # {id, seq, data, metadata, transient}
    RESULT = "result"  # {id, seq, data, metadata, execution_count}
    ERROR = "error"  # {id, seq, ename, evalue, traceback[, nbuffers]} (+ the pickled exception)
    YIELD = "yield"  # {id, seq, nbuffers} + the pickled item: one item of a generator CALL
    DONE = "done"  # {id, seq, status, vars, skipped, duration} + buffers of pulled values
    INSPECT_REPLY = "inspect_reply"  # {id, worker, variables: [{name, type, size}]}
    FILE_META = "file_meta"  # {id, rel, size, mode, dir}: the next file of a download
    FILE_CHUNK = "file_chunk"  # {id} + one buffer
    FILE_DONE = "file_done"  # {id, path, files, bytes}
    FILE_ERROR = "file_error"  # {id, message}: one sentence (disk full, permission, not found)
    COMPLETE_REPLY = "complete_reply"  # {id, matches, cursor_start, cursor_end}
    INTROSPECT_REPLY = "introspect_reply"  # {id, found, data}: a mime bundle like ``obj?``
    # worker -> broker
    # {user, nonce, secret, python, dill, pid, instance, pool?}  -> REGISTERED | REJECTED
    REGISTER = "register"
    HEARTBEAT = "heartbeat"  # {busy}  -> HEARTBEAT_ACK | RESYNC
    GOODBYE = "goodbye"  # {}: the worker is exiting on purpose (SIGTERM, superseded)
    # broker -> worker
    REGISTERED = "registered"
    REJECTED = "rejected"  # {message}
    HEARTBEAT_ACK = "heartbeat_ack"
    RESYNC = "resync"  # the broker does not know this worker (it restarted): register again
    SUPERSEDED = "superseded"  # a newer worker registered for the same user: exit
    ASSIGN = "assign"  # {user, nonce, secret}: a warm-pool worker now belongs to this user
    # control port (admin) <-> broker
    STATUS = "status"  # {secret}  -> STATUS_REPLY
    STATUS_REPLY = "status_reply"  # {users, workers, counters}
    SHUTDOWN = "shutdown"  # {secret}  -> OK
    CLAIM = "claim"  # {secret, pool, user, nonce, worker_secret}  -> OK | FAIL (warm pool)
    OK = "ok"


# What a client may send to its worker through the broker (anything else is dropped there).
CLIENT_TO_WORKER = frozenset(
    {
        Kind.EXECUTE, Kind.CALL, Kind.INTERRUPT, Kind.INSPECT,
        Kind.PUT_OPEN, Kind.PUT_FILE, Kind.PUT_CHUNK, Kind.PUT_CLOSE, Kind.GET_OPEN,
        Kind.FILE_ACK, Kind.FILE_CANCEL, Kind.COMPLETE, Kind.INTROSPECT,
    }
)  # fmt: skip
# File transfers: bytes per chunk, and how many may be in flight unacknowledged (so either
# side holds at most a few MB of a transfer in memory, whatever the file's size).
FILE_CHUNK_BYTES = 1 << 20
FILE_WINDOW_BYTES = 8 << 20


class FailCode:
    """Codes of FAIL messages; the client maps each to one plain sentence."""

    UNAUTHENTICATED = "unauthenticated"  # this connection never said hello (or broker restarted)
    NO_WORKER = "no_worker"  # the user has no registered worker
    WORKER_LOST = "worker_lost"  # the worker died or went silent while a request was pending
    # EXECUTE/CALL named the worker process (``instance``) it was meant for, and another one
    # runs now: the client announces the lost namespace and sends the request again.
    WORKER_REPLACED = "worker_replaced"
    MALFORMED = "malformed"  # the broker could not read the message
    FORBIDDEN = "forbidden"  # bad admin secret on the control port


class DoneStatus:
    """How a cell ended, in DONE messages."""

    OK = "ok"
    ERROR = "error"  # the cell raised; an ERROR event came before
    INTERRUPTED = "interrupted"  # KeyboardInterrupt reached the cell
    RESTARTING = "restarting"  # the cell ignored the interrupt; the worker restarts, state lost


# Liveness.  Workers heartbeat the broker; clients ping while they wait for a cell.
WORKER_HEARTBEAT_S = 1.0
WORKER_DEAD_AFTER_S = 3.5
# A worker running a cell may go quiet while C code holds the GIL; it gets longer.  A worker
# that really died mid-cell is still reported at once when its restarted successor registers.
BUSY_WORKER_DEAD_AFTER_S = 30.0
CLIENT_PING_S = 1.0
BROKER_SILENT_AFTER_S = 4.0
INTERRUPT_GRACE_S = 5.0


def pool_member(pool_id: str) -> str:
    """The identity a warm-pool worker's secret is computed for.

    A NUL can never be part of a user id from a token, so no user's worker secret can ever
    pass for a pool worker's (or the other way round).
    """
    return f"\0pool\0{pool_id}"


class ProtocolError(ValueError):
    """A message that does not follow this protocol (the receiver drops it and logs a line)."""


@dataclass
class Message:
    """One decoded rexec message.  ``buffers`` stay as received (zmq Frames or bytes)."""

    kind: str
    header: dict[str, Any] = field(default_factory=dict)
    buffers: list[Any] = field(default_factory=list)

    def to_frames(self) -> list[Any]:
        return [PROTOCOL, self.kind.encode(), encode_header(self.header), *self.buffers]


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


def _as_bytes(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes


def decode(frames: Sequence[Any]) -> Message:
    """Decode ``[PROTOCOL, kind, header, *buffers]``; raise ProtocolError when malformed."""
    if len(frames) < 3:
        raise ProtocolError(f"expected at least 3 frames, got {len(frames)}")
    if _as_bytes(frames[0]) != PROTOCOL:
        raise ProtocolError("first frame is not the rexec protocol marker")
    try:
        kind = _as_bytes(frames[1]).decode("ascii")
        header = json.loads(_as_bytes(frames[2]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"unreadable kind or header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    return Message(kind, header, list(frames[3:]))


def frames(kind: str, header: dict[str, Any] | None = None, buffers: Sequence[Any] = ()) -> list:
    """Build the frames of one message."""
    return [PROTOCOL, kind.encode(), encode_header(header or {}), *buffers]
