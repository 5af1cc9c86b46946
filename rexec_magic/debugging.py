"""``%debug`` and ``%pdb`` after an error that remote code raised.

Why: the notebook raises a remote cell's or call's exception again here (its own class,
drawn with the remote traceback: ``magics.as_local``), so IPython's post-mortem debugger
opened in the frame of rexec that raised it, where ``p v`` of the user's variable was a
NameError (tester BM).  The frames the error went through ended on the worker with the
code; only their traceback came back.  For such an error the debugger says so, in one
sentence, and does not open; for any other it is IPython's own.

How: the exception raised for remote code is remembered here (``raised_remotely``, one at
a time: ``sys.last_value`` keeps it alive as long anyway), and the shell's ``debugger``,
which ``%debug`` and ``%pdb`` both call, compares it with ``sys.last_value``.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

E = TypeVar("E", bound=BaseException)

DEBUG_REMOTE_SENTENCE = (
    "%debug cannot open this error's frames: they were on the remote worker, where the code "
    "ran, and only its traceback came back. To step through it, run the code here (without "
    "%%remote or remote_func) and use %debug then."
)

_last_remote: BaseException | None = None


def raised_remotely(exc: E) -> E:
    """Remember ``exc`` as the error remote code raised, about to be raised here; returns it."""
    global _last_remote
    _last_remote = exc
    return exc


def is_remote_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the last error raised here for remote code."""
    return exc is not None and exc is _last_remote


def install(shell: Any) -> None:
    """Make ``shell.debugger`` (``%debug``, ``%pdb``) say the sentence for a remote error."""
    if getattr(shell, "_rexec_debugger_installed", False):
        return
    shell._rexec_debugger_installed = True
    local_debugger = shell.debugger

    def debugger(force: bool = False) -> None:
        if (force or shell.call_pdb) and is_remote_error(getattr(sys, "last_value", None)):
            print(DEBUG_REMOTE_SENTENCE, file=sys.stderr)
            return
        local_debugger(force)

    shell.debugger = debugger
