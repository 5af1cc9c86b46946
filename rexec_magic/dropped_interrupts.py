"""Ctrl-Cs that Python dropped, kept until rexec can act on them.

A Ctrl-C is a KeyboardInterrupt raised by the SIGINT handler wherever the main thread
checks for signals next.  Where that is a finalizer (a ``__del__``, a weakref callback, a
Cython ``__dealloc__``: pyzmq's ``Frame.__dealloc__`` checks for signals, and every message
rexec reads ends in one), Python cannot pass the exception on: it writes it to
``sys.unraisablehook`` ("Exception ignored in ...") and the code goes on.  A script's loop
of remote calls then ran on after its Ctrl-C, until killed (CI, once:
``test_a_ctrl_c_stops_a_scripts_loop_of_short_calls``); inside a request it had been caught
by counting SIGINTs, but not between two requests, nor as one ended.  Where several hooks of
this module wrap each other (one replaced ours, then we wrapped it), a drop counts more than
once: harmless, ``take`` clears the count.

Here every KeyboardInterrupt dropped in the main thread is counted (Python still writes
what it writes), and rexec acts on it at its next chance: the request the main thread is
waiting on is interrupted, as by a Ctrl-C that landed anywhere else, and one about to be
sent is not sent (``RexecClient._events``).  A notebook forgets one at the start of its
next cell (``remote_call.hook_kernel_interrupt``): that Ctrl-C was for the cell it came in.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

_dropped = [0]  # KeyboardInterrupts dropped in the main thread, not acted on yet
_hook: list[Any] = [None]  # the hook ``watch`` installed


def watch() -> None:
    """Count KeyboardInterrupts Python drops in the main thread from now on (idempotent:
    installs the hook again where another replaced it, wrapping that one, e.g. pytest's)."""
    if sys.unraisablehook is _hook[0]:
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and (
            threading.current_thread() is threading.main_thread()
        ):
            _dropped[0] += 1
        previous(unraisable)

    _hook[0] = sys.unraisablehook = hook


def take() -> bool:
    """Whether a Ctrl-C was dropped in the main thread since the last ``take`` (or
    ``forget``); then it counts as acted on.  False in other threads (a Ctrl-C is the main
    thread's)."""
    if not _dropped[0] or threading.current_thread() is not threading.main_thread():
        return False
    _dropped[0] = 0
    return True


def forget() -> None:
    """Drop what was counted: the Ctrl-C belonged to code that has ended (a notebook's
    cell)."""
    _dropped[0] = 0
