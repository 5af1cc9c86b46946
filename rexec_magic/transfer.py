"""The client side of file transfers: upload (``put``) and download (``get``) over the
broker, a chunk per message, with the receiver's acknowledgements keeping at most
``FILE_WINDOW_BYTES`` in flight (see ``worker_image/files.py`` for the worker's side).

Memory stays bounded whatever the size: the sender reads a chunk at a time and waits when the
window is full; the receiver writes each chunk as it comes into a ``fileio.Staging`` and
renames the finished item into place.  Every wait is bounded the way cells are: the broker
is pinged during a silence, and a worker that disappeared raises ``WorkerLost``.  Ctrl-C
cancels the transfer on both sides and leaves nothing half-written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rexec_magic import errors, fileio
from rexec_magic import protocol as P
from rexec_magic.client import RexecClient
from rexec_magic.contract import human_bytes

HERE = "on this machine"
# Called with (bytes done, bytes in all); the caller draws the progress bar.
OnProgress = Callable[[int, int], None]
SILENCE_S = 30.0  # no answer for this long while the broker says the worker lives: give up


class TransferFailed(errors.RexecError):
    """A transfer that could not be done; the message is one sentence."""


@dataclass
class TransferResult:
    path: str  # where the item ended up (on the worker for put, here for get)
    files: int
    bytes: int
    seconds: float


def _no_progress(done: int, total: int) -> None:
    pass


class _Waiter:
    """Wait for a transfer's messages with bounded waits (pings during silences)."""

    def __init__(self, client: RexecClient, req_id: str) -> None:
        self.client = client
        self.req_id = req_id
        self.pings: set[float] = set()  # only our own pings' answers count

    def next(self, timeout_s: float = SILENCE_S) -> P.Message:
        client = self.client
        silent_since = time.monotonic()
        next_ping = silent_since + P.CLIENT_PING_S
        while True:
            now = time.monotonic()
            if now - silent_since > timeout_s:
                raise errors.WorkerLost("The remote worker stopped answering during the transfer.")
            if now >= next_ping:
                client._send(P.Kind.PING, {"t": now})
                self.pings.add(now)
                next_ping = now + P.CLIENT_PING_S
            msg = client._recv(max(0.0, next_ping - now))
            if msg is None:
                if now - client.last_heard > P.BROKER_SILENT_AFTER_S + P.CLIENT_PING_S:
                    client.reset()
                    raise errors.BrokerUnreachable(
                        f"Lost contact with the rexec broker at {client.info.broker_url} "
                        "during the transfer."
                    )
                continue
            if msg.kind == P.Kind.PONG:
                pong = msg.read(P.Pong)
                if pong.t not in self.pings:
                    continue
                self.pings.discard(pong.t)
                client._saw_worker(pong.worker)
                if client.worker is None:
                    raise errors.WorkerLost("The remote worker stopped during the transfer.")
                continue
            if msg.header.get("id") != self.req_id:
                continue
            if msg.kind == P.Kind.FILE_ERROR:
                raise TransferFailed(msg.read(P.FileError).message or "The transfer failed.")
            if msg.kind == P.Kind.FAIL:
                raise client._fail_error(msg)
            return msg


def _expect(msg: P.Message, *kinds: str) -> P.Message:
    if msg.kind not in kinds:
        raise TransferFailed(f"The worker answered {msg.kind!r} during the transfer.")
    return msg


def upload(
    client: RexecClient,
    local: str | Path,
    remote: str | None = None,
    on_progress: OnProgress = _no_progress,
) -> TransferResult:
    """Copy the local file or folder ``local`` to the worker (``remote``: a path there,
    relative to the worker's folder; default: the same name in the worker's folder)."""
    source = fileio.resolve(str(local))
    try:
        entries = list(fileio.walk(source))
    except OSError as exc:
        raise TransferFailed(fileio.error_sentence(exc, local, HERE)) from None
    total = sum(e.size for e in entries)
    client.ensure_hello()
    req_id = client._new_id()
    waiter = _Waiter(client, req_id)
    t0 = time.monotonic()
    name = Path(os.path.normpath(source)).name  # (``..``: the name of the folder above)
    header = {"id": req_id, "path": remote or ".", "name": name, "dir": entries[0].is_dir}
    client._send(P.Kind.PUT_OPEN, header)
    try:
        _expect(waiter.next(), P.Kind.FILE_ACK)
        sent = acked = 0
        window = fileio.SendWindow()

        def wait_window(upto: int) -> None:
            nonlocal acked
            while window.must_wait(upto, acked):
                ack = _expect(waiter.next(), P.Kind.FILE_ACK).read(P.FileAck)
                acked = max(acked, ack.received)

        for entry in entries:
            item = {"id": req_id, "rel": entry.rel, "size": entry.size, "mode": entry.mode}
            wait_window(window.charge())
            client._send(P.Kind.PUT_FILE, {**item, "dir": entry.is_dir})
            if entry.is_dir:
                continue
            try:
                for data in fileio.read_chunks(entry, P.FILE_CHUNK_BYTES, HERE):
                    wait_window(window.charge(len(data)))
                    client._send(P.Kind.PUT_CHUNK, {"id": req_id}, [data])
                    sent += len(data)
                    on_progress(sent, total)
            except (OSError, fileio.TransferError) as exc:
                _cancel(client, req_id)  # (the worker discards what it has of the upload)
                if isinstance(exc, fileio.TransferError):
                    raise TransferFailed(str(exc)) from None
                raise TransferFailed(fileio.error_sentence(exc, entry.path, HERE)) from None
        client._send(P.Kind.PUT_CLOSE, {"id": req_id})
        while True:
            msg = _expect(waiter.next(), P.Kind.FILE_ACK, P.Kind.FILE_DONE)
            if msg.kind == P.Kind.FILE_DONE:
                done = msg.read(P.FileDone)
                files = sum(not e.is_dir for e in entries)
                if (done.files, done.bytes) != (files, sent):
                    raise TransferFailed(
                        f"The upload was incomplete: {files} files ({sent} bytes) were sent "
                        f"and the worker got {done.files} ({done.bytes} bytes)."
                    )
                on_progress(total, total)
                return TransferResult(done.path, done.files, done.bytes, time.monotonic() - t0)
    except BaseException as exc:
        if not isinstance(exc, TransferFailed | errors.BrokerUnreachable):
            _cancel(client, req_id)
        raise


def download(
    client: RexecClient,
    remote: str,
    local: str | Path | None = None,
    on_progress: OnProgress = _no_progress,
) -> TransferResult:
    """Copy the worker's file or folder ``remote`` (relative: in the worker's folder) here
    (``local``: a path; default: the same name in the current folder)."""
    client.ensure_hello()
    req_id = client._new_id()
    waiter = _Waiter(client, req_id)
    t0 = time.monotonic()
    client._send(P.Kind.GET_OPEN, {"id": req_id, "path": remote})
    staging: fileio.Staging | None = None
    received = total = files = 0
    window = fileio.ReceiveWindow()
    try:
        while True:
            msg = _expect(waiter.next(), P.Kind.FILE_META, P.Kind.FILE_CHUNK, P.Kind.FILE_DONE)
            if msg.kind == P.Kind.FILE_META:
                meta = msg.read(P.FileMeta)
                is_dir, mode = meta.dir, meta.mode
                if staging is None:  # the item itself comes first
                    total = meta.total or meta.size
                    where = str(local) if local is not None else "."
                    name = PurePosixPath(str(remote).rstrip("/")).name
                    into = fileio.names_a_folder(where)
                    final = fileio.target_for(fileio.resolve(where), name, "download", into)
                    staging = fileio.Staging(final, is_dir, req_id[:12], HERE)
                staging.begin(meta.rel, is_dir, mode)
                files += not is_dir
                ack = window.item()
                if ack is not None:
                    client._send(P.Kind.FILE_ACK, {"id": req_id, "received": ack})
            elif msg.kind == P.Kind.FILE_CHUNK:
                if staging is None:
                    raise TransferFailed("File data came before the file it belongs to.")
                nbytes = staging.write(msg.buffers)
                received += nbytes
                ack = window.chunk(nbytes)
                client._send(P.Kind.FILE_ACK, {"id": req_id, "received": ack})
                on_progress(received, total)
            else:  # FILE_DONE
                if staging is None:
                    raise TransferFailed("The worker sent nothing.")
                done = msg.read(P.FileDone)
                if (done.files, done.bytes) != (files, received):
                    raise TransferFailed(
                        f"The download was incomplete: the worker sent {done.files} files "
                        f"({done.bytes} bytes) and {files} ({received} bytes) arrived."
                    )
                path = staging.commit()
                on_progress(received, total)
                return TransferResult(str(path), files, received, time.monotonic() - t0)
    except fileio.TransferError as exc:
        _cancel(client, req_id)
        raise TransferFailed(str(exc)) from None
    except BaseException as exc:
        if staging is not None:
            staging.abort()
        if not isinstance(exc, TransferFailed | errors.BrokerUnreachable):
            _cancel(client, req_id)
        raise


def _cancel(client: RexecClient, req_id: str) -> None:
    try:
        client._send(P.Kind.FILE_CANCEL, {"id": req_id})
    except Exception:  # noqa: S110 - the connection may be gone; the worker cleans up anyway
        pass


def progress_text(verb: str, name: str, done: int, total: int | None, width: int = 24) -> str:
    """``Uploading data.bin  [████████░░░░░░░░]  45.0 MB of 100.0 MB (45%)``; before the
    size is known (``total`` None), ``Uploading data.bin  [░░░░░░░░░░░░░░░░]  starting``
    (not "0 B of 0 B (100%)", which reads as done)."""
    if total is None:
        return f"{verb} {name}  [{'░' * width}]  starting"
    frac = done / total if total else 1.0
    filled = int(round(frac * width))
    bar = "█" * filled + "░" * (width - filled)
    return f"{verb} {name}  [{bar}]  {human_bytes(done)} of {human_bytes(total)} ({frac:.0%})"


def summary(verb: str, result: TransferResult, source: str) -> str:
    files = f"{result.files} file{'s' if result.files != 1 else ''}"
    return (
        f"{verb} {source} to {result.path} ({human_bytes(result.bytes)}, {files}) "
        f"in {result.seconds:.1f} s."
    )
