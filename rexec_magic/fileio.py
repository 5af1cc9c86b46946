"""The file side of ``%rexec_put`` / ``%rexec_get``, shared by the client and the worker.

Whoever *receives* files (the worker for a put, the kernel for a get) writes them into a
staging path next to the target (``.NAME.rexec-ID.tmp``) and renames it into place only when
the last byte is written, so a reader never sees half a file or half a folder, and an aborted
transfer leaves nothing behind.  Whoever *sends* walks the source with ``walk``.  Every
OSError becomes one sentence (``error_sentence``) naming the path and the side it happened
on: a full disk, a missing permission, a missing file.  Both sides count the transfer's
window the same way (``SendWindow``, ``ReceiveWindow``).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from rexec_magic.protocol import FILE_MESSAGE_COST, FILE_WINDOW_BYTES


class TransferError(Exception):
    """A transfer that cannot go on; the message is one sentence for the user."""


def error_sentence(exc: OSError, path: str | os.PathLike, where: str) -> str:
    """One sentence for an OSError met while reading or writing ``path`` (``where``: "on
    the worker" or "here")."""
    name = str(path)
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"The disk {where} is full: {name} could not be written completely."
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Permission denied {where} for {name}."
    if code == errno.ENOENT:
        return f"{name} does not exist {where}."
    if code in (errno.ENOTDIR, errno.EEXIST):  # (EEXIST: making a folder where a file is;
        # it read "could not be used: File exists", tester BF)
        return f"A part of {name} is not a folder {where}."
    if code == errno.EISDIR:
        return f"{name} is a folder {where}, not a file."
    return f"{name} could not be used {where}: {exc.strerror or exc}."


def resolve(path: str, base: Path | None = None) -> Path:
    """``~`` expanded; a relative path is relative to ``base`` (default: the current folder,
    which on the worker is its own working folder)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base or Path.cwd()) / p


def safe_rel(rel: str) -> PurePosixPath:
    """A path inside a transferred folder; never absolute, never climbing out with ``..``."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise TransferError(f"Refused the path {rel!r}: it leaves the transferred folder.")
    return pure


@dataclass
class Entry:
    """One item of a transfer: ``rel`` inside the source ("" for the source itself)."""

    rel: str
    path: Path
    is_dir: bool
    size: int
    mode: int
    mtime_ns: int = 0  # when it was walked: a file changed since is not sent (``read_chunks``)


def walk(source: Path) -> Iterator[Entry]:
    """The source itself, then (for a folder) every folder and file under it, sorted."""
    st = source.stat()
    if not stat.S_ISDIR(st.st_mode):
        yield Entry("", source, False, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        return
    yield Entry("", source, True, 0, stat.S_IMODE(st.st_mode))
    for root, dirs, files in os.walk(source):
        dirs.sort()
        here = Path(root)
        for name in sorted(files) + dirs:
            p = here / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                st = p.stat()  # follow links, as cp -r L does
            rel = p.relative_to(source).as_posix()
            if stat.S_ISDIR(st.st_mode):
                yield Entry(rel, p, True, 0, stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                yield Entry(rel, p, False, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns)


def target_for(dest: Path, source_name: str, default: str, into: bool = False) -> Path:
    """Like cp: into an existing folder the item keeps its name, else it gets ``dest``.  A
    name that is no name of its own (``..``, ``.``, empty, or with a ``/``: a source given
    as ``..``) becomes ``default``: ``dest / ".."`` was the folder above, which the
    transfer then tried to replace (tester P).  ``into``: ``dest`` was written as a folder
    (``names_a_folder``): the item goes into it, made if missing, as rsync does (cp
    refuses; the README's ``%rexec_get results/model.pt checkpoints/`` wrote a file named
    ``checkpoints``, tester BE)."""
    if source_name in ("", ".", "..") or "/" in source_name:
        source_name = default
    return dest / source_name if into or dest.is_dir() else dest


def names_a_folder(path: str) -> bool:
    """Whether ``path`` as the user wrote it names a folder: it ends in ``/`` (``Path``
    drops that, so ask before making one)."""
    return path.endswith(("/", os.sep))


class Staging:
    """Receive a file or a folder at ``target`` atomically (temp path, then rename)."""

    def __init__(self, target: Path, is_dir: bool, tag: str, where: str) -> None:
        self.target = target
        self.is_dir = is_dir
        self.where = where
        self.tmp = target.with_name(f".{target.name}.rexec-{tag}.tmp")
        self.files = 0
        self.bytes = 0
        self._fh: BinaryIO | None = None
        self._current: Path = self.tmp
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if is_dir:
                self.tmp.mkdir()
        except OSError as exc:
            raise TransferError(error_sentence(exc, target, where)) from None

    def _fail(self, exc: OSError, path: Path) -> TransferError:
        self.abort()
        shown = self.target / path.relative_to(self.tmp) if path != self.tmp else self.target
        return TransferError(error_sentence(exc, shown, self.where))

    def begin(self, rel: str, is_dir: bool, mode: int) -> None:
        """Start the next item (closing the one before)."""
        self._close_file()
        path = self.tmp / safe_rel(rel) if rel else self.tmp
        try:
            if is_dir:
                if rel:
                    path.mkdir(parents=True, exist_ok=True)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "wb")  # noqa: SIM115 - closed by _close_file
            self._current = path
            os.chmod(path, (mode & 0o777) or 0o644)
            self.files += 1
        except OSError as exc:
            raise self._fail(exc, path) from None

    def write(self, frames: Iterable[Any]) -> int:
        """Write a chunk message's buffers (bytes, memoryviews or zmq Frames) to the current
        file; returns how many bytes that was."""
        if self._fh is None:
            raise TransferError("File data came before the file it belongs to.")
        written = 0
        for frame in frames:
            data = frame.buffer if hasattr(frame, "buffer") else frame
            try:
                self._fh.write(data)
            except OSError as exc:
                raise self._fail(exc, self._current) from None
            written += len(data)
        self.bytes += written
        return written

    def _close_file(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()  # a full disk may only show here, when buffers are flushed
            except OSError as exc:
                raise self._fail(exc, self._current) from None

    def commit(self) -> Path:
        """Put the received item in place; an existing one is replaced."""
        self._close_file()
        try:
            if not self.is_dir or not self.target.exists():
                os.replace(self.tmp, self.target)
            else:  # a folder cannot replace one in one step: move the old one aside
                old = self.target.with_name(f".{self.target.name}.rexec-old.tmp")
                _remove(old)
                os.replace(self.target, old)
                os.replace(self.tmp, self.target)
                _remove(old)  # (a file the folder replaced too: it was left there, tester BF)
        except OSError as exc:
            raise self._fail(exc, self.tmp) from None
        return self.target

    def abort(self) -> None:
        """Leave nothing behind."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            try:
                self.tmp.unlink()
            except OSError:
                pass


def _remove(path: Path) -> None:
    """Remove ``path``, a folder (with what it holds) or anything else; nothing if missing."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def read_chunks(entry: Entry, chunk: int, where: str) -> Iterator[bytes]:
    """The bytes of file ``entry``, ``chunk`` at a time (bounded memory): exactly its walked
    size, as it was then.  A file written to meanwhile (its size or modification time is not
    what ``walk`` saw, before or after the reading) raises TransferError: its copy would mix
    two versions, or end short or long, and the receiver discards it (it was reported as
    copied: tester P).  A file replaced by another (renamed over) is read whole as it was.
    OSError as ``open`` and ``read`` raise it."""
    with open(entry.path, "rb") as fh:
        _unchanged(fh, entry, where)
        left = entry.size
        while left > 0:
            data = fh.read(min(chunk, left))
            if not data:
                break
            left -= len(data)
            yield data
        if left:
            raise TransferError(_changed(entry, where))
        _unchanged(fh, entry, where)


def _unchanged(fh: BinaryIO, entry: Entry, where: str) -> None:
    st = os.fstat(fh.fileno())
    if st.st_size != entry.size or (entry.mtime_ns and st.st_mtime_ns != entry.mtime_ns):
        raise TransferError(_changed(entry, where))


def _changed(entry: Entry, where: str) -> str:
    return (
        f"{entry.path} changed {where} while it was being sent (it is still being "
        "written?), so its copy was not kept; send it again once it is complete."
    )


class SendWindow:
    """The sender's count of a transfer, in window units (bytes + ``FILE_MESSAGE_COST`` per
    message, see the protocol).  ``charge`` each message before it goes; it may go once
    ``must_wait(charge, acked)`` is False for the receiver's latest FILE_ACK."""

    def __init__(self) -> None:
        self.sent = 0

    def charge(self, nbytes: int = 0) -> int:
        """Count one message carrying ``nbytes``; the total the window must allow."""
        self.sent += nbytes + FILE_MESSAGE_COST
        return self.sent

    @staticmethod
    def must_wait(upto: int, acked: int) -> bool:
        return upto - acked > FILE_WINDOW_BYTES


@dataclass
class ReceiveWindow:
    """The receiver's count, and when it acknowledges: after every chunk, and after each
    eighth of the window of other messages (a folder of many small or empty files), so the
    sender, which stops at ``FILE_WINDOW_BYTES`` unacknowledged, never waits for nothing."""

    received: int = 0  # handled so far, in window units
    acked: int = 0  # what the last FILE_ACK said

    def item(self) -> int | None:
        """A file or folder entry was handled: the FILE_ACK value to send now, or None."""
        self.received += FILE_MESSAGE_COST
        return self._ack() if self.received - self.acked >= FILE_WINDOW_BYTES // 8 else None

    def chunk(self, nbytes: int) -> int:
        """A chunk of ``nbytes`` was written: the FILE_ACK value to send now."""
        self.received += nbytes + FILE_MESSAGE_COST
        return self._ack()

    def _ack(self) -> int:
        self.acked = self.received
        return self.received
