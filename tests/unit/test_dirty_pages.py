"""rexec_magic.dirty_pages alone: a remembered hash is never trusted after any kind of write.

The oracle is a plain xxh3-128 of the buffer's bytes as they are now.  Every way a process's
memory changes is tried (numpy stores, another view of the same memory, ``ctypes.memmove``, the
kernel writing through ``readv``, another thread, a page never touched before, a freed array
whose address is reused), with buffers starting at every kind of page offset, so the partial
pages at both ends are covered as well as the whole pages the kernel tracks.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import random
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import xxhash

from rexec_magic import dirty_pages, serialize

pytestmark = pytest.mark.unit

SIZE = dirty_pages.MIN_BYTES + 3 * dirty_pages.PAGE + 123


class Counting:
    """A hash function that counts the bytes it was asked to read."""

    def __init__(self) -> None:
        self.read = 0

    def __call__(self, view: memoryview) -> bytes:
        self.read += view.nbytes
        return xxhash.xxh3_128_digest(view)


def view_of(arr: np.ndarray) -> memoryview:
    return memoryview(pickle.PickleBuffer(arr).raw()).cast("B")


def fresh(size: int) -> np.ndarray:
    """An array in memory of its own (a new private anonymous mapping): no other tracker in this
    process (the module's, used by earlier tests) can have registered any of its pages, which
    the kernel would refuse to register twice."""
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(mapping, dtype=np.uint8)


@pytest.fixture
def tracker() -> Iterator[dirty_pages.Tracker]:
    tracker = dirty_pages.Tracker()
    yield tracker
    tracker.close()


def truth(arr: np.ndarray) -> bytes:
    return xxhash.xxh3_128_digest(arr.tobytes())


def kernel_write(arr: np.ndarray, offset: int, data: bytes) -> None:
    """The kernel copies ``data`` into the array (``readv`` from a pipe): no store of ours."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        os.readv(read_end, [memoryview(arr)[offset : offset + len(data)]])
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("memory", ["numpy", "mapping"])
def test_every_kind_of_write_changes_the_hash(tracker, memory):
    """Many random writes of every kind, on arrays at every page offset, in numpy's memory
    (heap or mapping, as it allocates) and in a mapping of their own: the tracker's answer is
    the hash of the bytes as they are, every time."""
    rng = random.Random(8)
    page = dirty_pages.PAGE
    make = fresh if memory == "mapping" else (lambda n: np.zeros(n, dtype=np.uint8))
    bases = [make(SIZE + 4 * page) for _ in range(3)]
    arrays = [bases[0][:SIZE], bases[1][7 : 7 + SIZE], bases[2][page - 1 :]]
    # Two views sharing most pages with the first: hashing one must not hide the other's writes.
    arrays += [bases[0][3 * page + 5 :], bases[0][page : page + SIZE]]
    hasher = Counting()

    def store(arr, i):
        arr[i] = (int(arr[i]) + 1) % 256

    def other_view(arr, i):
        alias = np.frombuffer(arr.data, dtype=np.uint8)  # another object, the same memory
        alias[i] ^= 0x5A

    def memmove(arr, i):
        ctypes.memmove(arr.ctypes.data + i, b"\x01\x02\x03", min(3, arr.nbytes - i))

    def by_kernel(arr, i):
        kernel_write(arr, min(i, arr.nbytes - 16), os.urandom(16))

    def from_thread(arr, i):
        thread = threading.Thread(target=store, args=(arr, i))
        thread.start()
        thread.join()

    def whole(arr, i):
        arr += 3

    kinds = [store, other_view, memmove, by_kernel, from_thread, whole]
    for step in range(300):
        k = rng.randrange(len(arrays))
        arr = arrays[k]
        where = rng.choice([0, 1, arr.nbytes - 1, rng.randrange(arr.nbytes), page * 5 + 17])
        if rng.random() < 0.75:
            rng.choice(kinds)(arr, where)
        assert tracker.digest(view_of(arr), hasher) == truth(arr), step
        # Asked again without a write: the same answer.
        assert tracker.digest(view_of(arr), hasher) == truth(arr), step


def test_an_unchanged_buffer_is_not_read_again(tracker):
    if not tracker.available:
        pytest.skip(f"this kernel ({os.uname().release}) offers no write tracking")
    arr = fresh(SIZE)
    arr[:] = 1
    hasher = Counting()
    first = tracker.digest(view_of(arr), hasher)
    assert hasher.read == arr.nbytes
    for _ in range(5):
        assert tracker.digest(view_of(arr), hasher) == first
    assert hasher.read == arr.nbytes  # read once, trusted five times
    arr[SIZE // 2] = 2
    assert tracker.digest(view_of(arr), hasher) == truth(arr)
    assert hasher.read == 2 * arr.nbytes


def test_pages_never_touched_before_are_tracked(tracker):
    """A new mapping: its pages exist only once written; the first write to one shows."""
    arr = fresh(64 * 2**20)
    hasher = Counting()
    tracker.digest(view_of(arr), hasher)
    arr[40 * 2**20] = 1
    assert tracker.digest(view_of(arr), hasher) == truth(arr)
    # Written: it was released; unchanged at the next hash, it is protected at the one after.
    for _ in range(2):
        assert tracker.digest(view_of(arr), hasher) == truth(arr)
    before = hasher.read
    assert tracker.digest(view_of(arr), hasher) == truth(arr)
    assert not tracker.available or hasher.read == before  # tracked again


def test_a_freed_array_whose_memory_is_reused_is_hashed_again(tracker):
    hasher = Counting()
    seen = {}
    for fill in range(6):
        arr = np.full(SIZE, fill, dtype=np.uint8)
        seen[arr.ctypes.data] = seen.get(arr.ctypes.data, 0) + 1
        assert tracker.digest(view_of(arr), hasher) == truth(arr)
        del arr
    assert max(seen.values()) >= 1  # addresses are reused by the allocator or not: both ok


def test_a_forked_child_writes_its_own_copy(tracker):
    """The child's writes are its own (copy on write) and the child starts with no memory of
    the parent's hashes; the parent still trusts its own."""
    arr = fresh(SIZE)
    arr[:] = 1
    first = tracker.digest(view_of(arr), Counting())
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        ok = False
        try:
            arr[100] = 9
            ok = tracker.digest(view_of(arr), Counting()) == truth(arr) != first
        finally:
            os.write(write_end, b"1" if ok else b"0")
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert tracker.digest(view_of(arr), Counting()) == first == truth(arr)
    arr[-1] = 4
    assert tracker.digest(view_of(arr), Counting()) == truth(arr)


def test_tracked_and_untracked_values_hash_alike(monkeypatch):
    """A value's digest does not depend on whether the kernel tracked its buffer (the worker
    and the notebook compare digests, and only one of them may track): hashed with tracking
    and with tracking off, before and after writes, the digests agree."""
    arr = np.arange(SIZE // 8, dtype=np.int64)
    for _ in range(3):
        tracked = [serialize.pack_value(arr).digest for _ in range(2)]
        with monkeypatch.context() as off:
            off.setattr(dirty_pages, "MIN_BYTES", 2**62)
            untracked = serialize.pack_value(arr).digest
        assert tracked == [untracked, untracked]
        arr[len(arr) // 3] += 1
