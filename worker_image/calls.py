"""Running one CALL: a pickled function applied to pickled arguments, in the worker.

Why it exists beside cells: ``remote_func`` (rexec's and the SciDx clients') ships a function,
not code.  Output goes where a cell's goes (stdout/stderr are already the outbox's streams);
what is particular to a call is here: a generator's items leave one YIELD event each as they
are produced, the return value leaves with DONE, and an exception leaves as an ERROR event
with a plain-text traceback and, when it pickles, the exception itself, so the caller can
raise the same type.  ``inband`` calls (legacy clients) get each value as one plain pickle.
"""

from __future__ import annotations

import functools
import re
import traceback
import types
from collections.abc import Callable
from typing import Any

from rexec_magic import serialize
from rexec_magic.protocol import DoneStatus, Kind
from worker_image.outbox import EventChannel, Target, exception_buffers

Result = tuple[str, list[dict[str, Any]], list[Any]]
# How a lazy call's generator goes on (``protocol.Next``): ("send", value) — None for
# ``next()`` —, ("throw", exception) or ("close", None).
Step = tuple[str, Any]


def _lines(text: str) -> list[str]:
    return text.rstrip("\n").split("\n")


_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<name>.*)$')


def _cell_names(lines: list[str]) -> list[str]:
    """Frames of notebook cells as IPython names them (``Cell In[2], line 5, in bad``), not
    by the kernel's file name for the cell (``/tmp/ipykernel_9532/1611290432.py``): the
    function came with its cell's number (``serialize.register_source``)."""
    shell = serialize.ipython_shell()
    names = getattr(getattr(shell, "compile", None), "_filename_map", None)
    if not isinstance(names, dict) or not names:
        return lines
    out = []
    for line in lines:
        frame = _FRAME.match(line)
        if frame is not None and isinstance(names.get(frame["file"]), int):
            cell = names[frame["file"]]
            line = f"  Cell In[{cell}], line {frame['line']}, in {frame['name']}"
        out.append(line)
    return out


def send_exception(
    outbox: EventChannel, target: Target, exc: BaseException, skip: int, legacy: bool
) -> None:
    """ERROR with the traceback from the user's code on (our own ``skip`` frames cut)."""
    tb = exc.__traceback__
    for _ in range(skip):
        if tb is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        evalue = str(exc)
    except Exception:  # a broken __str__ must not break error reporting
        evalue = f"<unprintable {type(exc).__name__}>"
    header: dict[str, Any] = {
        "ename": type(exc).__name__,
        "evalue": evalue,
        "traceback": _cell_names(_lines(text)),
    }
    buffers = exception_buffers(exc, legacy)
    header["nbuffers"] = len(buffers)
    outbox.event(target, Kind.ERROR, header, buffers)


# What cannot change in place, or is code rather than state (compared by identity only).
NOT_STATE = (
    int, float, complex, str, bytes, bool, type(None), type, types.ModuleType,
    types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial,
)  # fmt: skip


def _own_state(fn: Any) -> tuple | None:
    """What ``fn`` keeps from one call to the next, as it can be compared after the call:
    its cache's size (``functools.lru_cache``), which object each default argument and
    closure variable (and a bound method's ``self``) is, and a digest of those that can
    change in place (lists, dicts, a ``random.Random``, an instance).  None when it keeps
    nothing (the common case: nothing to compare)."""
    cache = fn.cache_info().currsize if hasattr(fn, "cache_info") else None
    inner = getattr(fn, "__wrapped__", fn)
    kept = [*(getattr(inner, "__defaults__", None) or ())]
    kept += (getattr(inner, "__kwdefaults__", None) or {}).values()
    for cell in getattr(inner, "__closure__", None) or ():
        try:
            kept.append(cell.cell_contents)
        except ValueError:  # an empty cell (a name bound later)
            kept.append(None)
    if isinstance(fn, types.MethodType):
        kept.append(fn.__self__)
    if cache is None and not kept:
        return None
    mutable = [value for value in kept if not isinstance(value, NOT_STATE)]
    try:
        digest = serialize.pack_value(mutable).digest if mutable else ""
    except serialize.SerializationError:
        digest = ""
    return cache, tuple(id(value) for value in kept), digest


def _say_if_own_state_changed(
    outbox: EventChannel, target: Target, fn: Any, before: tuple | None
) -> None:
    """A local function keeps what a call changed in its closure, its mutable defaults or
    its cache for the next call; a remote call's copy of the function is gone after it, so
    the next one starts from the notebook's as it was.  Said, rather than answers that
    differ from a local call's without a word."""
    if before is None or _own_state(fn) == before:
        return
    name = getattr(fn, "__name__", "the function")
    text = (
        f"rexec: `{name}` changed its own state in this call (a closure variable, a "
        "mutable default argument, its object or its cache); that change is not kept: "
        "each remote call starts from the notebook's function as it is.\n"
    )
    outbox.event(target, Kind.STREAM, {"name": "stderr", "text": text})


def _fail(outbox: EventChannel, target: Target, ename: str, evalue: str) -> Result:
    header = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"], "nbuffers": 0}
    outbox.event(target, Kind.ERROR, header)
    return DoneStatus.ERROR, [], []


def _owned(parts: list[Any]) -> list[Any]:
    """Copies of the out-of-band parts: a generator may change an array after yielding it."""
    return [parts[0], *(bytes(p) for p in parts[1:])]


def _show_warnings_again(fn: Any) -> None:
    """Forget which warnings the namespace's code has shown, as IPython does before each
    cell (its ``pre_execute`` hook): each call shows its warnings as a local call in a new
    cell would.  Once shown, "divide by zero" came with the first call only, until a cell
    ran (tester BK, 3 of 3)."""
    shell = serialize.ipython_shell()
    spaces = [getattr(fn, "__globals__", None), getattr(shell, "user_global_ns", None)]
    for space in spaces:
        if isinstance(space, dict):
            space.pop("__warningregistry__", None)


def invoke(
    values: dict[str, Any],
    inband: bool,
    outbox: EventChannel,
    target: Target,
    user_code_over: Callable[[], None],
    next_item: Callable[[str], Step] | None = None,
    raised: Callable[[BaseException], None] = lambda exc: None,
) -> Result:
    """Call ``fn(*args, **kwargs)``; return ``(status, entries, frames)`` for DONE;
    ``raised`` is told the exception the function raised, if any.

    A generator's items leave as YIELD events.  With ``next_item`` (a lazy call,
    ``protocol.Call.lazy``) it is resumed only when ``next_item(id)`` says the client's loop
    asked for another item (with what ``.send()`` sent in, or what ``.throw()`` throws in),
    and closed where it waits when it says the loop was left, as a local generator is; its
    return value then comes back as the call's.  Without, it runs
    ahead as far as flow control lets it (``list()``, ``submit()``), and the call returns
    None (a plain function that returned a generator: its items are the result).

    KeyboardInterrupt (the caller cancelled) propagates to the cell runner.
    """
    fn, args, kwargs = values.get("fn"), values.get("args", ()), values.get("kwargs") or {}
    if not callable(fn):
        return _fail(outbox, target, "TypeError", f"{type(fn).__name__!r} object is not callable")
    if not isinstance(args, tuple | list) or not isinstance(kwargs, dict):
        return _fail(outbox, target, "TypeError", "the call's args or kwargs are malformed")
    out_of_band = not inband
    kept = _own_state(fn)
    _show_warnings_again(fn)
    try:
        result = fn(*args, **kwargs)
        if isinstance(result, types.GeneratorType):
            gen, result = result, None
            how, given = "send", None  # gen.send(None) is next(gen)
            try:
                while True:
                    try:
                        item = gen.throw(given) if how == "throw" else gen.send(given)
                    except StopIteration as stop:
                        result = stop.value if next_item is not None else None
                        break
                    try:
                        parts = serialize.dumps(item, out_of_band=out_of_band, legacy=inband)
                    except serialize.SerializationError as exc:
                        gen.close()
                        return _fail(outbox, target, "SerializationError", f"a yielded item: {exc}")
                    header = {"nbuffers": len(parts)}
                    outbox.event(target, Kind.YIELD, header, _owned(parts))
                    del item, parts
                    if next_item is not None:
                        how, given = next_item(target.id)
                        if how == "close":
                            gen.close()  # the loop was left: GeneratorExit at its yield
                            break
            except KeyboardInterrupt:
                gen.close()  # its `finally` runs now, in this call, not at a later collection
                raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the user's exception, SystemExit included
        raised(exc)
        user_code_over()
        _say_if_own_state_changed(outbox, target, fn, kept)
        send_exception(outbox, target, exc, skip=1, legacy=inband)
        return DoneStatus.ERROR, [], []
    user_code_over()
    _say_if_own_state_changed(outbox, target, fn, kept)
    try:
        parts = serialize.dumps(result, out_of_band=out_of_band, legacy=inband)
    except serialize.SerializationError as exc:
        return _fail(outbox, target, "SerializationError", f"the return value: {exc}")
    entries = [{"name": "return", "nbuffers": len(parts), "nbytes": serialize.nbytes(parts)}]
    return DoneStatus.OK, entries, parts
