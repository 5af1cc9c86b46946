"""The worker's side of ``%rexec_put`` / ``%rexec_get``, and its own working folder.

File messages arrive in the worker's supervisor (``Transfers.handle``, one of its client
handlers): files are the worker's, not a namespace's, so no executor is involved and a
transfer goes on while cells run.  The work is done off the supervisor's loop, so a slow disk
never delays heartbeats or a running cell's output (replies go back through the loop,
``supervisor.ThreadSender``):

* uploads: one writer thread takes PUT_* messages in order, writes each chunk into a
  ``fileio.Staging`` and acknowledges the bytes written (FILE_ACK), so the client never has
  more than ``FILE_WINDOW_BYTES`` in flight; PUT_CLOSE renames the staged item into place;
* downloads: one thread per GET_OPEN reads the file(s) a chunk at a time and waits for the
  client's FILE_ACKs whenever ``FILE_WINDOW_BYTES`` are unacknowledged.

Any size the disk allows goes through with a few MB of memory.  Relative paths mean the
worker's folder (``enter_work_dir``).  An upload the client abandoned (no message for
``STALE_S``) is removed.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from rexec_magic import fileio, protocol
from rexec_magic.contract import Env, folder_name
from rexec_magic.protocol import (
    FILE_CHUNK_BYTES,
    Kind,
    Message,
)
from rexec_magic.recent import Recent
from worker_image.outbox import EventSender, Target

log = logging.getLogger(__name__)

WHERE = "on the worker"
STALE_S = 120.0  # an upload with no message for this long was abandoned by its client
MAX_FAILED = 1000  # failed upload ids remembered (their late messages are dropped)
ACK_WAIT_S = 120.0  # a download whose client stops acknowledging for this long is dropped

PUT_KINDS = frozenset({Kind.PUT_OPEN, Kind.PUT_FILE, Kind.PUT_CHUNK, Kind.PUT_CLOSE})
KINDS = PUT_KINDS | {Kind.GET_OPEN, Kind.FILE_ACK, Kind.FILE_CANCEL}


def enter_work_dir(user: str | None = None, env: dict[str, str] | None = None) -> str:
    """``cd`` into the worker's own folder and return it.

    ``$REXEC_WORK_DIR`` is the folder (the local backend: the user's folder in ``work`` under
    the state dir); a warm-pool worker gets ``$REXEC_WORK_ROOT`` instead and moves into
    ``<root>/<user>`` when it is assigned to ``user``.  On Kubernetes neither is set: the
    pod's ``workingDir`` already is the work volume.
    """
    env = os.environ if env is None else env
    folder = env.get(Env.WORK_DIR)
    if user is not None and env.get(Env.WORK_ROOT):
        folder = str(Path(env[Env.WORK_ROOT]) / folder_name(user))
    if folder:
        try:
            Path(folder).mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chdir(folder)
        except OSError as exc:
            log.warning("cannot use %s as the working folder: %s", folder, exc)
    return os.getcwd()


class _Upload:
    def __init__(self, staging: fileio.Staging) -> None:
        self.staging = staging
        self.window = fileio.ReceiveWindow()
        self.touched = time.monotonic()


class _Download:
    def __init__(self) -> None:
        self.acked = 0
        self.cancelled = False
        self.cv = threading.Condition()


class Transfers:
    """All file transfers of one worker."""

    def __init__(self, outbox: EventSender) -> None:
        self.outbox = outbox
        self._uploads: dict[str, _Upload] = {}
        # Uploads that already got FILE_ERROR: the rest of their messages is dropped.  The
        # newest MAX_FAILED only (insertion order), so a long-lived worker does not grow.
        self._failed = Recent(MAX_FAILED)
        self._downloads: dict[str, _Download] = {}
        self._inbox: queue.Queue[tuple[Target, Message]] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="rexec-files", daemon=True)
        self._writer.start()

    # ----------------------------------------------------------------- I/O thread
    def handle(self, route: bytes, msg: Message) -> bool:
        """Take a file message (True), or leave it to the caller (False)."""
        if msg.kind not in KINDS:
            return False
        request_id = msg.read(protocol.Request).id  # a bad one: dropped, logged by the caller
        target = Target(route, request_id)
        if msg.kind in PUT_KINDS:
            self._inbox.put((target, msg))
        elif msg.kind == Kind.GET_OPEN:
            if request_id in self._downloads:  # its acks would go to the other one
                message = "A download with this id is already under way."
                self._reply(target, Kind.FILE_ERROR, {"message": message})
                return True
            self._downloads[request_id] = _Download()  # before any ack can come back
            thread = threading.Thread(
                target=self._send_files, args=(target, msg), name="rexec-get", daemon=True
            )
            thread.start()
        elif msg.kind == Kind.FILE_ACK:
            down = self._downloads.get(request_id)
            if down is not None:
                with down.cv:
                    down.acked = max(down.acked, msg.read(protocol.FileAck).received)
                    down.cv.notify()
        else:  # FILE_CANCEL: either direction
            self._inbox.put((target, msg))
            down = self._downloads.get(request_id)
            if down is not None:
                with down.cv:
                    down.cancelled = True
                    down.cv.notify()
        return True

    def active(self) -> bool:
        """A transfer is under way: the worker is busy (the idle culler must not stop it)."""
        return bool(self._uploads or self._downloads)

    def _reply(self, target: Target, kind: str, header: dict[str, Any], buffers=()) -> None:
        self.outbox.event(target, kind, {"id": target.id, **header}, buffers, numbered=False)

    # ----------------------------------------------------------------- uploads (writer)
    def _write_loop(self) -> None:
        while True:
            try:
                target, msg = self._inbox.get(timeout=STALE_S / 4)
            except queue.Empty:
                self._drop_stale()
                continue
            try:
                self._on_put(target, msg)
            except fileio.TransferError as exc:
                log.warning("upload %s failed: %s", target.id, exc)  # (the notebook's sentence)
                self._uploads.pop(target.id, None)
                self._failed.add(target.id)
                self._reply(target, Kind.FILE_ERROR, {"message": str(exc)})
            except Exception as exc:  # never let one bad upload stop the writer
                log.exception("upload %s failed", target.id)
                up = self._uploads.pop(target.id, None)
                if up is not None:
                    up.staging.abort()
                self._failed.add(target.id)
                message = f"The upload failed on the worker: {type(exc).__name__}: {exc}."
                self._reply(target, Kind.FILE_ERROR, {"message": message})

    def _on_put(self, target: Target, msg: Message) -> None:
        rid = target.id
        if msg.kind == Kind.PUT_OPEN:
            opening = msg.read(protocol.PutOpen)
            where = opening.path or "."
            into = fileio.names_a_folder(where)
            final = fileio.target_for(fileio.resolve(where), opening.name, "upload", into)
            staging = fileio.Staging(final, opening.dir, rid[:12], WHERE)
            self._uploads[rid] = _Upload(staging)
            log.info("upload %s to %s", rid, final)
            self._reply(target, Kind.FILE_ACK, {"path": str(final), "received": 0})
            return
        if msg.kind == Kind.FILE_CANCEL:
            up = self._uploads.pop(rid, None)
            if up is not None:
                up.staging.abort()
            return
        up = self._uploads.get(rid)
        if up is None:
            if rid not in self._failed:
                raise fileio.TransferError("The worker has no upload with this id.")
            return  # the rest of an upload that already failed
        up.touched = time.monotonic()
        if msg.kind == Kind.PUT_FILE:
            item = msg.read(protocol.PutFile)
            up.staging.begin(item.rel, item.dir, item.mode)
            ack = up.window.item()
            if ack is not None:
                self._reply(target, Kind.FILE_ACK, {"received": ack})
        elif msg.kind == Kind.PUT_CHUNK:
            nbytes = up.staging.write(msg.buffers)
            self._reply(target, Kind.FILE_ACK, {"received": up.window.chunk(nbytes)})
        elif msg.kind == Kind.PUT_CLOSE:
            final = up.staging.commit()
            del self._uploads[rid]
            done = {"path": str(final), "files": up.staging.files, "bytes": up.staging.bytes}
            self._reply(target, Kind.FILE_DONE, done)

    def _drop_stale(self) -> None:
        now = time.monotonic()
        for rid, up in list(self._uploads.items()):
            if now - up.touched > STALE_S:
                log.info("upload %s abandoned by its client: removed", rid)
                up.staging.abort()
                del self._uploads[rid]

    # ----------------------------------------------------------------- downloads
    def _send_files(self, target: Target, msg: Message) -> None:
        down = self._downloads[target.id]
        try:
            source = fileio.resolve(msg.read(protocol.GetOpen).path)
            try:
                entries = list(fileio.walk(source))
            except OSError as exc:
                raise fileio.TransferError(fileio.error_sentence(exc, source, WHERE)) from None
            sent = files = 0
            window = fileio.SendWindow()
            total = sum(e.size for e in entries)
            for entry in entries:
                meta = {"rel": entry.rel, "size": entry.size, "mode": entry.mode}
                if not entry.rel:  # the item itself: the receiver's progress bar needs the total
                    meta["total"] = total
                self._wait_window(down, window.charge())
                self._reply(target, Kind.FILE_META, {**meta, "dir": entry.is_dir})
                if entry.is_dir:
                    continue
                files += 1
                try:
                    for data in fileio.read_chunks(entry, FILE_CHUNK_BYTES, WHERE):
                        self._wait_window(down, window.charge(len(data)))
                        self._reply(target, Kind.FILE_CHUNK, {}, [data])
                        sent += len(data)
                except OSError as exc:
                    raise fileio.TransferError(
                        fileio.error_sentence(exc, entry.path, WHERE)
                    ) from None
            done = {"path": str(source), "files": files, "bytes": sent}
            self._reply(target, Kind.FILE_DONE, done)
        except fileio.TransferError as exc:
            log.warning("download %s failed: %s", target.id, exc)
            self._reply(target, Kind.FILE_ERROR, {"message": str(exc)})
        except _Cancelled:
            log.info("download %s cancelled", target.id)
        except Exception as exc:
            log.exception("download %s failed", target.id)
            message = f"The download failed on the worker: {type(exc).__name__}: {exc}."
            self._reply(target, Kind.FILE_ERROR, {"message": message})
        finally:
            if self._downloads.get(target.id) is down:
                del self._downloads[target.id]

    def _wait_window(self, down: _Download, upto: int) -> None:
        """Block until sending up to ``upto`` (``fileio.SendWindow.charge``) keeps what is
        unacknowledged within the window."""
        deadline = time.monotonic() + ACK_WAIT_S
        with down.cv:
            while fileio.SendWindow.must_wait(upto, down.acked) and not down.cancelled:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Cancelled
                down.cv.wait(left)
            if down.cancelled:
                raise _Cancelled


class _Cancelled(Exception):
    """The client cancelled a download or stopped acknowledging it."""
