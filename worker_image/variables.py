"""The user's variables seen from outside: packing pulled values, listing them for INSPECT.

Kept apart from the shell so the rules a user reads in ``%rexec_status`` and in pull notes
("skipped: cannot be serialized ...") live in one small module.
"""

from __future__ import annotations

import numbers
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any

from rexec_magic import protocol, serialize


def megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def pack_pulled(
    namespace: Mapping[str, Any], names: Iterable[str], limit: int
) -> tuple[list[dict[str, Any]], list[Any], list[dict[str, str]]]:
    """Pack the named values that exist: ``(entries, frames, skipped)``.

    Modules are skipped silently (the client has its own imports); values that cannot be
    serialized or whose packed size is over ``limit`` bytes are skipped with a reason.
    Each value is packed alone so one bad value never costs the others.
    """
    entries: list[dict[str, Any]] = []
    frames: list[Any] = []
    skipped: list[dict[str, str]] = []
    for name in dict.fromkeys(names):  # unique, in order
        if name not in namespace:
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            continue
        try:
            parts = serialize.dumps(value)
        except serialize.SerializationError as exc:
            reason = f"cannot be serialized ({exc})"
            skipped.append({"name": name, "reason": reason, "type": qualified_type(value)})
            continue
        size = serialize.nbytes(parts)
        if size > limit:
            reason = f"is {megabytes(size)}, over the {megabytes(limit)} pull limit"
            skipped.append({"name": name, "reason": reason, "type": qualified_type(value)})
            continue
        entry = {"name": name, "nbuffers": len(parts), "nbytes": size}
        entries.append({**entry, "type": qualified_type(value)})
        frames.extend(parts)
    return entries, frames, skipped


def qualified_type(value: Any) -> str:
    """``matplotlib.axes._axes.Axes``: lets the client tell plotting objects from data."""
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"[: protocol.SHORT_MAX]  # a header field's cap


def sizeof(value: Any) -> int | None:
    """Bytes a value holds: deep for DataFrames, ``nbytes`` for arrays, else getsizeof."""
    try:
        memory_usage = getattr(value, "memory_usage", None)
        if memory_usage is not None and type(value).__module__.startswith("pandas"):
            usage = memory_usage(deep=True)
            return int(usage.sum() if hasattr(usage, "sum") else usage)
        nbytes = getattr(value, "nbytes", None)
        if isinstance(nbytes, numbers.Integral):
            return int(nbytes)
        return sys.getsizeof(value)
    except Exception:  # user objects may raise from any attribute
        return None


def describe(namespace: Mapping[str, Any], hidden: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The user's variables: ``[{name, type, size}]``, sorted by name.

    Skips private names, modules, and IPython's own entries (unless the user rebound them).
    """
    items = list(namespace.items())  # one atomic copy: the cell may be running meanwhile
    out: list[dict[str, Any]] = []
    for name, value in items:
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if name in hidden and hidden[name] is value:  # In, Out, exit, quit, get_ipython, open
            continue
        out.append({"name": name, "type": type(value).__name__, "size": sizeof(value)})
    out.sort(key=lambda v: v["name"])
    return out
