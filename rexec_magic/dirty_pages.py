"""Was a large buffer written since it was hashed?  Linux's write-protect page tracking.

Why: to see in-place changes (``arr += 1``) the worker hashes every value a cell read, after the
cell, and the notebook hashes a value before it ships it.  For a 100 MiB array that is about
5 ms a side at memory speed, twice a trivial cell.  With the kernel tracking writes, "unchanged
since it was hashed" costs one ``ioctl`` of a few microseconds.

How (Linux 6.7 or later): a userfaultfd opened with ``UFFD_FEATURE_WP_ASYNC`` and
``UFFD_FEATURE_WP_UNPOPULATED`` registers the buffer's whole pages in write-protect mode and
protects them.  The kernel resolves a write to a protected page itself (no handler thread, no
signal), clearing the page's uffd-wp bit, also for writes the kernel makes (``readinto``) and
first writes to pages never touched.  ``PAGEMAP_SCAN`` on ``/proc/self/pagemap`` then reports
pages that are ``PAGE_IS_WRITTEN`` or no longer ``PAGE_IS_WPALLOWED`` (unmapped, remapped).
CRIU and Wine's ``GetWriteWatch`` rest on the same pair; the kernel's
``Documentation/admin-guide/mm/pagemap.rst`` and ``userfaultfd.rst`` describe it.  No Python
package wraps it, so the few ``ioctl`` structures are declared here.

What is trusted, all of it checked at each use: the same live object (a weak reference, so the
memory was not freed and reused) exports a writable buffer at the same address and length; the
registration succeeded (the kernel refuses file-backed and shared memory, whose pages another
mapping can change); the partial pages at both ends hold the same bytes (compared, they may be
shared with neighbouring objects); the scan of the whole pages finds none written, unprotected,
unregistered or file-backed.  Anything else (another OS, an older kernel, a container whose
seccomp profile forbids ``userfaultfd``, a read-only buffer, an object without weak references)
is simply hashed, as before.

Cost and policy: the first write to each protected page faults once (about 1-2 us per 4 KiB
page: some tens of ms for a 100 MiB array written whole).  A buffer found written is therefore
un-protected and tracked again only once a hash shows it unchanged; a buffer hashed for the
first time is tracked at once (most large values are read far more than written).

Not seen (documented, not defended): pages of a live buffer zeroed by ``madvise(MADV_DONTNEED)``
and writes by a device into pages pinned before they were protected (io_uring fixed buffers,
RDMA).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Buffers below this are hashed (about 55 us a MiB here): not worth a registration.
MIN_BYTES = 4 * 2**20
# Buffers remembered at once; the least recently used is released beyond this.
MAX_ENTRIES = 512
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ------------------------------------------------------------------ kernel ABI (x86-64, arm64)
def _iowr(kind: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | nr


def _ior(kind: int, nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (kind << 8) | nr


_u64 = ctypes.c_uint64


class _Api(ctypes.Structure):
    _fields_ = [("api", _u64), ("features", _u64), ("ioctls", _u64)]


class _Range(ctypes.Structure):
    _fields_ = [("start", _u64), ("len", _u64)]


class _Register(ctypes.Structure):
    _fields_ = [("range", _Range), ("mode", _u64), ("ioctls", _u64)]


class _WriteProtect(ctypes.Structure):
    _fields_ = [("range", _Range), ("mode", _u64)]


class _Region(ctypes.Structure):
    _fields_ = [("start", _u64), ("end", _u64), ("categories", _u64)]


class _ScanArg(ctypes.Structure):
    _fields_ = [
        (name, _u64)
        for name in (
            "size flags start end walk_end vec vec_len max_pages "
            "category_inverted category_mask category_anyof_mask return_mask"
        ).split()
    ]


_UFFD = 0xAA
_UFFDIO_API = _iowr(_UFFD, 0x3F, ctypes.sizeof(_Api))
_UFFDIO_REGISTER = _iowr(_UFFD, 0x00, ctypes.sizeof(_Register))
_UFFDIO_UNREGISTER = _ior(_UFFD, 0x01, ctypes.sizeof(_Range))
_UFFDIO_WRITEPROTECT = _iowr(_UFFD, 0x06, ctypes.sizeof(_WriteProtect))
_PAGEMAP_SCAN = _iowr(ord("f"), 16, ctypes.sizeof(_ScanArg))
_UFFD_USER_MODE_ONLY = 1
_FEATURE_WP_UNPOPULATED = 1 << 13
_FEATURE_WP_ASYNC = 1 << 15
_REGISTER_MODE_WP = 1 << 1
_WP_MODE_PROTECT = 1
_PAGE_IS_WPALLOWED = 1 << 0
_PAGE_IS_WRITTEN = 1 << 1
_PAGE_IS_FILE = 1 << 2
_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}


class _Kernel:
    """One userfaultfd (write-protect, asynchronous) and ``/proc/self/pagemap`` of this process."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError("write tracking needs Linux")
        nr = _SYS_USERFAULTFD.get(os.uname().machine)
        if nr is None:
            raise OSError(f"no userfaultfd syscall number for {os.uname().machine}")
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        fd = self._libc.syscall(nr, os.O_CLOEXEC | os.O_NONBLOCK | _UFFD_USER_MODE_ONLY)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "userfaultfd")
        self.uffd = int(fd)
        try:
            api = _Api(_UFFD, _FEATURE_WP_ASYNC | _FEATURE_WP_UNPOPULATED, 0)
            self._ioctl(self.uffd, _UFFDIO_API, api, "UFFDIO_API")
            self.pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self.uffd)
            raise
        self._region = _Region()
        self.pid = os.getpid()

    def _ioctl(self, fd: int, request: int, arg: ctypes.Structure, what: str) -> int:
        result = self._libc.ioctl(fd, request, ctypes.addressof(arg))
        if result < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")
        return result

    def protect(self, start: int, end: int) -> None:
        """Register ``[start, end)`` (page aligned) for write-protect and protect it now."""
        self._ioctl(
            self.uffd,
            _UFFDIO_REGISTER,
            _Register(_Range(start, end - start), _REGISTER_MODE_WP, 0),
            "UFFDIO_REGISTER",
        )
        self._ioctl(
            self.uffd,
            _UFFDIO_WRITEPROTECT,
            _WriteProtect(_Range(start, end - start), _WP_MODE_PROTECT),
            "UFFDIO_WRITEPROTECT",
        )

    def release(self, start: int, end: int) -> None:
        """Unregister ``[start, end)``: its pages no longer fault on write."""
        try:
            self._ioctl(self.uffd, _UFFDIO_UNREGISTER, _Range(start, end - start), "UNREGISTER")
        except OSError:
            pass  # already unmapped: nothing is left to release

    def dirty(self, start: int, end: int) -> bool:
        """True when any page of ``[start, end)`` was written, is not protected, or is a file's."""
        interesting = _PAGE_IS_WRITTEN | _PAGE_IS_WPALLOWED | _PAGE_IS_FILE
        arg = _ScanArg(
            size=ctypes.sizeof(_ScanArg),
            start=start,
            end=end,
            vec=ctypes.addressof(self._region),
            vec_len=1,
            max_pages=1,
            category_inverted=_PAGE_IS_WPALLOWED,
            category_anyof_mask=interesting,
            return_mask=interesting,
        )
        return self._ioctl(self.pagemap, _PAGEMAP_SCAN, arg, "PAGEMAP_SCAN") > 0

    def close(self) -> None:
        for fd in (self.uffd, self.pagemap):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class _Entry:
    owner: weakref.ref
    digest: bytes
    start: int  # the whole pages of the buffer: [start, end)
    end: int
    head: bytes  # the bytes before ``start`` and from ``end`` on: pages shared with others
    tail: bytes
    tracked: bool  # protected since ``digest`` was computed
    stable: bool  # the last two hashes were equal (worth protecting again)


class Tracker:
    """Content hashes of large writable buffers, trusted while the kernel saw no write.

    ``digest(view, hash_bytes)`` returns what ``hash_bytes(view)`` would, hashing only when the
    buffer may have changed.  Thread-safe; after ``fork`` the child starts afresh (its pages
    are its own copies, unprotected).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kernel: _Kernel | None = None
        self._failed = False
        self._entries: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        # Weak references of buffers whose object was freed, released at the next use, so
        # freed memory does not stay protected and a VMA split.  Their callback (any thread)
        # is this deque's own ``append``, not a Python function: a SIGINT that came while one
        # ran raised the cell's KeyboardInterrupt in it, which Python drops ("Exception
        # ignored in"), and the interrupted cell ran on.
        self._dead: deque[weakref.ref] = deque()

    @property
    def available(self) -> bool:
        """Whether this process can track writes (opened on first use)."""
        with self._lock:
            return self._open() is not None

    def _open(self) -> _Kernel | None:
        if self._kernel is not None and self._kernel.pid != os.getpid():
            # A forked child (of a process whose tracker has no fork hook): start afresh.
            self._kernel.close()
            self._kernel = None
            self._entries.clear()
            self._dead.clear()
        if self._kernel is None and not self._failed:
            try:
                kernel = _Kernel()
                kernel.dirty(0, PAGE)  # PAGEMAP_SCAN exists (ENOTTY before Linux 6.7)
                self._kernel = kernel
            except (OSError, AttributeError, ValueError) as exc:
                self._failed = True
                log.debug("write tracking unavailable (%s); large values are hashed", exc)
        return self._kernel

    def close(self) -> None:
        """Release every protected buffer and the kernel's descriptors (closing the
        userfaultfd also unregisters all it registered)."""
        with self._lock:
            if self._kernel is not None:
                kernel = self._kernel
                for key in list(self._entries):
                    self._drop(kernel, key)
                kernel.close()
            self._kernel = None
            self._entries.clear()
            self._dead.clear()

    def _after_fork(self) -> None:
        """In a forked child: the descriptor speaks for the parent's memory; start afresh."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        if self._kernel is not None:
            self._kernel.close()
        self._kernel = None
        self._entries.clear()
        self._dead.clear()

    def digest(self, view: memoryview, hash_bytes: Callable[[memoryview], bytes]) -> bytes:
        """``hash_bytes(view)``, from memory when the buffer is provably unchanged."""
        if view.nbytes < MIN_BYTES or view.readonly or not view.c_contiguous:
            return hash_bytes(view)
        owner = view.obj
        try:
            weakref.ref(owner)
        except TypeError:
            return hash_bytes(view)
        with self._lock:
            kernel = self._open()
            if kernel is None:
                return hash_bytes(view)
            try:
                self._release_dead(kernel)
                return self._digest(kernel, view, owner, hash_bytes)
            except OSError as exc:
                # A failed scan or protect never gives a stale answer: hash, and stop trusting.
                log.debug("write tracking failed (%s); hashing", exc)
                self._forget_all(kernel)
                return hash_bytes(view)

    def _digest(
        self,
        kernel: _Kernel,
        view: memoryview,
        owner: Any,
        hash_bytes: Callable[[memoryview], bytes],
    ) -> bytes:
        holder = (ctypes.c_char * view.nbytes).from_buffer(view)
        addr = ctypes.addressof(holder)
        del holder
        key = (addr, view.nbytes)
        start = -(-addr // PAGE) * PAGE
        end = (addr + view.nbytes) // PAGE * PAGE
        entry = self._entries.get(key)
        if entry is not None and entry.owner() is not owner:
            self._drop(kernel, key)
            entry = None
        if entry is not None and entry.tracked:
            if not self._changed(kernel, entry, view, addr):
                self._entries.move_to_end(key)
                return entry.digest
            # Written since: stop the faults; track again once a hash shows it unchanged.
            kernel.release(entry.start, entry.end)
            entry.tracked = False
            entry.stable = False
            protect = False
        else:
            protect = entry is None or entry.stable
        tracked = False
        if protect and end - start >= PAGE:
            tracked = self._protect(kernel, start, end)
        # Protected first, copied and hashed after: a write in between shows as written.
        head = bytes(view[: start - addr])
        tail = bytes(view[end - addr :])
        value = hash_bytes(view)
        stable = entry is not None and entry.digest == value
        ref = weakref.ref(owner, self._dead.append)
        self._entries[key] = _Entry(ref, value, start, end, head, tail, tracked, stable)
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._drop(kernel, next(iter(self._entries)))
        return value

    @staticmethod
    def _changed(kernel: _Kernel, entry: _Entry, view: memoryview, addr: int) -> bool:
        if entry.end > entry.start and kernel.dirty(entry.start, entry.end):
            return True
        return view[: entry.start - addr] != entry.head or view[entry.end - addr :] != entry.tail

    def _protect(self, kernel: _Kernel, start: int, end: int) -> bool:
        """Protect ``[start, end)``.  Protecting clears the written state of its pages, so a
        remembered buffer sharing any of them that was written since its hash is forgotten
        first: its write would otherwise be wiped from the record."""
        for other in list(self._entries.values()):
            if other.tracked and other.start < end and start < other.end:
                if kernel.dirty(other.start, other.end):
                    other.tracked = False
                    other.stable = False
        try:
            kernel.protect(start, end)
        except OSError as exc:
            log.debug("not tracking %#x-%#x: %s", start, end, exc)
            return False
        return True

    def _release_dead(self, kernel: _Kernel) -> None:
        if not self._dead:
            return
        self._dead.clear()
        for key in [key for key, entry in self._entries.items() if entry.owner() is None]:
            self._drop(kernel, key)

    def _drop(self, kernel: _Kernel, key: tuple[int, int]) -> None:
        entry = self._entries.pop(key)
        if entry.tracked:
            kernel.release(entry.start, entry.end)

    def _forget_all(self, kernel: _Kernel) -> None:
        for key in list(self._entries):
            self._drop(kernel, key)
        self._failed = True
        kernel.close()
        self._kernel = None


TRACKER = Tracker()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=TRACKER._after_fork)
