"""Ctrl-C held back while a step that must not be cut in two runs, then passed on.

A Ctrl-C is a KeyboardInterrupt raised by the SIGINT handler wherever the main thread checks
for signals next, so it can land in the middle of anything.  Some steps cannot be left half
done: a multipart message half sent (``client.whole_message``), an import of a module that
loading a value started (``serialize``: a C extension initialised by an import cut short can
never be initialised again in that process).  Such a step runs inside ``held_sigint``: a
SIGINT that comes meanwhile is only recorded, and once the step is over it goes to the
handler that was there before, as if it had come then (a kernel's raises KeyboardInterrupt,
the executor's ``CellRunner.on_sigint`` stops the cell if its code may be interrupted).
Part of the wire core: the client and the worker both use it, and it imports nothing of rexec.
"""

from __future__ import annotations

import _signal
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def pass_on_sigint(handler: Any, frame: Any) -> None:
    """Act on a SIGINT as ``handler`` (from ``signal.getsignal``) would have: call it, or
    raise KeyboardInterrupt for the default action (which would have ended the process);
    an ignored SIGINT stays ignored."""
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler == signal.SIG_DFL:
        raise KeyboardInterrupt


@contextmanager
def sigint_handler(
    handler_for: Callable[[Any], Callable[[int, Any], None]], ignored_too: bool = False
) -> Iterator[Any]:
    """Make ``handler_for(previous)`` the SIGINT handler while the block lasts; yield the
    handler it replaced, or None where none was set: outside the main thread (only it may
    set handlers, and only it gets KeyboardInterrupt), where the handler was not set from
    Python (which Python cannot put back), in a subinterpreter, and where SIGINT is ignored
    unless ``ignored_too``.  The previous handler comes back at the end only if ours is
    still the one set: a handler someone set meanwhile stays.

    ``_signal``'s functions, not ``signal``'s: the wrappers turn every handler into an enum
    and back (about 10 µs a message here, six messages a cell); the values are the same
    ints, so ``pass_on_sigint`` compares them alike.
    """
    previous = _signal.getsignal(_signal.SIGINT)
    if (
        previous is None
        or (previous == _signal.SIG_IGN and not ignored_too)
        or threading.current_thread() is not threading.main_thread()
    ):
        yield None
        return
    handler = handler_for(previous)
    try:
        _signal.signal(_signal.SIGINT, handler)
    except ValueError:  # not the main interpreter
        yield None
        return
    try:
        yield previous
    finally:
        if _signal.getsignal(_signal.SIGINT) is handler:
            _signal.signal(_signal.SIGINT, previous)


@contextmanager
def held_sigint(pass_on: bool = True) -> Iterator[list[Any]]:
    """Hold a Ctrl-C that comes while the block runs until it is over, then pass it on to
    the handler that was there before (``pass_on_sigint``: one that ignores SIGINT ignores
    it here too, and the default action becomes a KeyboardInterrupt), once however many
    came.  Yields the list of held ones' frames: with ``pass_on`` False the caller acts on
    a held Ctrl-C itself.  Main thread only (``sigint_handler``: elsewhere it holds nothing,
    and no KeyboardInterrupt can land there anyway).  An exception the block raises still
    gives way to the held Ctrl-C: the user asked to stop."""
    held: list[Any] = []
    previous = None
    try:
        with sigint_handler(lambda _: lambda signum, frame: held.append(frame), True) as previous:
            yield held
    finally:
        if held and pass_on and previous is not None:
            pass_on_sigint(previous, held[0])
