"""Serialization of Python values for the wire: dill, pickle protocol 5, out-of-band buffers.

Large contiguous buffers (numpy arrays, bytes-like objects that support PickleBuffer) are not
copied into the pickle: they travel as separate ZeroMQ frames sent with ``copy=False`` and are
re-attached on load.  Client and worker both use this module, so the format lives here only.
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import dill

PICKLE_PROTOCOL = 5
# Buffers below this size are cheaper to copy into the pickle than to send as a frame.
OOB_MIN_BYTES = 64 * 1024


def versions() -> dict[str, str]:
    """What a peer needs to know to judge whether our pickles will load on its side."""
    return {
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "dill": dill.__version__,
    }


def version_note(local: dict[str, str], remote: dict[str, str] | None) -> str:
    """One phrase naming both sides' versions, appended to every deserialization error."""
    if not remote:
        return f"local Python {local['python']}, dill {local['dill']}; remote versions unknown"
    return (
        f"local Python {local['python']}, dill {local['dill']}; "
        f"remote Python {remote.get('python', '?')}, dill {remote.get('dill', '?')}"
    )


def minor_mismatch(local: dict[str, str], remote: dict[str, str]) -> bool:
    """True when Python major.minor differ: pickled code objects may not load across that."""
    return local["python"].split(".")[:2] != remote.get("python", "").split(".")[:2]


class SerializationError(Exception):
    """A value could not be turned into frames (or frames back into a value)."""


class _Pickler(dill.Pickler):
    """dill, except that plain numpy arrays keep numpy's own protocol-5 reduction.

    dill registers its own reducer for ``numpy.ndarray`` that copies the data into the pickle
    (in band), so ``buffer_callback`` never sees it and a 100 MB array was copied twice.
    numpy's ``__reduce_ex__(5)`` hands the data over as a PickleBuffer instead (and falls back
    to in-band by itself for object dtypes and non-contiguous arrays).
    """

    def save_picklebuffer(self, obj: pickle.PickleBuffer) -> None:
        """pickle's own, except that an in-band copy goes through ``save`` (and so the memo).

        The pure-Python pickler (which dill extends) hands ``m.tobytes()`` straight to
        ``save_bytes``, which memoizes it without looking: two empty buffers give the same
        ``b""`` object twice and ``memoize`` fails its ``assert`` (every matplotlib figure
        and axes hit this: "AssertionError: ").
        """
        with obj.raw() as m:
            if not m.contiguous:
                raise pickle.PicklingError("PickleBuffer can not be pickled when pointing to a "
                                           "non-contiguous buffer")  # fmt: skip
            callback = getattr(self, "_buffer_callback", None)
            in_band = callback is None or bool(callback(obj))
            if in_band:
                data = m.tobytes()
                self.save(data if m.readonly else bytearray(data))
            else:
                self.write(pickle.NEXT_BUFFER)
                if m.readonly:
                    self.write(pickle.READONLY_BUFFER)

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if type(obj) is pickle.PickleBuffer:  # the dispatch table would skip our override
            self.save_picklebuffer(obj)
            return
        ndarray = getattr(sys.modules.get("numpy"), "ndarray", None)
        if ndarray is not None and type(obj) is ndarray:
            memo = self.memo.get(id(obj))
            if memo is not None:
                self.write(self.get(memo[0]))
                return
            reduced = obj.__reduce_ex__(self.proto)
            self.save_reduce(*reduced, obj=obj)
            return
        super().save(obj, save_persistent_id)


def dumps(obj: Any, out_of_band: bool = True) -> list[Any]:
    """Pickle ``obj``; return ``[pickle_bytes, *buffers]`` where buffers are raw memoryviews.

    ``out_of_band=False`` gives one self-contained pickle (no buffers), which a plain
    ``dill.loads`` can read: what legacy SciDx clients get.
    """
    buffers: list[pickle.PickleBuffer] = []

    def keep_out_of_band(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < OOB_MIN_BYTES:
            return True  # true means "serialize in band"
        buffers.append(buf)
        return False

    stream = io.BytesIO()
    callback = keep_out_of_band if out_of_band else None
    try:
        _Pickler(stream, protocol=PICKLE_PROTOCOL, buffer_callback=callback).dump(obj)
    except Exception as exc:  # dill raises many kinds: TypeError, PicklingError, ...
        raise SerializationError(f"{type(exc).__name__}: {exc}") from None
    return [stream.getbuffer(), *(b.raw() for b in buffers)]


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of :func:`dumps`; frames may be bytes, memoryviews or zmq Frames."""
    data = getattr(frames[0], "buffer", frames[0])
    bufs = [_view(f) for f in frames[1:]]
    try:
        return dill.Unpickler(io.BytesIO(data), buffers=bufs).load()
    except Exception as exc:
        raise SerializationError(f"{type(exc).__name__}: {exc}") from None


def _view(frame: Any) -> Any:
    """A writable buffer for a received frame, so loaded arrays can be modified in place."""
    buf = getattr(frame, "buffer", frame)
    if isinstance(buf, memoryview) and buf.readonly:
        return bytearray(buf)  # one copy; zmq frames are read-only
    return buf


def nbytes(frames: Iterable[Any]) -> int:
    total = 0
    for f in frames:
        total += memoryview(getattr(f, "buffer", f)).nbytes
    return total


def pack(values: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Serialize several named values: ``([{name, nbuffers, nbytes}], frames)``.

    Raises SerializationError naming the first variable that cannot be serialized.
    """
    entries: list[dict[str, Any]] = []
    out: list[Any] = []
    for name, value in values.items():
        try:
            parts = dumps(value)
        except SerializationError as exc:
            raise SerializationError(
                f"variable '{name}' of type {type(value).__name__} cannot be serialized ({exc})"
            ) from None
        entries.append({"name": name, "nbuffers": len(parts), "nbytes": nbytes(parts)})
        out.extend(parts)
    return entries, out


def unpack(entries: Sequence[dict[str, Any]], frames: Sequence[Any]) -> dict[str, Any]:
    """Inverse of :func:`pack`.  Raises SerializationError naming the variable that failed."""
    values: dict[str, Any] = {}
    pos = 0
    for entry in entries:
        n = int(entry["nbuffers"])
        chunk = frames[pos : pos + n]
        pos += n
        if len(chunk) != n:
            raise SerializationError("message is missing buffers")
        try:
            values[entry["name"]] = loads(chunk)
        except SerializationError as exc:
            raise SerializationError(f"variable '{entry['name']}' could not be loaded ({exc})")
    return values


def unpack_each(
    entries: Sequence[dict[str, Any]], frames: Sequence[Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Like :func:`unpack`, but one value that cannot be loaded costs only itself:
    ``(values, {name: why})``."""
    values: dict[str, Any] = {}
    failed: dict[str, str] = {}
    pos = 0
    for entry in entries:
        n = int(entry["nbuffers"])
        chunk = frames[pos : pos + n]
        pos += n
        if len(chunk) != n:
            raise SerializationError("message is missing buffers")
        try:
            values[entry["name"]] = loads(chunk)
        except SerializationError as exc:
            failed[entry["name"]] = str(exc)
    return values, failed
