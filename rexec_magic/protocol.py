"""The rexec wire protocol: the one place that says what a frame means.

Every component (magic, broker, worker, spawner) imports this module, so a frame layout, a
message kind or a header field is defined exactly once.  It needs only pydantic (and zmq's
``Frame`` duck type: anything with ``.bytes``), never a server package.  See
docs/ARCHITECTURE.md for the whole picture.

Frames of a rexec message, as seen by the *sender* (ZeroMQ adds/strips routing ids):

    [PROTOCOL, kind, header, *buffers]

* ``PROTOCOL`` is the magic first frame ``b"RX1"``.  Legacy SciDx Rexec clients send an
  empty first frame, so both protocols share the client port.
* ``kind`` is a short ASCII word (``Kind``).
* ``header`` is a small UTF-8 JSON object (ids, names, sizes; never bulk data).
* ``buffers`` are opaque: pickles and their out-of-band buffers.  The broker forwards them
  untouched and never decodes them.

A *routed* message has one more frame first, its route: the broker sends
``[client_handle, PROTOCOL, kind, header, *buffers]`` to a worker, and the worker answers with
the same ``client_handle`` so the broker knows which client gets the event.  The handle is an
opaque random name the broker gives each client connection: no worker ever learns a ZeroMQ
routing id.  A worker message
meant for the broker itself (register, heartbeat) carries an empty route ``b""``.  A ROUTER
socket's identity frame is a route too, so the broker reads everything with ``routed=True``.

The codec: ``encode(kind, header, buffers, route=None)`` builds the frames of one message and
``decode(frames, routed=False)`` reads them into a ``Message`` (``peek`` reads only the route
and kind, and ``split`` also hands over the header's bytes unparsed, for a message that is
forwarded without its header being read).  Each raises
``ProtocolError`` with a short reason; nothing else in the project builds or splits frames.

Headers travel as plain JSON objects and ``Message.header`` is that dict, so the bytes on the
wire are what they always were (SciDx legacy clients and old workers keep working).  What a
receiver reads from a header it reads through a typed model (``Hello``, ``Execute``, ``Done``,
...; ``HEADERS`` maps each kind to its model): ``msg.read(Execute)`` validates and returns the
model or raises ``ProtocolError``.  The models are strict (a string is a string, a count an
int, never coerced), ignore fields they do not know (a newer sender may add some), and bound
identities and other small strings (``SHORT_MAX`` characters; secrets and tokens somewhat
more); bulk text (code, output) is bounded by the header size as a whole, not here.

Cost, and where validation happens.  Validating a typical header costs 1-3 us (pydantic-core,
measured with ``bench/protocol_codec.py``: Execute ~2.7 us, Done ~2 us, Stream ~1 us, against
~2.5 us for the ``json.loads`` every receiver did anyway), well under the ~10 us per message
that would call for ``model_construct`` tricks, and far below one ZeroMQ hop (~100 us on
loopback).  So every receiver validates what it reads, with no unchecked fast path: the broker
what it reads from clients, workers and the control port (a request only as ``Request``, its
id; the worker reads the rest); the worker each request; the client each event (once: a
``Message`` keeps the model it last read).  What is merely forwarded (a cell's buffers, a
STREAM event passing through the broker) is not parsed at all (``peek``).  Models are built
on first use (``defer_build``), so a process builds only the few it reads; importing pydantic
is the larger one-time cost (~0.1 s at import).

Messages *to the broker* (from clients and from workers) carry a MAC frame right after the
marker: ``[PROTOCOL, mac, kind, header, *buffers]``.  ``mac`` is empty on HELLO and REGISTER;
every later message proves the per-session key the broker issued in WELCOME / REGISTERED:
``mac = HMAC-SHA256(key, kind + "\n" + header)``, checked with ``hmac.compare_digest``.  A
routing id alone is worth nothing: a peer that reuses a closed connection's id does not have
its key.  (As Jupyter signs messages, but over kind and header only: the buffers of one ZMTP
message travel atomically on the one connection that carries the signed header, so no third
party can splice its own buffers in without being on the path, and a party on the path of a
plaintext connection also reads the key in WELCOME; with CurveZMQ every frame is
authenticated-encrypted already.  Hashing pulled values, often hundreds of MB, would buy
nothing and cost ~0.5 s per GB.)  The broker strips the MAC before forwarding.
``encode_signed`` builds such a message; ``split_signed`` splits one without parsing its
header, so the MAC is checked first.

Size limits: the broker refuses any header larger than ``MAX_HEADER_BYTES`` (64 KiB by
default, ``REXEC_MAX_HEADER_BYTES``) before it parses it, and bounds every HELLO / REGISTER
field (``Hello``, ``Register``).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_validator,
)

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
    # {id, code, vars: [{name, nbuffers}], pull, pull_limit, have, watch, gone, missed,
    # pull_changed, result, cell, instance?} + buffers (have/watch/...: the namespace sync,
    # rexec_magic/sync.py; instance: the worker process the client last saw)
    EXECUTE = "execute"
    INTERRUPT = "interrupt"  # {id}
    # {id, session?, namespace?, fate_of?}  -> INSPECT_REPLY (``fate_of``: only ``fate``)
    INSPECT = "inspect"
    ACK = "ack"  # {id, n}: the client has handled n events of that request (flow control)
    KEEPALIVE = "keepalive"  # {id, session, namespace?, keepalive_s, late?, late_stream?}
    # {id, vars: [{name: fn|args|kwargs|globals, nbuffers}], have, watch, pull_limit, inband,
    # client, lazy} + buffers: bind globals, call fn(*args, **kwargs); a generator's items come
    # as YIELD, the return value with DONE (vars "return", then the watched globals that
    # changed).  ``lazy``: each item after the first waits for the client's NEXT.
    CALL = "call"
    # {id, close, throw, nbuffers} (+ a value sent in, or the exception thrown in): resume
    # the lazy call's generator for its next item (close: close it where it waits)
    NEXT = "next"
    # Files (rexec_magic/transfer.py <-> worker_image/files.py).  Relative paths mean the
    # worker's own folder.  Chunks travel one buffer each; the receiver acknowledges what it
    # has handled so far (bytes, plus FILE_MESSAGE_COST per message) and the sender keeps at
    # most FILE_WINDOW_BYTES of that unacknowledged.
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
    PONG = "pong"  # {t, worker: WorkerInfo | None, pending: [ids], sending?}
    FAIL = "fail"  # {id | None, code, message}: a broker-side failure for one request
    # worker -> client
    ACCEPTED = "accepted"  # {id}: the worker starts the cell now (never resent after this)
    STREAM = "stream"  # {id, seq, name: stdout|stderr, text}
    DISPLAY = "display"  # {id, seq, data, metadata, transient}
    RESULT = "result"  # {id, seq, data, metadata, execution_count}
    ERROR = "error"  # {id, seq, ename, evalue, traceback[, nbuffers]} (+ the pickled exception)
    YIELD = "yield"  # {id, seq, nbuffers} + the pickled item: one item of a generator CALL
    # {id, seq, status, vars: [{name, nbuffers, digest, reads}], skipped, changed, deleted,
    # result_name, unloaded, missing, duration, message?, exit?} + buffers of pulled values
    DONE = "done"
    INSPECT_REPLY = "inspect_reply"  # {id, worker, variables: [{name, type, size}], executors}
    NOTICE = "notice"  # {id, seq, text}: what a waiting request waits for (shown once)
    FILE_META = "file_meta"  # {id, rel, size, mode, dir}: the next file of a download
    FILE_CHUNK = "file_chunk"  # {id} + one buffer
    FILE_DONE = "file_done"  # {id, path, files, bytes}
    FILE_ERROR = "file_error"  # {id, message}: one sentence (disk full, permission, not found)
    COMPLETE_REPLY = "complete_reply"  # {id, matches, cursor_start, cursor_end}
    # client -> broker on the client's upload connection (``UPLOAD_AHEAD_BYTES``): {id} + the
    # buffers of the large EXECUTE / CALL ``id`` that follows on the main connection
    #   -> UPLOADED {id, set} | FAIL
    UPLOAD = "upload"
    UPLOADED = "uploaded"  # {id, set}: held for the request whose ``upload`` names ``set``
    INTROSPECT_REPLY = "introspect_reply"  # {id, found, data}: a mime bundle like ``obj?``
    # worker -> broker
    # {user, nonce, secret, python, dill, pid, instance, pool?}  -> REGISTERED | REJECTED
    REGISTER = "register"
    HEARTBEAT = "heartbeat"  # {busy, executors, sending?, sending_to?}  -> HEARTBEAT_ACK | RESYNC
    # executor -> broker, on a connection of its own (the bulk side channel, below):
    # {user, id} + the buffers of a large DONE  -> BULK_OK {id} | BULK_REFUSED {id, message}
    BULK = "bulk"
    # {user, id}: the buffers of a large request the broker holds (``BULK_FETCH_REF``)
    #   -> BULK_FETCHED {id} + those buffers | BULK_REFUSED {id, message}
    FETCH = "fetch"
    GOODBYE = "goodbye"  # {}: the worker is exiting on purpose (SIGTERM, superseded)
    # broker -> worker
    REGISTERED = "registered"
    REJECTED = "rejected"  # {message}
    HEARTBEAT_ACK = "heartbeat_ack"
    RESYNC = "resync"  # the broker does not know this worker (it restarted): register again
    SUPERSEDED = "superseded"  # a newer worker registered for the same user: exit
    ASSIGN = "assign"  # {user, nonce, secret}: a warm-pool worker now belongs to this user
    BULK_OK = "bulk_ok"  # {id}: the broker holds these buffers for the DONE that names them
    BULK_REFUSED = "bulk_refused"  # {id, message}: send them the usual way (through the worker)
    BULK_FETCHED = "bulk_fetched"  # {id} + the held buffers of a request, for its executor
    # {handle}: that connection of the worker's user closed (sent to a worker that registered
    # with ``client_closed``): a kernel whose connections all closed has ended
    CLIENT_CLOSED = "client_closed"
    # control port (admin) <-> broker
    STATUS = "status"  # {secret}  -> STATUS_REPLY
    STATUS_REPLY = "status_reply"  # {users, workers, counters}
    SHUTDOWN = "shutdown"  # {secret}  -> OK
    CLAIM = "claim"  # {secret, pool, user, nonce, worker_secret}  -> OK | FAIL (warm pool)
    OK = "ok"


# What a client may send to its worker through the broker (anything else is dropped there).
CLIENT_TO_WORKER = frozenset(
    {
        Kind.EXECUTE, Kind.CALL, Kind.NEXT, Kind.INTERRUPT, Kind.INSPECT, Kind.ACK, Kind.KEEPALIVE,
        Kind.PUT_OPEN, Kind.PUT_FILE, Kind.PUT_CHUNK, Kind.PUT_CLOSE, Kind.GET_OPEN,
        Kind.FILE_ACK, Kind.FILE_CANCEL, Kind.COMPLETE, Kind.INTROSPECT,
    }
)  # fmt: skip
# File transfers: bytes per chunk, and how many may be in flight unacknowledged (so either
# side holds at most a few MB of a transfer in memory, whatever the file's size).
FILE_CHUNK_BYTES = 1 << 20
FILE_WINDOW_BYTES = 8 << 20
# Each transfer message (a file's META / PUT_FILE, a chunk) counts this much in the window
# besides its data, and acknowledgements count the same way: a folder of thousands of small
# or empty files keeps at most FILE_WINDOW_BYTES / FILE_MESSAGE_COST (2,048) messages in
# flight, far below the broker's high-water mark, where ZeroMQ would drop them silently.
FILE_MESSAGE_COST = 4 << 10


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
    TOKEN_INVALID = "token_invalid"  # noqa: S105 - a code, not a secret; the token was revoked or expired while connected
    TOO_LARGE = "too_large"  # the header is larger than the broker accepts
    # A DONE named bulk buffers the broker no longer holds (its worker was dropped meanwhile)
    BULK_LOST = "bulk_lost"
    # An EXECUTE / CALL named uploaded buffers the broker does not hold: it was not run
    UPLOAD_LOST = "upload_lost"


BULK_LOST_MESSAGE = (
    "The cell ran, but the values it sent back were lost on their way (the rexec broker no "
    "longer held them); this notebook's copies of the names it changed may be older than "
    "the worker's."
)
UPLOAD_LOST_MESSAGE = (
    "The values sent with this request were no longer held by the rexec broker when the "
    "request came (it restarted?), so it did not run; run it again."
)


# What kind of client sends a request (``Placement.frontend``): a notebook's kernel (also
# any client that does not say), IPython outside a kernel (a terminal), or plain Python (a
# ``remote_func`` script).  The sentences it is told name it (``client_words``), and a
# script's calls get plain Python's ``exit()`` (``worker_image/shell.py``).
FRONTEND_NOTEBOOK = "notebook"
FRONTEND_IPYTHON = "ipython"
FRONTEND_SCRIPT = "script"


def client_words(frontend: str = FRONTEND_NOTEBOOK) -> str:
    """How a sentence names the client it is told to: "this notebook", or "this session"
    for any other frontend (a script told "this notebook's executor died" looks for a
    notebook it does not have; tester AE)."""
    return "this notebook" if frontend == FRONTEND_NOTEBOOK else "this session"


def executor_of(namespace: str | None, frontend: str = FRONTEND_NOTEBOOK) -> str:
    """Whose executor a sentence is about: "this notebook's remote executor" ("this
    session's" for a script, ``client_words``), or, for a shared namespace
    (``%rexec_attach NAME``), "the remote executor of shared namespace 'NAME'" (the
    notebook keeps its own then)."""
    if namespace:
        return f"the remote executor of shared namespace {namespace!r}"
    return f"{client_words(frontend)}'s remote executor"


def grace_sentence(what: str, whose: str) -> str:
    """What an interrupted ``what`` ("cell", "call") that has not stopped after
    ``NOTICE_AFTER_S`` waits for; ``whose``: its executor, as ``executor_of`` says it.  Said
    by the worker while the code runs on (it knows), or by the client when the worker is
    silent that long."""
    return (
        f"the remote {what} has not stopped {NOTICE_AFTER_S:g} s after the interrupt; "
        f"if it does not stop within the {INTERRUPT_GRACE_S:g} s grace period, "
        f"{whose} is restarted and its namespace is lost"
    )


def grace_over_sentence(what: str, whose: str, status: str, after_s: float) -> str:
    """The last word of the note ``grace_sentence`` (or ``silent_grace_sentence``) began,
    once the interrupted ``what`` ended, ``after_s`` after the interrupt, as its DONE's
    ``status`` says: restarted (``whose``: its executor), its executor dead, stopped, or
    not stopped at all (it caught the KeyboardInterrupt and finished, or raised something
    else), its namespace kept.  Without it the note stayed a prediction ("... is restarted
    and its namespace is lost") above a cell that stopped in time and kept it."""
    if status == DoneStatus.RESTARTING:
        return (
            f"the remote {what} did not stop within the grace period, so {whose} was "
            "restarted; its namespace was lost"
        )
    if status == DoneStatus.LOST:
        return f"{whose} died {after_s:.0f} s after the interrupt; its namespace was lost"
    if status == DoneStatus.OK:
        ended = f"did not stop for the interrupt: it finished {after_s:.0f} s after it"
    elif status == DoneStatus.ERROR:
        ended = f"did not stop for the interrupt: it raised an error {after_s:.0f} s after it"
    else:
        ended = f"stopped {after_s:.0f} s after the interrupt"
    return f"the remote {what} {ended}; its namespace was kept"


def silent_grace_sentence(what: str, silent_s: float) -> str:
    """``grace_sentence`` when the worker itself has not been heard for ``silent_s`` (the
    broker's last heartbeat from it): stopped (SIGSTOP) or starved, it cannot have acted
    on the interrupt, and nothing restarts the executor meanwhile (tester BN: told of a
    restart and a lost namespace, the cell ran on 15 s and its namespace stayed)."""
    return (
        f"the remote {what} has not stopped {NOTICE_AFTER_S:g} s after the interrupt, and your "
        f"remote worker has not been heard for {silent_s:.0f} s (it may be stopped or "
        f"overloaded): the interrupt reaches the {what} when the worker goes on"
    )


# The one sentence a user reads when an open connection's token stops being valid.
TOKEN_INVALID_MESSAGE = "Your rexec token is no longer valid; log in again."  # noqa: S105


class DoneStatus:
    """How a cell ended, in DONE messages."""

    OK = "ok"
    ERROR = "error"  # the cell raised; an ERROR event came before
    INTERRUPTED = "interrupted"  # KeyboardInterrupt reached the cell
    RESTARTING = "restarting"  # the cell ignored the interrupt; its executor restarts, state lost
    LOST = "lost"  # the executor died during the cell (crash, os._exit, OOM); state lost
    RESEND = "resend"  # not run: the worker lacks names the client did not resend ({missing})


# Stopping.  An executor told to stop (its kernel gone, its worker stopping) and what its
# cells started get SIGTERM, then SIGKILL after EXECUTOR_STOP_S; a stopping worker's
# supervisor then sends what it still holds for up to WORKER_FLUSH_S.  Whoever stops a
# worker (the spawner's ``stop_grace_s``, Kubernetes' terminationGracePeriodSeconds) waits
# WORKER_STOP_S before its SIGKILL, so the supervisor ends its own first: with both at 3 s,
# a process a cell started that ignored SIGTERM outlived ``%rexec_stop`` (tester).
EXECUTOR_STOP_S = 3.0
WORKER_FLUSH_S = 2.0
WORKER_STOP_S = EXECUTOR_STOP_S + WORKER_FLUSH_S + 1.0

# Liveness.  Workers heartbeat the broker; clients ping while they wait for a cell.
WORKER_HEARTBEAT_S = 1.0
WORKER_DEAD_AFTER_S = 3.5
# Heartbeats come from the worker's supervisor, which never runs user code, so a busy worker
# gets no longer than an idle one (a cell holding the GIL cannot starve them any more).
BUSY_WORKER_DEAD_AFTER_S = WORKER_DEAD_AFTER_S
# A service's periodic work (the broker's housekeeping, the worker supervisor's tick) this
# much later than due means that process itself did not run (stopped, starved): that time
# is nobody else's silence, so it is added to the last time each peer was heard from.
PROCESS_STALL_S = 2.0
CLIENT_PING_S = 1.0
# Events of one request the client lets be in flight before it acknowledges them (ACK);
# the worker stops sending when this many are unacknowledged, so nothing is dropped.
CLIENT_CREDIT = 256
# A kernel tells its executor it is alive this often while idle; the worker stops an
# executor whose kernels stayed silent for ORPHAN_AFTER_PINGS of these intervals.
CLIENT_KEEPALIVE_S = 10.0
ORPHAN_AFTER_PINGS = 3
# The broker pings each client connection at the ZeroMQ level (ZMTP PING, answered by the
# client's libzmq I/O thread, which needs no GIL) and closes one that answered nothing for
# this long: a kernel stopped (SIGSTOP) or whose machine vanished.  A connection still open
# is then a kernel process alive, however long its Python holds the GIL (a local regex, a C
# call): a worker told so (``Registered.client_timeout_s``) takes a kernel for gone only
# once its connections closed, never for its keepalives' silence alone (61 s of local
# regex cost the remote namespace, tester BR).
CLIENT_CONNECTION_TIMEOUT_S = 30.0
# The bounds of a declared keepalive interval.  A kernel that exits sends one last keepalive
# declaring the shortest (its goodbye): its executor is freed some 1.6 s later, not after
# ORPHAN_AFTER_PINGS of its usual intervals (workers of every version read it so).
KEEPALIVE_MIN_S = 0.2
KEEPALIVE_MAX_S = 3600.0
# A request that waits longer than this says what it waits for (NOTICE).
NOTICE_AFTER_S = 2.0
# ... and says it again this often while it lasts (a wait for a turn: LIVE_NOTE_EVERY_S).
NOTICE_REPEAT_S = 10.0
# A wait's live note ("waiting for this notebook's previous call (running 12 s)", one
# display kept current) is brought up to date this often, whoever words it: the client's
# own waits, a future's result(), the supervisor's notice of a turn in a shared namespace.
LIVE_NOTE_EVERY_S = 1.0
BROKER_SILENT_AFTER_S = 4.0
# ... except for a request that has not started: it is sent again once the broker is back
# (`rexec up` restarts a broker that died, which takes seconds on a busy machine), so the
# client waits this long for that, saying so, before it gives up with the request unrun.
BROKER_RESTART_WAIT_S = 30.0
# After a broker (re)start, how long a running worker may take to register with it (it does
# so on its own as it reconnects: 0.3-1.1 s seen, tester BU) before the spawner's status
# calls it not answering.
WORKER_REREGISTER_S = 10.0
# A large message holds up what comes after it on its connection (ZeroMQ delivers whole
# messages, in order): a heartbeat behind a 1 GB result, a PONG behind it on its way to the
# client.  Its sender says first how large it is (HEARTBEAT ``sending``, PONG ``sending``),
# and the receiver allows it ``transfer_allowance_s`` more silence.  From this size on:
LARGE_MESSAGE_BYTES = 16 << 20
TRANSFER_MIN_BYTES_PER_S = 16 << 20  # the slowest crossing allowed (16 MiB/s)


def transfer_allowance_s(nbytes: int) -> float:
    """Seconds of silence a message of ``nbytes`` may cause on one connection it crosses
    (0 below ``LARGE_MESSAGE_BYTES``)."""
    return nbytes / TRANSFER_MIN_BYTES_PER_S if nbytes >= LARGE_MESSAGE_BYTES else 0.0


INTERRUPT_GRACE_S = 5.0

# The bulk side channel.  A large DONE's buffers would cross three links (executor ->
# supervisor -> broker -> client), each a full copy of every byte before the next starts
# (ZeroMQ and the executor link move whole messages).  Instead the executor sends them
# straight to the broker (BULK, on a DEALER of its own, zero-copy from the values' memory),
# waits for BULK_OK, and sends its DONE through the supervisor as always, with one buffer
# in their place: ``BULK_REF`` + the id.  The broker puts the held buffers there and
# forwards the DONE: the client receives exactly the message it would have, and the
# supervisor still orders it after the cell's output.  The executor proves nothing but
# "this user's executor" (``bulk_key``, derived from the worker's session key, which never
# leaves the supervisor): what it uploads is only ever forwarded in place of a DONE's
# reference that the supervisor signed.  Refused, unanswered or unavailable: the buffers go
# the usual way, so nothing is lost.  From this many bytes of buffers on:
BULK_MIN_BYTES = 8 << 20
BULK_REF = b"\0rexec-bulk\0"  # + the id: a DONE's one buffer standing for the held ones
BULK_MAX_HELD = 16  # buffer sets the broker holds per user at most (more: refused)
BULK_MAX_HELD_BYTES = 2 << 30  # and bytes per user (more: refused; broker/bulk.py counts)
BULK_MAX_HELD_BYTES_TOTAL = 8 << 30  # and bytes for all users together
BULK_MAX_PER_UPLOADER = 2  # sets per executor connection; older ones are orphans, let go
BULK_CLOSED_GRACE_S = 10.0  # sets of a connection that closed are let go this much later
BULK_HEADER_MAX = 2048  # a BULK header is a user id and a set id: larger is refused unread


def bulk_key(session_key: bytes) -> bytes:
    """The key an executor signs BULK with: derived from its worker's session key (both the
    broker and the supervisor derive it), so holding it proves nothing else."""
    return hmac.digest(session_key, b"rexec bulk side channel", "sha256")


def bulk_ref(frames: Sequence[Any]) -> str | None:
    """The id a DONE's buffers stand for (see ``BULK_REF``), or None for ordinary buffers."""
    if len(frames) != 1:
        return None
    first = _as_bytes(frames[0]) if len(frames[0]) <= len(BULK_REF) + SHORT_MAX else b""
    if not first.startswith(BULK_REF):
        return None
    return first[len(BULK_REF) :].decode("ascii", "replace")


# The same channel the other way: a client's EXECUTE or CALL with ``BULK_MIN_BYTES`` or more
# of buffers would also cross three links (client -> broker -> supervisor -> executor).  For a
# worker that registered with ``fetch``, the broker holds the buffers and forwards the request
# with one buffer in their place, ``BULK_FETCH_REF`` + "<id>:<bytes>"; the executor that runs
# it asks the broker for them (FETCH, signed with ``bulk_key``) on its own connection, when
# it is about to run it, so the request still waits its turn in the supervisor.  Not served
# (the broker restarted, or no answer in time): its values are reported not loaded, and the
# cell does not run.  Held sets count against the same bounds; past them the request goes
# whole, the usual way.
BULK_FETCH_REF = b"\0rexec-fetch\0"


def fetch_ref(frames: Sequence[Any]) -> tuple[str, int] | None:
    """The set id and byte count a request's buffers stand for (``BULK_FETCH_REF``), or
    None for ordinary buffers (a request's single buffer is a pickle: it never starts so)."""
    if len(frames) != 1:
        return None
    first = frames[0]
    if len(first) > len(BULK_FETCH_REF) + SHORT_MAX:
        return None
    raw = _as_bytes(first)
    if not raw.startswith(BULK_FETCH_REF):
        return None
    set_id, _, size = raw[len(BULK_FETCH_REF) :].decode("ascii", "replace").partition(":")
    return set_id, int(size) if size.isdigit() else 0


# And the client's side of it.  A large request sent on the client's one connection could
# not be interrupted while it crossed: the INTERRUPT that Ctrl-C sends queued behind it on
# the same connection (with 2,000 MiB the cell ended 5.3 s after the Ctrl-C, on a 2-core
# machine).  So its buffers go ahead on a connection of their own (UPLOAD, a second session
# of the same token), and the request follows on the main connection once the broker says
# it holds them (UPLOADED), with ``upload`` naming the set and no buffers.  A Ctrl-C before
# that closes the upload connection: the request was never sent, so it provably did not
# run, and the notebook says so at once.  The broker holds an upload only until its request
# comes (it comes at once; ``UPLOAD_CLAIM_S`` at most), one per upload connection, outside
# the bulk bounds: the same bytes would otherwise be in the broker's memory as the request
# in transit.  The request then goes on as if its buffers had come with it (held for the
# executor to fetch, within the bounds, or forwarded whole).
UPLOAD_AHEAD_BYTES = BULK_MIN_BYTES
UPLOAD_CLAIM_S = 30.0


def fetch_ref_frame(set_id: str, nbytes: int) -> bytes:
    """The one buffer standing for a request's held buffers (see ``fetch_ref``)."""
    return BULK_FETCH_REF + f"{set_id}:{nbytes}".encode()


def pool_member(pool_id: str) -> str:
    """The identity a warm-pool worker's secret is computed for.

    A NUL can never be part of a user id from a token, so no user's worker secret can ever
    pass for a pool worker's (or the other way round).
    """
    return f"\0pool\0{pool_id}"


# Headers the broker parses are refused above this size before parsing (REXEC_MAX_HEADER_BYTES).
MAX_HEADER_BYTES = 64 * 1024
MAC_BYTES = 32  # HMAC-SHA256
SESSION_KEY_BYTES = 32


def mac(key: bytes, kind: bytes, header: bytes) -> bytes:
    """The MAC of one message to the broker: HMAC-SHA256 over kind and header (see above)."""
    return hmac.digest(key, b"%s\n%s" % (kind, header), "sha256")


def mac_ok(key: bytes, kind: bytes, header: bytes, given: bytes) -> bool:
    """Whether ``given`` is the MAC of this kind and header under ``key`` (constant time)."""
    return len(given) == MAC_BYTES and hmac.compare_digest(mac(key, kind, header), given)


class ProtocolError(ValueError):
    """A message that does not follow this protocol (the receiver drops it and logs a line).

    The text is short and never quotes the offending values (a header may hold a secret).
    """


# --------------------------------------------------------------------------- codec
@dataclass(slots=True)
class Message:
    """One decoded rexec message.

    ``header`` is the JSON object as received (read it through a model: :meth:`read`);
    ``buffers`` stay as received (zmq Frames or bytes); ``route`` is the first frame of a
    routed message (None for a plain one).
    """

    kind: str
    header: dict[str, Any] = field(default_factory=dict)
    buffers: list[Any] = field(default_factory=list)
    route: bytes | None = None
    _read: Header | None = field(default=None, repr=False, compare=False)

    def read(self, model: type[H]) -> H:
        """The header as ``model``; ProtocolError when it does not fit.

        Models that check ``vars`` against the buffers that came (``Execute``, ``Call``,
        ``Done``) get the buffer count from here.  The last model read is kept, so reading
        it again (or a model it extends) costs nothing.
        """
        if isinstance(self._read, model):
            return self._read
        # A request whose buffers the broker holds (``BULK_FETCH_REF``) is checked against
        # them once its executor has them.
        nbuffers = None if fetch_ref(self.buffers) is not None else len(self.buffers)
        fields = model.read(self.header, nbuffers=nbuffers)
        self._read = fields
        return fields

    def to_frames(self) -> list[Any]:
        return encode(self.kind, self.header, self.buffers, route=self.route)


def encode_header(header: dict[str, Any]) -> bytes:
    """A header's bytes: compact JSON (raises TypeError/ValueError for non-JSON values)."""
    return json.dumps(header, separators=(",", ":")).encode()


# A worker event's header begins {"id":"..."} (the executor's) or {"seq":N,"id":"..."} (once
# the supervisor numbered it, or made it): the id within the first bytes (escapes allowed).
_EVENT_ID = re.compile(rb'\{(?:"seq":\d{1,20},)?"id":("(?:[^"\\]|\\.){1,1536}")')


def event_id(header: Any) -> str | None:
    """The request ``id`` of a worker event, read from the header's first 2 KiB only, so a
    DONE header of any size (one naming thousands of variables) still ends its request at
    the broker.  None when the header does not begin as rexec's events do."""
    match = _EVENT_ID.match(bytes(memoryview(header)[:2048]))
    if match is None:
        return None
    try:
        value = json.loads(match.group(1))
    except ValueError:
        return None
    return value if isinstance(value, str) and 0 < len(value) <= SHORT_MAX else None


def encode(
    kind: str,
    header: dict[str, Any] | bytes | None = None,
    buffers: Sequence[Any] = (),
    route: bytes | None = None,
) -> list[Any]:
    """The frames of one message: ``[route?, PROTOCOL, kind, header, *buffers]``.

    ``header`` may be given already encoded (bytes), for senders with their own fallback
    for values JSON cannot hold (the worker's user display data).
    """
    head = header if isinstance(header, bytes) else encode_header(header or {})
    parts: list[Any] = [PROTOCOL, kind.encode(), head, *buffers]
    if route is not None:
        parts.insert(0, route)
    return parts


def _as_bytes(frame: Any) -> bytes:
    if isinstance(frame, bytes):
        return frame
    if isinstance(frame, bytearray | memoryview):  # the worker's own link (framing.py)
        return bytes(frame)
    return frame.bytes


def peek(frames: Sequence[Any], routed: bool = False) -> tuple[bytes | None, str]:
    """``(route, kind)`` of a message, its header left unread (for forwarding)."""
    at = 1 if routed else 0
    if len(frames) < at + 3:
        raise ProtocolError(f"expected at least {at + 3} frames, got {len(frames)}")
    if _as_bytes(frames[at]) != PROTOCOL:
        raise ProtocolError("not a rexec message (no protocol marker)")
    try:
        kind = _as_bytes(frames[at + 1]).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("unreadable kind") from None
    return (_as_bytes(frames[0]) if routed else None), kind


def decode_header(frame: Any) -> dict[str, Any]:
    """A header frame's JSON object; ProtocolError when it is not one."""
    try:
        header = json.loads(_as_bytes(frame))
    except ValueError:  # includes UnicodeDecodeError
        raise ProtocolError("the header is not JSON") from None
    except RecursionError:
        raise ProtocolError("the header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header is not a JSON object")
    return header


def decode(frames: Sequence[Any], routed: bool = False) -> Message:
    """Decode ``[route?, PROTOCOL, kind, header, *buffers]``; ProtocolError when malformed."""
    route, kind = peek(frames, routed)
    at = 1 if routed else 0
    return Message(kind, decode_header(frames[at + 2]), list(frames[at + 3 :]), route)


@dataclass(slots=True)
class Unread:
    """A message split into its frames, its header left as bytes (``split``)."""

    route: bytes | None
    kind: str
    header: bytes
    buffers: list[Any]

    def message(self) -> Message:
        """The message, its header parsed; ProtocolError when it is not a JSON object."""
        return Message(self.kind, decode_header(self.header), self.buffers, self.route)


def split(frames: Sequence[Any], routed: bool = False) -> Unread:
    """Split ``[route?, PROTOCOL, kind, header, *buffers]`` without parsing the header, for
    a receiver that forwards it (the worker's supervisor passes requests to an executor and
    an executor's events on, numbering them in the header bytes); ProtocolError when the
    frames do not fit."""
    route, kind = peek(frames, routed)
    at = 1 if routed else 0
    return Unread(route, kind, _as_bytes(frames[at + 2]), list(frames[at + 3 :]))


# --------------------------------------------------------------------------- signed (to the broker)
def encode_signed(
    key: bytes | None,
    kind: str,
    header: dict[str, Any] | bytes | None = None,
    buffers: Sequence[Any] = (),
    route: bytes | None = None,
) -> list[Any]:
    """Frames of a message to the broker: ``[route?, PROTOCOL, mac, kind, header, *buffers]``.

    ``key`` None (HELLO, REGISTER, or not yet welcomed) sends an empty MAC.
    """
    kind_b = kind.encode()
    head = header if isinstance(header, bytes) else encode_header(header or {})
    parts: list[Any] = [PROTOCOL, mac(key, kind_b, head) if key else b"", kind_b, head, *buffers]
    if route is not None:
        parts.insert(0, route)
    return parts


@dataclass(slots=True)
class Signed:
    """A message to the broker split into its frames, nothing parsed (see ``split_signed``)."""

    route: bytes | None
    mac: bytes
    kind: bytes  # as sent; ``name`` decodes it
    header: Any  # the header frame, unread
    buffers: list[Any]

    @property
    def name(self) -> str:
        """The kind as text; ProtocolError when it is not ASCII."""
        try:
            return self.kind.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("unreadable kind") from None

    def verify(self, key: bytes | None) -> bool:
        """Whether the MAC proves ``key`` (constant time; False without a key)."""
        return key is not None and mac_ok(key, self.kind, _as_bytes(self.header), self.mac)

    def message(self) -> Message:
        """The message, its header parsed; ProtocolError when it is not a JSON object."""
        return Message(self.name, decode_header(self.header), self.buffers, self.route)

    def unsigned(self) -> list[Any]:
        """``[PROTOCOL, kind, header, *buffers]``: the frames forwarded on, MAC stripped."""
        return [PROTOCOL, self.kind, self.header, *self.buffers]


def split_signed(frames: Sequence[Any], routed: bool = False) -> Signed:
    """Split ``[route?, PROTOCOL, mac, kind, header, *buffers]``; ProtocolError when malformed.

    Frames stay as received (zero-copy) and nothing is parsed, so a receiver checks the MAC
    and the header's size before it spends anything on the header.
    """
    at = 1 if routed else 0
    if len(frames) < at + 4:
        raise ProtocolError(f"expected at least {at + 4} frames, got {len(frames)}")
    if _as_bytes(frames[at]) != PROTOCOL:
        raise ProtocolError("not a rexec message (no protocol marker)")
    return Signed(
        route=_as_bytes(frames[0]) if routed else None,
        mac=_as_bytes(frames[at + 1]),
        kind=_as_bytes(frames[at + 2]),
        header=frames[at + 3],
        buffers=list(frames[at + 4 :]),
    )


def decode_signed(frames: Sequence[Any], routed: bool = False) -> tuple[bytes, Message]:
    """``(mac, message)`` of a message to the broker, its header parsed."""
    signed = split_signed(frames, routed)
    return signed.mac, signed.message()


# --------------------------------------------------------------------------- header models
SHORT_MAX = 256  # ids, user ids, nonces, names, version strings
SECRET_MAX = 1024  # worker and admin secrets
TOKEN_MAX = 16384  # bearer tokens (a JWT with many groups can be long)
PATH_MAX = 4096  # file paths (PATH_MAX on Linux), expressions asked about with ``obj?``

Short = Annotated[str, StringConstraints(max_length=SHORT_MAX)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=SHORT_MAX)]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=SECRET_MAX)]
Json = dict[str, Any]


def _none_as_empty(value: Any) -> Any:
    return [] if value is None else value


H = TypeVar("H", bound="Header")


class Header(BaseModel):
    """A header as one kind of receiver reads it.  Strict, forward compatible, read-only."""

    # defer_build: a model's validator is built when first used, so a process builds only
    # the few it reads (the client about ten, the worker about five) and imports faster.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, defer_build=True)

    @classmethod
    def read(cls: type[H], header: dict[str, Any], nbuffers: int | None = None) -> H:
        """Validate ``header``; ProtocolError naming the first bad field (never its value)."""
        try:
            return cls.model_validate(header, context={"nbuffers": nbuffers})
        except ValidationError as exc:
            raise ProtocolError(_reason(cls, exc)) from None


def _reason(model: type[Header], exc: ValidationError) -> str:
    errs = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errs[0] if errs else {"loc": (), "msg": "invalid"}
    where = ".".join(str(part) for part in first["loc"]) or "header"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"bad {model.__name__} header: {where}: {first['msg']}{more}"


class Versions(Header):
    """A side's Python and dill versions (``serialize.versions()``)."""

    python: Short = ""
    dill: Short = ""


class VarEntry(Header):
    """One value among the buffers: its name and how many buffers its pickle took.

    ``same_as``: the name is bound to the very object another entry of the same message
    carries (``n = m``), so it has no buffers of its own and the receiver binds it to the
    object it loaded for that one: sent as two pickles, the names arrived as two objects,
    and a change through one no longer showed through the other."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=SHORT_MAX)]
    nbuffers: Annotated[int, Field(ge=0)]
    nbytes: Annotated[int, Field(ge=0)] | None = None  # the pickle's size (informative)
    same_as: Short = ""

    @model_validator(mode="after")
    def _own_buffers(self) -> VarEntry:
        if bool(self.same_as) == bool(self.nbuffers):
            raise ValueError("an entry has buffers of its own or is 'same_as' another")
        return self


class PulledEntry(VarEntry):
    """A value a DONE brings back, with what the namespace sync records of it."""

    digest: Short = ""  # content hash of the pickle and its buffers (serialize.digest)
    # The value's class and its module: the notebook names it, and keeps plotting objects
    # that stay remote quiet (worker_image/variables.type_fields).
    type: Short = ""
    module: Short = ""
    # The notebook globals its code reads (they are watched too).
    reads: list[Short] = Field(default_factory=list)


class Unloaded(Header):
    """A pushed value the worker could not load (it stays unbound there)."""

    name: Short
    reason: str = ""


VarList = Annotated[list[VarEntry], BeforeValidator(_none_as_empty)]
Names = Annotated[list[Short], BeforeValidator(_none_as_empty)]


def _check_buffers(entries: list[VarEntry], info: ValidationInfo) -> None:
    carried = set()
    for entry in entries:
        if entry.same_as and entry.same_as not in carried:
            raise ValueError(f"'same_as' of {entry.name!r} names no earlier entry with buffers")
        if entry.nbuffers:
            carried.add(entry.name)
    nbuffers = (info.context or {}).get("nbuffers")
    total = sum(e.nbuffers for e in entries)
    if nbuffers is not None and total != nbuffers:
        raise ValueError(f"'vars' announce {total} buffers but {nbuffers} came")


# client -> broker
class Hello(Header):
    token: Annotated[str, StringConstraints(max_length=TOKEN_MAX)] = ""
    client: Versions | None = None
    # Which of a notebook's connections this is, for the broker's log (a kernel has up to
    # four: its requests, its keepalives, large values sent ahead, a status asked while a
    # call runs): "" (requests), "keepalive", "upload", "status".
    role: Short = ""


class Ping(Header):
    t: float | None = None


class Request(Header):
    """What the broker reads of a request it routes (every kind in ``CLIENT_TO_WORKER``)."""

    id: Id
    # EXECUTE / CALL: the worker process (its ``instance``) the request is meant for; when
    # another one runs now the broker answers FAIL worker_replaced.  Empty: whichever runs.
    instance: Short = ""
    # EXECUTE / CALL: the buffers are the set this client uploaded ahead (UPLOADED ``set``).
    upload: Short = ""


# client -> worker
MAX_CREDIT = 1 << 20


class Placement(Header):
    """Which executor on the worker a request is for (see ``worker_image.cells.placement``).

    ``namespace`` (``%rexec_attach NAME``) names a shared executor; else ``session`` (one
    per client session: a notebook's kernel, a script) gets its own; neither (legacy clients,
    old magics): the worker's ``default`` executor.  ``keepalive_s`` is how often this
    client's keepalives come (the worker stops an executor whose clients went silent);
    ``notebook`` is how the executor is listed.
    """

    session: Short = ""
    namespace: Short = ""
    notebook: Short = ""
    frontend: Short = FRONTEND_NOTEBOOK  # or FRONTEND_IPYTHON, FRONTEND_SCRIPT
    keepalive_s: Annotated[float, Field(ge=KEEPALIVE_MIN_S, le=KEEPALIVE_MAX_S)] | None = None


class Execute(Request, Placement):
    code: str
    vars: VarList = []
    pull: Names = []
    pull_limit: Annotated[int, Field(ge=0)] | None = None  # None: the worker's default
    client: Versions | None = None
    # The namespace sync (rexec_magic/sync.py): names not resent because the worker holds
    # them (it answers DoneStatus.RESEND when it lacks one); names whose change to report;
    # whether changed watched names come back; whether the last expression's value comes
    # back; the notebook's cell number (tracebacks say ``Cell In[N]``).  Fields often absent
    # default through a factory: pydantic deep-copies a ``[]`` default on every read (~0.7 us).
    have: Names = Field(default_factory=list)
    watch: Names = Field(default_factory=list)
    # Names this notebook exchanged with the worker and has since deleted (``del x`` in a
    # local cell): the worker unbinds them before the code runs, as they are gone here.
    gone: Names = Field(default_factory=list)
    # Names a DONE this notebook never read (it stopped waiting: a second Ctrl-C) assigned
    # or deleted: the worker takes this notebook as not having seen their values there, so
    # the next request that watches one brings it back (or reports it deleted).
    missed: Names = Field(default_factory=list)
    # Of those, the content hash (``serialize.digest``) of each value the notebook last
    # exchanged: the worker applies a push of a missed name only while its value there is
    # still that one (compare-and-set); else the request the notebook stopped waiting for
    # changed it after the notebook's copy was made, and the worker's value, newer, is kept
    # and comes back (``Done.conflicts``).
    missed_base: dict[Short, Short] = Field(default_factory=dict)
    # Of the missed names pushed, those this notebook changed after it stopped hearing the
    # request that may have changed them, each with the earliest time, by the worker's
    # clock (``Done.at``), the change can have been made (``rexec_magic.unheard``): a value
    # there that last changed before it is the older one, and the push applies over it
    # (``Done.superseded``); one that changed later, or at a time the worker cannot say,
    # is kept as above.
    missed_after: dict[Short, float] = Field(default_factory=dict)
    # A shared namespace's versions of values (``Done.ages``: when each was made there, by
    # the worker's clock), so that one restarted after a loss keeps the newest of the
    # copies its notebooks send again, whichever comes first (the first used to win, and
    # came back into the others over their newer ones).  ``restore_at``: names sent again
    # unchanged (the worker lacked them, or asked: RESEND), with the version of each copy;
    # ``base_at``: names changed here, with the version the change was made on;
    # ``gone_at``: names this notebook deleted or saw deleted, with the version of the
    # deletion (a copy older than the deletion does not bring them back).
    restore_at: dict[Short, float] = Field(default_factory=dict)
    base_at: dict[Short, float] = Field(default_factory=dict)
    gone_at: dict[Short, float] = Field(default_factory=dict)
    pull_changed: bool = False
    result: bool = False
    cell: int | None = None
    # Events the client lets be in flight unacknowledged (ACK); None: no flow control.
    credit: Annotated[int, Field(ge=1, le=MAX_CREDIT)] | None = None
    # The notebook's display settings that differ from IPython's defaults (``xmode``,
    # ``colors``, ``precision``: ``%xmode``, ``%colors``, ``%precision``), so the cell's
    # tracebacks and values look as the notebook's own do.
    looks: dict[Short, Short] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _buffers(self, info: ValidationInfo) -> Execute:
        _check_buffers(self.vars, info)
        return self


class Call(Request, Placement):
    vars: VarList = []
    inband: bool = False  # values back as one plain pickle each (legacy clients)
    legacy: bool = False
    client: Versions | None = None
    # The namespace sync, as for Execute: ``globals`` (a ``vars`` entry) holds the notebook
    # globals ``fn`` reads that changed; ``have`` those not resent; ``watch`` those whose
    # change comes back; ``gone`` those deleted here since they were exchanged.
    have: Names = Field(default_factory=list)
    watch: Names = Field(default_factory=list)
    gone: Names = Field(default_factory=list)
    missed: Names = Field(default_factory=list)  # as Execute.missed
    missed_base: dict[Short, Short] = Field(default_factory=dict)  # as Execute.missed_base
    missed_after: dict[Short, float] = Field(default_factory=dict)  # as Execute.missed_after
    restore_at: dict[Short, float] = Field(default_factory=dict)  # as Execute.restore_at
    base_at: dict[Short, float] = Field(default_factory=dict)  # as Execute.base_at
    gone_at: dict[Short, float] = Field(default_factory=dict)  # as Execute.gone_at
    pull_limit: Annotated[int, Field(ge=0)] | None = None  # None: the worker's default
    credit: Annotated[int, Field(ge=1, le=MAX_CREDIT)] | None = None
    # A generator's items one at a time, as a local generator makes them: after each YIELD
    # the worker waits for the client's NEXT (the loop asked for another item) before it
    # resumes the generator, and NEXT ``close`` closes it where it waits (GeneratorExit at
    # its ``yield``).  False: it runs ahead as far as flow control lets it (``list()``).
    lazy: bool = False

    @model_validator(mode="after")
    def _buffers(self, info: ValidationInfo) -> Call:
        _check_buffers(self.vars, info)
        names = {e.name for e in self.vars}
        if "fn" not in names or not names <= {"fn", "args", "kwargs", "globals"}:
            raise ValueError("'vars' must name 'fn' and may name 'args', 'kwargs' and 'globals'")
        return self


class Interrupt(Request):
    pass


class Inspect(Request, Placement):
    """The worker's report (``InspectReply``); with ``fate_of`` (a request id) only what
    became of that request on this worker process (``InspectReply.fate``): asked by a
    client that never heard the request's end (the broker restarted meanwhile)."""

    fate_of: Short = ""
    # With ``fate_of``: the events of that request its client has (by ``seq``, as ``Ack``);
    # those it lacks that the worker kept come again first (``InspectReply.fate``'s
    # ``resent``), the same messages as before.
    seen: Annotated[int, Field(ge=0)] | None = None


class Ack(Request):
    """The client has handled ``n`` events of request ``id`` (flow control)."""

    n: Annotated[int, Field(ge=0)]


class Next(Request):
    """The client's loop over lazy call ``id`` (``Call.lazy``) asks for the next item, or,
    with ``close``, left the loop: the generator is closed where it waits.  One buffer
    (``nbuffers`` 1), pickled: the value ``.send()`` sends in, or with ``throw`` the
    exception ``.throw()`` throws in where it waits."""

    close: bool = False
    throw: bool = False
    nbuffers: Annotated[int, Field(ge=0, le=1)] = 0

    @model_validator(mode="after")
    def _buffers(self, info: ValidationInfo) -> Next:
        came = (info.context or {}).get("nbuffers")
        if came is not None and came != self.nbuffers:
            raise ValueError(f"'nbuffers' says {self.nbuffers} but {came} came")
        if self.throw and not self.nbuffers:
            raise ValueError("'throw' needs the exception (one buffer)")
        return self


class Keepalive(Request, Placement):
    """This client session (``session`` / ``namespace``) is still there; ``id`` is new each
    time (the broker routes it like any request) and nothing answers it.

    ``late``: this connection takes the session's output produced between its requests as
    it comes (``worker_image/late_listeners.py``), and has read this many events of the
    stream ``late_stream`` (the ``id`` those events carry; None before the first): its
    credit, the worker sends while fewer than ``LATE_WINDOW`` are unread.  Their ``seq``
    counts from 0 in each stream.  Old workers ignore both fields."""

    late: Annotated[int, Field(ge=0)] | None = None
    late_stream: Short | None = None


PathText = Annotated[str, StringConstraints(max_length=PATH_MAX)]
Count = Annotated[int, Field(ge=0)]


# client -> worker: files (rexec_magic/transfer.py -> worker_image/files.py)
class PutOpen(Request):
    path: PathText = "."  # where, on the worker (relative: in its folder)
    name: Short = "upload"  # the item's own name
    dir: bool = False


class PutFile(Request):
    rel: PathText = ""  # the file's path inside the item ("": the item itself)
    size: Count = 0
    mode: Count = 0
    dir: bool = False


class PutChunk(Request):
    pass


class PutClose(Request):
    pass


class GetOpen(Request):
    path: PathText


class FileCancel(Request):
    pass


# both directions: the bytes the receiver has written so far (the first answer to PUT_OPEN
# also names the resolved destination)
class FileAck(Request):
    received: Count = 0
    path: PathText = ""


# client -> worker: completion and ``obj?`` (worker_image/introspect.py)
class Complete(Request, Placement):
    code: str
    cursor_pos: Count = 0


class Introspect(Request, Placement):
    name: PathText
    detail_level: Count = 0


# broker -> client
class Welcome(Header):
    user: Id
    username: Short = ""
    worker: Json | None = None
    session_key: Short  # hex; proves every later message of this connection (MAC)
    max_header_bytes: int = MAX_HEADER_BYTES
    uploads: bool = False  # large requests' buffers may go ahead (UPLOAD); older brokers: no


class Denied(Header):
    message: str = "denied"


class Pong(Header):
    t: float | None = None
    worker: Json | None = None
    pending: list[Short] = []
    # Bytes of a large event for this connection behind this PONG (unasked, ``t`` None):
    # it crosses two connections (worker to broker, broker to here).
    sending: NonNegativeInt = 0


class Fail(Header):
    id: Short | None = None
    code: Short = ""
    message: str = ""


# worker -> client
class Event(Header):
    """The fields every event of a request has: its id and (numbered events) its seq."""

    id: Id
    seq: int = 0
    # Output produced after the cell that made it ended (threads, timers, child processes):
    # on the notebook's listener connection as it comes, or at the top of its next request.
    late: bool = False
    # (Late output on a listener's connection: written after this request of its notebook
    # began, so shown after that request's own output.)
    after: Short | None = None
    # (Late output on a listener's connection: the request that ended last in the executor
    # that wrote it.  Shown as the notebook's own output only in that request's cell; a
    # background process of a cell whose executor died wrote it under a later cell.)
    of: Short | None = None
    # (With ``of``: made by an asyncio task or callback of that request, ``outbox.MADE_BY``;
    # shown in that request's cell while it is live, as ipykernel keeps a task's parent.)
    task: bool = False


class Accepted(Event):
    """The request runs.  ``late_stream`` / ``late_count``: the notebook's listener for
    late output (``Keepalive.late``) is sent that many events of that stream before this
    request's own output, which the client shows after them; what the listener gets from
    ``late_count`` on came after this request (it is shown after the request's output)."""

    late_stream: Short | None = None
    late_count: int | None = None
    # The worker's clock (``time.time()``) as it started the request, as ``Done.at``: the
    # client's estimate of that clock (``unheard.WorkerClock``) from its first request on.
    at: float | None = None


class Stream(Event):
    name: Short = "stdout"
    text: str = ""
    # (Late output on a listener's connection: the text ends inside a line whose rest comes
    # in the next event of the stream, ``executors.text_pieces``; shown with it.)
    cut: bool = False


class Display(Event):
    data: Json | None = None
    metadata: Json | None = None
    transient: Json | None = None
    clear: bool = False
    wait: bool = False
    update: bool = False


class Result(Event):
    data: Json | None = None
    metadata: Json | None = None
    execution_count: int | None = None


class Error(Event):
    ename: str = "Error"
    evalue: str = ""
    traceback: list[str] = []
    nbuffers: int = 0
    # Raised and caught inside IPython while the cell went on (a ``display()`` whose
    # ``__repr__`` raised, a figure that failed to draw): shown where it happened, as
    # ipykernel shows it; not the cell's own error.
    shown: bool = False
    # The cell's value failed to display (its ``__repr__`` raised): whoever shows the value
    # shows this (``%remote expr`` leaves both to the notebook when the value comes back).
    of_result: bool = False


_SURROGATE = re.compile("[\ud800-\udfff]")
_E = TypeVar("_E", bound="Event")


def without_surrogates(event: _E) -> _E:
    """``event`` with each lone surrogate in its strings (a ``display(Markdown('m\\ud800'))``,
    a file name ``os.fsdecode`` decoded) made U+FFFD, as the worker's stdout makes them:
    the kernel's JSON cannot carry one, and showing it failed as "rexec internal error",
    the cell's output went on in the next cell (tester AO, 2 of 2).  The event itself
    when it has none (one regular-expression scan of each string)."""
    fields = {name: getattr(event, name) for name in type(event).model_fields}
    changed = {name: _replaced(value) for name, value in fields.items() if _has(value)}
    return event.model_copy(update=changed) if changed else event


def _has(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has(k) or _has(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_has, value))
    return False


def _replaced(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replaced(k): _replaced(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v) for v in value]
    return value


class Yield(Event):
    nbuffers: int = 0


class Done(Event):
    status: Short
    vars: Annotated[list[PulledEntry], BeforeValidator(_none_as_empty)] = []
    skipped: list[Json] = []
    duration: float = 0.0
    # When it ended, by the worker's clock (``time.time()``, seconds).  ``ages``: in a
    # shared namespace, the version of each name the request exchanged (sent, held, sent
    # back, deleted): when that value (or deletion) was made there, or, for one held as
    # sent again after a loss, the version it had; the notebooks record it
    # (``Execute.restore_at``), ``at`` where it names none.
    at: float | None = None
    ages: dict[Short, float] = Field(default_factory=dict)
    message: str = ""
    execution_count: int | None = None
    # The namespace sync (rexec_magic/sync.py): watched names that changed (rebound or in
    # place) and that the cell deleted; the name holding the last expression's value when it
    # was not sent again; pushed values the worker could not load; for RESEND, the ``have``
    # names the worker lacks; pushes a shared namespace did not apply, as it held a value
    # (or a deletion) of them that the notebook had not seen (the newer one comes back).
    changed: Names = Field(default_factory=list)
    deleted: Names = Field(default_factory=list)
    conflicts: Names = Field(default_factory=list)
    # Pushes of missed names applied over the value a request the notebook never heard the
    # end of left there, since the notebook changed them after that request ended
    # (``Execute.missed_after``).
    superseded: Names = Field(default_factory=list)
    # Of ``conflicts``, those whose value there code running on the worker changed since this
    # notebook last had it (a thread, an asyncio task, a callback; a cell through a name its
    # text does not show): no other notebook, no request it did not hear the end of.
    changed_there: Names = Field(default_factory=list)
    # Names this notebook had exchanged that were unbound there before this request began
    # (another notebook of a shared namespace, or code running there, deleted them): of
    # ``deleted``, the ones this request did not delete itself.
    deleted_there: Names = Field(default_factory=list)
    result_name: Short | None = None
    unloaded: list[Unloaded] = Field(default_factory=list)
    missing: Names = Field(default_factory=list)
    exit: bool = False  # exit() in the cell ended its executor
    # An interrupt reached the cell's (or the call's) code, which went on to its end (it
    # caught the KeyboardInterrupt, or the interrupt stopped only a process it waited for,
    # as ``os.system`` does): it ended as that code says, as it would in a local kernel.
    interrupt_handled: bool = False
    # The cell's value could not be shown (a ``_repr_*_`` raised: the error came ``shown``):
    # the value and what rendering worked still come; a notebook shows them, then fails the
    # cell, as ipykernel does.
    display_failed: bool = False
    # Its buffers went by the bulk side channel (``BULK_REF``): this id stands for them
    # until the broker puts them back.
    bulk: Short = ""
    # A script's request only: the executor's non-daemon threads still running as it ended
    # (a ``threading.Thread`` or ``Timer`` its code started).  Python waits for such threads
    # before a script exits; the script's end waits for these too (``join_remote_threads``).
    threads: int = 0
    # LOST only: how the executor ended, the words ``message`` gives in parentheses ("exit
    # code 7", "killed by signal 9 (SIGKILL)", "killed: out of memory"), for a client that
    # words the loss itself (a script's end: ``session.join_remote_threads``).
    ended: str = ""
    # LOST only: the executor's exit status as ``subprocess`` gives it (7 for
    # ``os._exit(7)``, -9 for SIGKILL), for a script whose end then ends as it would have
    # locally (``session.join_remote_threads``); None from a worker that does not say.
    returncode: int | None = None

    @model_validator(mode="after")
    def _buffers(self, info: ValidationInfo) -> Done:
        if not (self.bulk and (info.context or {}).get("nbuffers") == 1):
            _check_buffers(self.vars, info)
        return self


class Notice(Event):
    """What a request waits for (its executor starting, the previous cell), or news from
    before it that the notebook must hear first.

    ``about``: ``starting``, ``previous``, ``stopped`` (its executor is stopped by SIGSTOP:
    it takes an interrupt when resumed, so the client keeps waiting for it), ``lost`` (the
    namespace was lost while no request ran: shown as a warning), ``late`` (a request the
    user stopped waiting for ended later and changed names: a warning too), ``packing``
    (what an interrupted request bound is being packed), ``grace`` (an interrupted request
    has not stopped after ``NOTICE_AFTER_S``: said by the worker, or by the client for a
    silent one), made by the client: ``broker``
    (the broker is silent), ``taking`` (the worker has not taken the request), ``worker``
    (it waits for the worker to come back, or to say what became of a request), or empty.

    ``over``: the condition the notice before it under the same ``about`` said ("is stopped
    (SIGSTOP) and not responding") has ended, and this is that note's last word ("was
    stopped (SIGSTOP); it went on"): the notebook updates the note in place and waits on it
    no longer.  ``resumed`` (the worker resumed a stopped executor for an interrupt) ends
    the ``stopped`` note so.  Every note kept current while a request waits ends so:
    "waited 5 s for ..." or "stopped waiting after 5 s for ..." (a request that ended
    first), "what it bound was packed (in 3 s)"; the client ends a ``grace`` note as the
    request ends: ``grace_over_sentence``."""

    text: str = ""
    about: str = ""
    over: bool = False
    # ``lost`` only, where the executor died by itself while idle: its exit status as
    # ``subprocess`` gives it (7, -9), as ``Done.returncode``.
    returncode: int | None = None


# How long the client waits for its listener to show more of the late output that comes
# before a request's own (``Accepted.late_count``).
LATE_CATCH_UP_S = 2.0
# How long a listener holds late output written after a request (``Event.after``, ``of``)
# while the client still shows that request's own: one keepalive interval (its keepalives
# wait meanwhile; the worker gives up on a kernel after ORPHAN_AFTER_PINGS of them).
LATE_BEHIND_REQUEST_S = CLIENT_KEEPALIVE_S


class InspectReply(Event):
    worker: Json = {}
    variables: list[Json] = []
    executors: list[Json] = Field(default_factory=list)  # the user's executors (``Heartbeat``)
    note: str = ""
    # For ``Inspect.fate_of``: ``state`` (``FATE_*``), and for an ended request ``ran_s`` (its
    # run, seconds), ``at`` (its end, the worker's ``time.time()``), ``message`` (a death's);
    # asked with ``Inspect.seen``: ``resent`` (its output events sent again, ahead of this
    # reply) and ``missing`` (events after ``seen`` the worker did not keep: output lost).
    fate: Json = {}


# The events of a request a worker keeps until its client acknowledges them and sends again
# to a client that asks after a broker restart (``Inspect.seen``): its output as shown.  Not
# a NOTICE (what it waited for, then), an ERROR or DONE (the fate says how it ended), nor a
# generator's item (its loop has moved on).
RESENT_KINDS = frozenset({Kind.STREAM, Kind.DISPLAY, Kind.RESULT})
RESENT_MAX_BYTES = 16 << 20  # kept of one request (headers and buffers); the oldest go first

# What became of a request on a worker process (``InspectReply.fate["state"]``).
FATE_RAN = "ran"  # its code ran to its end
FATE_RAISED = "raised"  # its code raised
FATE_STOPPED = "stopped"  # interrupted (its client's Ctrl-C, or the worker's at a broker restart)
FATE_LOST = "lost"  # its executor died or was restarted during it: the namespace was lost
FATE_NOT_STARTED = "not_started"  # handed to its executor, stopped before its code began
FATE_NOT_RUN = "not_run"  # never reached this process, or dropped unstarted: run it again
FATE_PENDING = "pending"  # still waiting its turn or running


class FileMeta(Event):
    rel: PathText = ""
    size: Count = 0
    mode: Count = 0
    dir: bool = False
    total: Count | None = None  # on the item itself: the bytes of the whole download


class FileChunk(Event):
    pass


class FileDone(Event):
    path: PathText = ""
    files: Count = 0
    bytes: Count = 0


class FileError(Event):
    message: str = ""


class CompleteReply(Event):
    matches: list[str] = []
    cursor_start: Count = 0
    cursor_end: Count = 0


class IntrospectReply(Event):
    found: bool = False
    data: Json = {}


# worker -> broker
class Register(Header):
    user: Id
    nonce: Id
    secret: Secret
    python: Short = ""
    dill: Short = ""
    pid: Annotated[int, Field(ge=0, le=2**31)] | None = None
    # Random per worker process (a new one means a new namespace; a pid cannot tell that
    # inside a container).  Unchanged when the same process registers again.
    instance: Short = ""
    pool: bool = False
    # It fetches a large request's buffers from the broker itself (``BULK_FETCH_REF``).
    fetch: bool = False
    # It wants CLIENT_CLOSED for its user's connections that close.
    client_closed: bool = False


class Heartbeat(Header):
    busy: bool = False
    # One row per executor ({notebook, state, memory, pid, uptime_s, ...}), for
    # %rexec_status and the sidebar.
    executors: list[Json] = Field(default_factory=list)
    # Bytes of the large message that follows on this connection, and the client handle
    # (hex) it goes to (told with an unasked PONG).
    sending: NonNegativeInt = 0
    sending_to: Short = ""


# executor -> broker
class Bulk(Header):
    user: Id
    id: Id


class BulkChannel(Header):
    """Supervisor -> executor: where to upload (empty url: nowhere), as whom, the key (hex)."""

    url: Short = ""
    user: Short = ""
    key: Short = ""


class BulkReply(Header):
    id: Id
    message: str = ""


class Uploaded(Header):
    id: Id
    set: Short


# broker -> worker
class Registered(Header):
    key: Short  # hex; proves every later message of this worker connection (MAC)
    # It sends CLIENT_CLOSED (the worker asked, with ``Register.client_closed``).
    client_closed: bool = False
    # It closes a client connection whose ZMTP pings went unanswered this long (s;
    # ``CLIENT_CONNECTION_TIMEOUT_S``); 0: it does not (an older broker), so a kernel's
    # silence is all the worker can go by.
    client_timeout_s: NonNegativeFloat = 0.0
    # The broker process (random per start; "" from an older one): a worker registering
    # again with the same one (it dropped the worker as silent: stopped, starved) sends on
    # what its running requests wrote meanwhile, as their clients' connections are still
    # there; with another one (it restarted) nobody can receive it.
    broker: Short = ""


class Rejected(Header):
    message: str = ""


class Assign(Header):
    user: Id
    nonce: Id
    secret: Secret


class ClientClosed(Header):
    handle: Short  # hex: the client handle (the route its requests came with)


# control port
class Admin(Header):
    """Every control request carries the admin secret."""

    secret: Annotated[str, StringConstraints(max_length=SECRET_MAX)] = ""


class Claim(Admin):
    pool: Id
    user: Id
    nonce: Id
    worker_secret: Secret


# The model each kind's receiver reads (kinds without fields have none).
HEADERS: dict[str, type[Header]] = {
    Kind.HELLO: Hello,
    Kind.PING: Ping,
    Kind.EXECUTE: Execute,
    Kind.CALL: Call,
    Kind.INTERRUPT: Interrupt,
    Kind.INSPECT: Inspect,
    Kind.ACK: Ack,
    Kind.NEXT: Next,
    Kind.KEEPALIVE: Keepalive,
    Kind.PUT_OPEN: PutOpen,
    Kind.PUT_FILE: PutFile,
    Kind.PUT_CHUNK: PutChunk,
    Kind.PUT_CLOSE: PutClose,
    Kind.GET_OPEN: GetOpen,
    Kind.FILE_ACK: FileAck,
    Kind.FILE_CANCEL: FileCancel,
    Kind.COMPLETE: Complete,
    Kind.INTROSPECT: Introspect,
    Kind.WELCOME: Welcome,
    Kind.DENIED: Denied,
    Kind.PONG: Pong,
    Kind.FAIL: Fail,
    Kind.ACCEPTED: Accepted,
    Kind.STREAM: Stream,
    Kind.DISPLAY: Display,
    Kind.RESULT: Result,
    Kind.ERROR: Error,
    Kind.YIELD: Yield,
    Kind.DONE: Done,
    Kind.INSPECT_REPLY: InspectReply,
    Kind.NOTICE: Notice,
    Kind.FILE_META: FileMeta,
    Kind.FILE_CHUNK: FileChunk,
    Kind.FILE_DONE: FileDone,
    Kind.FILE_ERROR: FileError,
    Kind.COMPLETE_REPLY: CompleteReply,
    Kind.UPLOAD: Request,
    Kind.UPLOADED: Uploaded,
    Kind.INTROSPECT_REPLY: IntrospectReply,
    Kind.REGISTER: Register,
    Kind.HEARTBEAT: Heartbeat,
    Kind.REGISTERED: Registered,
    Kind.REJECTED: Rejected,
    Kind.ASSIGN: Assign,
    Kind.CLIENT_CLOSED: ClientClosed,
    Kind.STATUS: Admin,
    Kind.SHUTDOWN: Admin,
    Kind.CLAIM: Claim,
}
