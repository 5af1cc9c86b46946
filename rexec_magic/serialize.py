"""Serialization of Python values for the wire: cloudpickle, pickle protocol 5, out-of-band buffers.

Large contiguous buffers (numpy arrays, bytes-like objects that support PickleBuffer) are not
copied into the pickle: they travel as separate ZeroMQ frames sent with ``copy=False`` and are
re-attached on load.  Client and worker both use this module, so the format lives here only.

What travels how (the README's "what travels" says the same for users):

* Code defined in the notebook (``__main__``: functions, lambdas, classes, enums, dataclasses,
  exception classes) goes *by value*, through cloudpickle.  Its class tracker keeps a class
  the same object across messages in each process, so enum members keep identity and a
  class that went out and came back is the original again.
* A ``__main__`` function is rebuilt on the other side with that side's ``__main__`` as its
  globals, as a notebook function reads the notebook's namespace; the globals it reads do not
  ride inside it but are reported (``Packed.reads``) so the caller ships them as ordinary
  variables, subject to the same "only when changed" rule as everything else.
* The source of the notebook cells such code came from rides along and is registered in the
  receiver's ``linecache`` (and IPython's cell-name map), so tracebacks show the right lines.
* Modules go by reference (``import numpy`` on the other side, under the sender's alias);
  a plain top-level module whose file is not installed (``mytools.py`` beside the notebook)
  goes by value: its source, executed into a module of the same name over there.
* Values that mean nothing in another process (open files, sockets, locks, generators,
  threads, ...) are refused with ``Refused``, naming the type, before anything is sent.

dill is kept for SciDx legacy clients only (``legacy=True``): they load replies with
``dill.loads``; rexec's own pickles need cloudpickle's helpers on the loading side.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib
import io
import linecache
import logging
import operator
import os
import pickle
import site
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import threading
import types
import warnings
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import dill
from cloudpickle import cloudpickle as _cp

from rexec_magic import dirty_pages
from rexec_magic.sigint import held_sigint

_log = logging.getLogger(__name__)

try:  # xxh3 runs at memory speed (~15 GB/s here); blake2b is ~1 GB/s
    import xxhash

    def _hasher() -> Any:
        return xxhash.xxh3_128()

    def _hash_bytes(view: memoryview) -> bytes:
        return xxhash.xxh3_128_digest(view)

    HASH_NAME = "xxh3_128"
except ImportError:  # pragma: no cover - xxhash is a dependency; the fallback keeps it optional

    def _hasher() -> Any:
        return hashlib.blake2b(digest_size=16)

    def _hash_bytes(view: memoryview) -> bytes:
        return hashlib.blake2b(view, digest_size=16).digest()

    HASH_NAME = "blake2b"

PICKLE_PROTOCOL = 5
# Buffers below this size are cheaper to copy into the pickle than to send as a frame.
OOB_MIN_BYTES = 64 * 1024


def versions() -> dict[str, str]:
    """What a peer needs to know to judge whether our pickles will load on its side."""
    return {
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "dill": dill.__version__,
        "cloudpickle": cloudpickle.__version__,
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


class OutOfMemory(SerializationError):
    """The process ran out of memory packing a value (its copy did not fit): not a value
    that cannot travel, and it may travel once memory is free."""


def _failed(exc: Exception) -> SerializationError:
    """The SerializationError for an exception a pickler raised."""
    if isinstance(exc, MemoryError):
        return OutOfMemory(f"MemoryError: {exc}" if str(exc) else "MemoryError")
    return SerializationError(f"{type(exc).__name__}: {exc}")


class Refused(SerializationError):
    """A value that means nothing in another process (``what`` says which kind, for users)."""

    def __init__(self, what: str, type_name: str) -> None:
        super().__init__(f"{what} ({type_name})")
        self.what = what
        self.type_name = type_name


# ------------------------------------------------------------------ values refused outright
def _refusals() -> list[tuple[type, str]]:
    kinds: list[tuple[type, str]] = [
        (types.GeneratorType, "a generator"),
        (types.CoroutineType, "a coroutine"),
        (types.AsyncGeneratorType, "an async generator"),
        (types.FrameType, "a stack frame"),
        (types.TracebackType, "a traceback"),
        (socket.socket, "a socket"),
        (type(threading.Lock()), "a lock"),
        (type(threading.RLock()), "a lock"),
        (threading.Thread, "a thread"),
        (subprocess.Popen, "a running process"),
        (sqlite3.Connection, "a database connection"),
        (sqlite3.Cursor, "a database cursor"),
        (io.IOBase, "an open file"),
    ]
    return kinds


_REFUSED = _refusals()
# In-memory streams are ordinary values.
_IO_VALUES = (io.BytesIO, io.StringIO)


def refusal(obj: Any) -> str | None:
    """What ``obj`` is when it means nothing remotely (``"an open file"``), else None.

    The pickler asks this of nearly every object it meets (all but the built-in
    containers and scalars): one ``isinstance`` against every refused type answers for
    most, and only a refused object looks for its words (the types of imported modules
    looked up one by one each time took 3 µs an object, 0.3 s of packing 100,000)."""
    if isinstance(obj, _IO_VALUES):
        return None
    every, kinds = _refused_types()
    if not isinstance(obj, every):
        return None
    for kind, what in kinds:
        if isinstance(obj, kind):
            if what == "an open file" and getattr(obj, "closed", False) is True:
                return "a closed file"  # (``with open(...) as f``: f after the block)
            return what
    return None


def _refused_types() -> tuple[tuple[type, ...], tuple[tuple[type, str], ...]]:
    """The refused types: all in one tuple, and each with its words in the order that
    names an object (``_REFUSED``, then ``_REFUSED_IF_IMPORTED`` of the modules imported
    now, looked up, never imported here).  Made again when ``sys.modules`` changes size
    (an import), as ``submodules_in_use`` keys its own answers."""
    loaded, every, kinds = _REFUSED_NOW[0]
    if loaded != len(sys.modules):
        found = list(_REFUSED)
        for module_name, type_name, what in _REFUSED_IF_IMPORTED:
            module = sys.modules.get(module_name)
            if module is not None:
                found.append((getattr(module, type_name), what))
        every, kinds = tuple(k for k, _ in found), tuple(found)
        _REFUSED_NOW[0] = (len(sys.modules), every, kinds)  # (one item: read whole)
    return every, kinds


# (len(sys.modules) when made, every refused type, (type, words) in order): _refused_types.
_REFUSED_NOW: list[tuple[int, tuple[type, ...], tuple[tuple[type, str], ...]]] = [(-1, (), ())]


# Types of modules a cell may have imported, refused as above where they are loaded; the
# first that fits names it (a ThreadPool is a Pool, a Task a Future).  Their own pickling
# errors say "Pickling an AuthenticationString object is disallowed" of a Process, or name
# internal types that change from run to run ("TaskStepMethWrapper"; testers BO, BP).
_REFUSED_IF_IMPORTED: tuple[tuple[str, str, str], ...] = (
    ("zmq", "Socket", "a ZeroMQ socket"),
    ("zmq", "Context", "a ZeroMQ socket"),
    ("multiprocessing.process", "BaseProcess", "a process"),
    ("multiprocessing.pool", "ThreadPool", "a thread pool"),
    ("multiprocessing.pool", "Pool", "a process pool"),
    ("concurrent.futures", "Executor", "a pool of workers"),
    ("asyncio", "Task", "an asyncio task"),
    ("asyncio", "Future", "an asyncio future"),
    ("asyncio", "AbstractEventLoop", "an event loop"),
    ("asyncio", "AbstractServer", "a server"),
    ("asyncio", "Queue", "an asyncio queue"),
    # Handles into this process's memory: a library it loaded (``ctypes.CDLL(None)``: its
    # functions' class is made per library, so it pickled and then failed to load with
    # "cannot set '__doc__' attribute of immutable type '_ctypes.PyCFuncPtrType'"),
    # a function in one, and pointers ("ctypes objects containing pointers").
    ("ctypes", "CDLL", "a loaded C library"),
    ("ctypes", "_CFuncPtr", "a C function pointer"),
    ("ctypes", "_Pointer", "a C pointer"),
    ("ctypes", "c_void_p", "a C pointer"),
    ("ctypes", "c_char_p", "a C pointer"),
    ("ctypes", "c_wchar_p", "a C pointer"),
)


# ------------------------------------------------------------------ ctypes types
def _ctypes_type_reduce(obj: type) -> tuple[Any, ...] | None:
    """How a ctypes type made at run time travels, or None for any other type.

    An array type (``c_double * 3``, which ``create_string_buffer`` makes too) and a
    pointer type (``POINTER(c_int)``) are made by an expression, and ctypes keeps one type
    per expression: they travel as it, so the type that arrives is that side's own and
    their values load with it (by value, cloudpickle rebuilt them from their metaclass,
    which failed to load: "cannot set '__doc__' attribute of immutable type
    '_ctypes.PyCArrayType'").  A ``Structure`` or ``Union`` defined in the notebook is
    made again from its fields and methods (its field descriptors cannot be pickled), one
    class per notebook class as cloudpickle does for a class (its class tracker).
    """
    ctypes = sys.modules.get("ctypes")
    if ctypes is None:
        return None
    if issubclass(obj, ctypes.Array) and obj is not ctypes.Array:
        item, length = getattr(obj, "_type_", None), getattr(obj, "_length_", None)
        if item is not None and length is not None and item * length is obj:
            return operator.mul, (item, length)
    elif issubclass(obj, ctypes._Pointer) and obj is not ctypes._Pointer:
        item = getattr(obj, "_type_", None)
        if item is not None and ctypes.POINTER(item) is obj:
            return ctypes.POINTER, (item,)
    elif issubclass(obj, ctypes.Structure | ctypes.Union) and (
        obj.__module__ == "__main__" or module_attribute(obj) is not obj  # (else: by name)
    ):
        namespace = {
            key: value
            for key, value in obj.__dict__.items()
            if key not in ("__dict__", "__weakref__") and type(value).__name__ != "CField"
        }
        return _ctypes_record_class, (
            _cp._get_or_create_tracker_id(obj),
            obj.__name__,
            obj.__bases__,
            namespace,
        )
    return None


def _ctypes_record_class(
    tracker_id: str, name: str, bases: tuple[type, ...], namespace: dict[str, Any]
) -> type:
    """The receiver's side of ``_ctypes_type_reduce`` for a notebook's ``Structure`` or
    ``Union``: the class made with the metaclass of its first base, once per tracker id."""
    made = type(bases[0])(name, bases, dict(namespace))
    return _cp._lookup_class_or_track(tracker_id, made)


# ------------------------------------------------------------------ modules by value
@functools.cache
def _installed_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:  # some embedded interpreters lack these
        pass
    return tuple(os.path.realpath(d) + os.sep for d in dirs if d)


def travels_by_value(module: types.ModuleType) -> bool:
    """True for a plain top-level ``.py`` module that is not installed (a notebook helper).

    Packages and submodules go by reference: the worker has what is installed, and a helper
    package would need all of its files.
    """
    key = (module.__name__, getattr(module, "__file__", None), id(module))
    known = _BY_VALUE.get(key)
    if known is None:
        known = _BY_VALUE[key] = _travels_by_value(module)
    return known


# (name, file, id) -> decision: the pickler asks for every function and class it meets.
_BY_VALUE: dict[tuple[str, str | None, int], bool] = {}


def _travels_by_value(module: types.ModuleType) -> bool:
    name = module.__name__
    if name == "__main__" or name in sys.builtin_module_names or "." in name:
        return False
    if hasattr(module, "__path__"):
        return False
    if getattr(module, "__rexec_source__", None) is not None:
        return True  # it came by value from the other side: it goes back the same way
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return False
    real = os.path.realpath(path)
    return not real.startswith(_installed_dirs())


def _module_source(module: types.ModuleType) -> str:
    """The source a helper module runs here: its file's text as first read for this import
    of it (``importlib.reload`` and ``%autoreload`` import it anew: a new ``__spec__``).
    Read again each time, a file edited without a reload sent its new text, which then ran
    there while the old code ran here, and reset the module's state there."""
    source = getattr(module, "__rexec_source__", None)
    if source is not None:
        return source
    known = _SOURCES.get(id(module))
    if known is not None and known[0] is module and known[1] is module.__spec__:
        return known[2]
    with open(module.__file__, encoding="utf-8") as fh:  # type: ignore[arg-type]
        source = fh.read()
    _SOURCES[id(module)] = (module, module.__spec__, source)
    return source


# id(module) -> (the module, its __spec__ when read, its source then): see _module_source.
_SOURCES: dict[int, tuple[types.ModuleType, Any, str]] = {}


def _source_digest(source: str) -> str:
    return hashlib.blake2b(source.encode(), digest_size=16).hexdigest()


def load_module_by_value(name: str, source: str, filename: str) -> types.ModuleType:
    """Receiver side of a helper module: the module itself, made from its source once."""
    digest = _source_digest(source)
    current = sys.modules.get(name)
    if current is not None and travels_by_value(current):
        try:
            if _source_digest(_module_source(current)) == digest:
                return current
        except OSError:
            pass
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__rexec_source__ = source  # type: ignore[attr-defined]
    register_source(filename, source.splitlines(keepends=True), None)
    # Its source is an import's body, and its own imports (numpy's) run whole only so
    # (``_Unpickler``): a Ctrl-C comes after it; a body that never ends is the grace period's.
    with held_sigint():
        sys.modules[name] = module
        try:
            exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - user code
        except BaseException:
            sys.modules.pop(name, None)
            raise
    return module


def submodules_in_use(module: types.ModuleType) -> tuple[str, ...]:
    """The public submodules of package ``module`` imported here and set on their parent
    (``import email.mime.text`` leaves ``email.mime`` and ``email.mime.text``), which code
    reaches as attributes (``email.mime.text.MIMEText``): the other side imports them too,
    or that code fails there with "module 'email' has no attribute 'mime'"."""
    name = module.__name__
    if not hasattr(module, "__path__"):
        return ()
    key = (name, id(module), len(sys.modules))  # new imports change the answer
    known = _SUBMODULES.get(key)
    if known is None:
        prefix = name + "."
        found = []
        for sub, mod in list(sys.modules.items()):
            if not sub.startswith(prefix) or mod is None:
                continue
            parent, _, last = sub.rpartition(".")
            if any(part.startswith("_") for part in sub[len(prefix) :].split(".")):
                continue
            if getattr(sys.modules.get(parent), last, None) is mod:
                found.append(sub)
        if len(_SUBMODULES) > 256:
            _SUBMODULES.clear()
        known = _SUBMODULES[key] = tuple(sorted(found))
    return known


_SUBMODULES: dict[tuple[str, int, int], tuple[str, ...]] = {}


def import_with_submodules(name: str, submodules: Sequence[str]) -> types.ModuleType:
    """Receiver side of a package that travels by reference: the package, with the
    submodules the sender had imported (``submodules_in_use``) imported here too where this
    side has them (one it lacks is left out: code that uses it says so when it runs).
    Imports not made here yet run whole, a Ctrl-C coming after them (``_Unpickler``)."""
    new = name not in sys.modules or any(sub not in sys.modules for sub in submodules)
    with held_sigint() if new else contextlib.nullcontext():
        module = importlib.import_module(name)
        for sub in submodules:
            try:
                importlib.import_module(sub)
            except Exception as exc:  # an import may fail in any way; the package still came
                _log.debug("submodule %s of %s not imported here: %s", sub, name, exc)
    return module


def _wrapped_attribute(module: types.ModuleType, qualname: str) -> Any:
    """What the decorator that ``qualname`` names in ``module`` wraps (its ``__wrapped__``)."""
    return _attribute(module, qualname).__wrapped__


def _attribute(module: types.ModuleType, qualname: str) -> Any:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def module_attribute(obj: Any) -> Any:
    """What ``obj``'s module holds under ``obj``'s qualified name; None when nothing does
    (no such module loaded, a name made inside a function)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    try:
        return _attribute(module, obj.__qualname__) if module is not None else None
    except AttributeError:
        return None


# ------------------------------------------------------------------ notebook code
def main_namespace() -> dict[str, Any]:
    """This process's ``__main__`` namespace: IPython's user namespace in a kernel or worker."""
    return sys.modules["__main__"].__dict__


def _main_globals() -> dict[str, Any]:
    return main_namespace()


def register_source(filename: str, lines: Sequence[str], cell: int | None) -> None:
    """Make ``filename``'s lines (and, in IPython, its cell number) known for tracebacks."""
    if filename not in linecache.cache or linecache.cache[filename][1] is None:
        linecache.cache[filename] = (sum(map(len, lines)), None, list(lines), filename)
    if cell is None:
        return
    shell = ipython_shell()
    names = getattr(getattr(shell, "compile", None), "_filename_map", None)
    if isinstance(names, dict):
        names.setdefault(filename, cell)


def ipython_shell() -> Any:
    """The running IPython shell, or None (IPython not imported or not running)."""
    get = getattr(sys.modules.get("IPython"), "get_ipython", None)
    return get() if get is not None else None


def _code_with_source(
    code: types.CodeType, filename: str, lines: tuple[str, ...], cell: int | None
) -> types.CodeType:
    """The code object with its own file name again (cloudpickle writes ``<dynamic-code>``
    for deterministic pickles), after making that file's lines known here."""
    if lines:
        register_source(filename, lines, cell)
    return _with_filename(code, filename)


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(
        _with_filename(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


def _main_function_setstate(func: types.FunctionType, state: Any) -> None:
    """cloudpickle's ``_function_setstate`` minus globals: they live in the receiver's main."""
    state, slotstate = state
    func.__dict__.update(state)
    slotstate.pop("__globals__", None)
    slotstate.pop("_cloudpickle_submodules", None)
    closure = slotstate.pop("__closure__")
    if closure is not None:
        for i, cell in enumerate(closure):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            func.__closure__[i].cell_contents = value  # type: ignore[index]
    for key, value in slotstate.items():
        setattr(func, key, value)


class _MainGlobals:
    """Stands for "the receiver's ``__main__`` namespace" inside a pickle."""

    def __reduce__(self) -> tuple[Any, tuple]:
        return _main_globals, ()


_MAIN = _MainGlobals()


def _lru_cache(func: Any, maxsize: int | None, typed: bool) -> Any:
    return functools.lru_cache(maxsize=maxsize, typed=typed)(func)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle plus: refusals, ``__main__`` functions bound to the receiver's main,
    cell sources, helper modules by value, ``lru_cache`` of notebook functions."""

    def __init__(self, file: Any, buffer_callback: Any) -> None:
        super().__init__(file, protocol=PICKLE_PROTOCOL, buffer_callback=buffer_callback)
        self.main = main_namespace()
        self.reads: dict[str, None] = {}
        self._sources: dict[str, tuple[tuple[str, ...], int | None]] = {}

    def reducer_override(self, obj: Any) -> Any:
        if obj is sys.stdout or obj is sys.stderr:  # the receiver's own streams
            return getattr, (sys, "stdout" if obj is sys.stdout else "stderr")
        what = refusal(obj)
        if what is not None:
            raise Refused(what, type(obj).__name__)
        if isinstance(obj, types.ModuleType):
            if travels_by_value(obj):
                source = _module_source(obj)
                return load_module_by_value, (obj.__name__, source, obj.__file__)
            submodules = submodules_in_use(obj)
            if submodules and sys.modules.get(obj.__name__) is obj:
                return import_with_submodules, (obj.__name__, submodules)
            return super().reducer_override(obj)
        if isinstance(obj, type) and (made := _ctypes_type_reduce(obj)) is not None:
            return made
        if isinstance(obj, types.FunctionType | type):
            module = sys.modules.get(getattr(obj, "__module__", None) or "")
            if module is not None and travels_by_value(module):
                qualname = getattr(obj, "__qualname__", "")
                named = module_attribute(obj)
                if named is obj:
                    return _attribute, (module, qualname)
                if named is not None and getattr(named, "__wrapped__", None) is obj:
                    # Decorated under its name (``@remote_func`` in a helper module): by
                    # value it was a copy with globals of its own on every call, so what
                    # it set in its module (``COUNT += 1``) was gone at the next call.
                    return _wrapped_attribute, (module, qualname)
        elif (by_value := getattr(type(obj), "_rexec_by_value", None)) is not None:
            # A ``remote_func``: pickle sends it by reference (``RemoteFunction.__reduce__``),
            # which the worker, where the notebook's names are no module's, cannot load.
            return by_value(obj)
        elif isinstance(obj, functools._lru_cache_wrapper):
            wrapped = getattr(obj, "__wrapped__", None)
            if getattr(wrapped, "__globals__", None) is self.main:
                params = obj.cache_parameters()
                return _lru_cache, (wrapped, params["maxsize"], params["typed"])
        return super().reducer_override(obj)

    def _dynamic_function_reduce(self, func: types.FunctionType) -> Any:
        if func.__globals__ is not self.main:
            return super()._dynamic_function_reduce(func)
        code, _, _, _, closure = self._function_getnewargs(func)
        state, slotstate = _cp._function_getstate(func)
        self.reads.update(dict.fromkeys(slotstate["__globals__"]))
        slotstate["__globals__"] = {}
        return (
            _make_function,
            (self._sourced(code), _MAIN, None, None, closure),
            (state, slotstate),
            None,
            None,
            _main_function_setstate,
        )

    def _sourced(self, code: types.CodeType) -> Any:
        filename = code.co_filename
        if filename not in self._sources:
            lines = tuple(linecache.getlines(filename))
            cell = None
            names = getattr(getattr(ipython_shell(), "compile", None), "_filename_map", None)
            if isinstance(names, dict):
                cell = names.get(filename)
            self._sources[filename] = (lines, cell)
        lines, cell = self._sources[filename]
        return _SourcedCode(code, filename, lines, cell)


_make_function = _cp._make_function


@dataclass
class _SourcedCode:
    code: types.CodeType
    filename: str
    lines: tuple[str, ...]
    cell: int | None

    def __reduce__(self) -> tuple[Any, tuple]:
        return _code_with_source, (self.code, self.filename, self.lines, self.cell)


# ------------------------------------------------------------------ dumps / loads
@dataclass
class Packed:
    """One value as frames: ``[pickle, *out_of_band_buffers]``, plus what it read.

    ``reads`` are the ``__main__`` globals read by notebook functions inside the value: the
    caller ships them too, so the function finds them on the other side.
    """

    frames: list[Any]
    reads: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return nbytes(self.frames)

    @property
    def digest(self) -> str:
        """Hashed now, from frames that may alias the value's memory: read it right away."""
        return digest(self.frames)


def pack_value(obj: Any, out_of_band: bool = True) -> Packed:
    buffers: list[pickle.PickleBuffer] = []

    def keep_out_of_band(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OOB_MIN_BYTES:
            return True  # true means "serialize in band"
        buffers.append(buf)
        return False

    stream = io.BytesIO()
    pickler = _Pickler(stream, keep_out_of_band if out_of_band else None)
    try:
        with _no_warnings_shown():
            pickler.dump(obj)
    except Refused:
        raise
    except Exception as exc:  # TypeError, PicklingError, RecursionError, ...
        raise _failed(exc) from None
    return Packed([stream.getbuffer(), *(b.raw() for b in buffers)], list(pickler.reads))


_quiet = threading.local()  # ``on``: this thread is (un)pickling, its warnings are not shown


def _quiet_showwarning(*args: Any, **kwargs: Any) -> None:
    """``warnings.showwarning`` while rexec pickles: drops what this thread's pickling
    raises, passes everything else to the one it replaced (``wrapped``)."""
    if getattr(_quiet, "on", False):
        return None
    return _quiet_showwarning.wrapped(*args, **kwargs)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _no_warnings_shown() -> Iterator[None]:
    """Warnings raised while (un)pickling in this thread are not shown: nothing of the
    pickler's own reaches the notebook.  Not with ``warnings.catch_warnings()``: changing
    the filters makes Python forget which warnings it has shown once per place, so after
    each remote cell a warning of the user's that a local notebook shows once (IPython's
    "To exit: use 'exit'" after ``sys.exit``, a library's DeprecationWarning) showed again.
    Other threads' warnings show as ever (the filters are process-wide; this flag is not)."""
    if warnings.showwarning is not _quiet_showwarning:  # first use, or replaced since
        _quiet_showwarning.wrapped = warnings.showwarning  # type: ignore[attr-defined]
        warnings.showwarning = _quiet_showwarning
    before = getattr(_quiet, "on", False)
    try:
        _quiet.on = True
        yield
    finally:
        _quiet.on = before


def dumps(obj: Any, out_of_band: bool = True, legacy: bool = False) -> list[Any]:
    """Pickle ``obj``; return ``[pickle_bytes, *buffers]`` where buffers are raw memoryviews.

    ``out_of_band=False`` gives one self-contained pickle (no buffers).  ``legacy=True``
    makes it with dill, which SciDx clients load with a plain ``dill.loads``.
    """
    if not legacy:
        return pack_value(obj, out_of_band).frames
    what = refusal(obj)
    if what is not None:
        raise Refused(what, type(obj).__name__)
    try:
        with _no_warnings_shown():
            return [dill.dumps(obj, protocol=PICKLE_PROTOCOL)]
    except Exception as exc:
        raise _failed(exc) from None


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of :func:`dumps`; frames may be bytes, memoryviews or zmq Frames.

    dill's Unpickler reads cloudpickle's pickles and the dill pickles of legacy clients
    (``_Unpickler``: the imports it starts run whole).
    """
    data = getattr(frames[0], "buffer", frames[0])
    bufs = [_view(f) for f in frames[1:]]
    try:
        with _no_warnings_shown():
            return _Unpickler(io.BytesIO(data), buffers=bufs).load()
    except Exception as exc:
        raise _failed(exc) from None


def _whole(importer: Any, name: str, *args: Any) -> Any:
    """``importer(name, *args)``, a pickle's function that imports module ``name`` first,
    run whole (``held_sigint``) where that module is not imported here yet."""
    if name in sys.modules:
        return importer(name, *args)
    with held_sigint():
        return importer(name, *args)


def _subimport(name: str) -> types.ModuleType:
    """cloudpickle's ``subimport`` (a module held by reference), run whole (``_Unpickler``)."""
    return _whole(_SUBIMPORT, name)


def _dill_import_module(import_name: str, safe: bool = False) -> Any:
    """dill's ``_import_module`` (a legacy client's module), run whole (``_Unpickler``)."""
    return _whole(_DILL_IMPORT, import_name, safe)


class _Unpickler(dill.Unpickler):
    """dill's unpickler, with every import that loading starts run to its end: a Ctrl-C
    (SIGINT, main thread) that comes during one is held and delivered as it ends
    (``held_sigint``), so the load still stops there, and the module is imported whole.

    Loading a value imports the module of each class and function it holds by reference
    (``find_class``), and each module it holds (cloudpickle's ``subimport``, also for the
    modules a function by value reads; dill's ``_import_module`` in a legacy client's
    pickle; rexec's ``import_with_submodules``); a helper module by value runs its source
    (``load_module_by_value``).  Those are imports the user never wrote: numpy's, for an
    array pushed to an executor that never imported numpy.  A KeyboardInterrupt raised
    inside one left its C extension initialised while Python forgot the half-imported
    package, and such an extension cannot be initialised twice in a process: from then on
    every ``import numpy`` there, and every array sent there, failed with "ImportError:
    cannot load module more than once per process", until the executor (or kernel) ended,
    with nothing to say why (tester, 6 of 14).  An import that never ends is the grace
    period's (the executor restarted, and the notebook told).

    Only imports of modules not imported yet are held: a global of a loaded module costs
    one ``sys.modules`` lookup more, and a value of builtins alone nothing."""

    def find_class(self, module: str, name: str) -> Any:
        if module in sys.modules:  # (dill's own, called as a function: ``super()`` cost
            found = _DILL_FIND_CLASS(self, module, name)  # 0.4 µs a global)
        else:
            with held_sigint():
                found = _DILL_FIND_CLASS(self, module, name)
        if found is _SUBIMPORT:
            return _subimport
        if found is _DILL_IMPORT:
            return _dill_import_module
        return found


_DILL_FIND_CLASS = dill.Unpickler.find_class
_SUBIMPORT = _cp.subimport
_DILL_IMPORT = dill._dill._import_module


def _view(frame: Any) -> Any:
    """A writable buffer for a received frame, so loaded arrays can be modified in place."""
    buf = getattr(frame, "buffer", frame)
    if isinstance(buf, bytes):
        buf = memoryview(buf)
    if isinstance(buf, memoryview) and buf.readonly:
        zmq = sys.modules.get("zmq")
        if zmq is not None and isinstance(frame, zmq.Frame):
            alias = _writable_alias(frame, buf)
            if alias is not None:
                return alias
        return bytearray(buf)  # one copy: immutable memory (bytes) is never written
    return buf


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (PEP 3118), to read a read-only buffer's address."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]


def _writable_alias(frame: Any, buf: memoryview) -> memoryview | None:
    """The received message's own memory, writable, kept alive by the view: no copy.

    pyzmq exposes a received frame read-only, but the message memory is this process's alone
    (libzmq allocated it for the receive and nothing else reads it), so the loaded array may
    write to it, as it would to the copy this saves (100 MiB: tens of ms, and as many page
    faults).  Only for 8-byte aligned data, as libzmq's own allocations are: every numpy dtype
    but ``longdouble`` is aligned at that.
    """
    info = _PyBuffer()
    if _get_buffer(buf, ctypes.byref(info), 0) != 0:
        return None
    address, size = info.buf, info.len
    _release_buffer(ctypes.byref(info))
    if not address or size == 0 or address % 8:
        return None
    alias = (ctypes.c_char * size).from_address(address)
    alias.frame = frame  # the message lives as long as any array made from it
    return memoryview(alias).cast("B")


def nbytes(frames: Iterable[Any]) -> int:
    total = 0
    for f in frames:
        total += memoryview(getattr(f, "buffer", f)).nbytes
    return total


def digest(frames: Iterable[Any]) -> str:
    """Content hash of a packed value: the pickle stream and its out-of-band buffers.

    Each buffer is hashed on its own and its hash goes into the value's: a large buffer the
    kernel saw no write to since its last hash is not read again (``dirty_pages``).  Equal
    digests mean equal pickles; equal values may still differ (a set's order), which only
    costs a transfer, never a wrong value.
    """
    h = _hasher()
    for index, f in enumerate(frames):
        view = memoryview(getattr(f, "buffer", f)).cast("B")
        h.update(len(view).to_bytes(8, "little"))
        h.update(view if index == 0 else dirty_pages.TRACKER.digest(view, _hash_bytes))
    return h.hexdigest()


def unserializable_message(name: str, value: Any, exc: SerializationError) -> str:
    """One sentence naming the variable and its type (and, when refused, why)."""
    if isinstance(exc, (Refused, OutOfMemory)):
        return f"variable '{name}' {unserializable_reason(value, exc)}"
    return f"variable '{name}' of type {type(value).__name__} cannot be serialized ({exc})"


def unserializable_reason(value: Any, exc: SerializationError) -> str:
    """Why ``value`` cannot travel, as the end of a sentence about it."""
    if isinstance(exc, Refused):
        verb = "is" if exc.type_name == type(value).__name__ else "holds"
        return f"{verb} {exc.what} ({exc.type_name}), which means nothing in another process"
    if isinstance(exc, OutOfMemory):
        return f"could not be copied to travel: the process ran out of memory ({exc})"
    return f"cannot be serialized ({exc})"


def pack(values: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Serialize several named values (or ``Packed`` ones): ``([{name, nbuffers, nbytes}],
    frames)``.

    Raises SerializationError naming the first variable that cannot be serialized.
    """
    entries: list[dict[str, Any]] = []
    out: list[Any] = []
    for name, value in values.items():
        if isinstance(value, Packed):  # packed already (its ``reads`` were needed first)
            parts = value.frames
            entries.append({"name": name, "nbuffers": len(parts), "nbytes": nbytes(parts)})
            out.extend(parts)
            continue
        try:
            parts = dumps(value)
        except SerializationError as exc:
            raise SerializationError(unserializable_message(name, value, exc)) from None
        entries.append({"name": name, "nbuffers": len(parts), "nbytes": nbytes(parts)})
        out.extend(parts)
    return entries, out


def split(entries: Sequence[dict[str, Any]], frames: Sequence[Any]) -> dict[str, list[Any]]:
    """The frames of each named entry (``vars`` of a message) that has frames of its own
    (not one ``same_as`` another: :func:`bind_same`)."""
    chunks: dict[str, list[Any]] = {}
    pos = 0
    for entry in entries:
        if entry.get("same_as"):
            continue
        n = int(entry["nbuffers"])
        chunk = list(frames[pos : pos + n])
        pos += n
        if len(chunk) != n:
            raise SerializationError("message is missing buffers")
        chunks[entry["name"]] = chunk
    return chunks


_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset, range)


def mutable(value: Any) -> bool:
    """Whether another name bound to ``value`` could see a change made through this one:
    where two names' sharing one object matters (``same_as``; not for ``x = y = 1``, where
    the interpreter's one ``1`` is no sharing of the user's)."""
    return not isinstance(value, (*_IMMUTABLE, type, types.ModuleType, types.FunctionType))


def bind_same(
    entries: Sequence[dict[str, Any]], values: dict[str, Any], failed: dict[str, str]
) -> None:
    """Bind each entry ``same_as`` another (``protocol.VarEntry``) to the very object that
    one loaded as, or fail it for the same reason: names that were one object where they
    were sent are one object here."""
    for entry in entries:
        source = entry.get("same_as")
        if not source:
            continue
        if source in values:
            values[entry["name"]] = values[source]
        elif source in failed:
            failed[entry["name"]] = failed[source]


_MISSING = object()


def unpack_each(
    entries: Sequence[dict[str, Any]],
    frames: Sequence[Any],
    stage: MutableMapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Load each value alone: ``(values, {name: reason it did not load})``, both in the
    entries' order.

    A value whose notebook code reads globals (an entry's ``reads``: the ``__setstate__``
    of a class defined in the notebook, run as it loads) loads after the values of those
    names that came with it, and with ``stage`` (the namespace that code sees: this
    process's ``__main__``) they are there while it loads, as after the code that made
    it.  It ran with the notebook's older values (``SCALE`` set by the same cell: 5 where
    the worker had 5000) or without them (``np`` imported by that cell: it stayed remote,
    NameError; tester BK).  ``stage`` is as it was when this returns: binding is the
    caller's (``NamespaceSync.apply``)."""
    chunks = split(entries, frames)
    reads = {
        e["name"]: [r for r in e.get("reads") or () if r in chunks and r != e["name"]]
        for e in entries
    }
    values: dict[str, Any] = {}
    failed: dict[str, str] = {}
    staged: dict[str, Any] = {}
    try:
        for name in _load_order(list(chunks), reads):
            if stage is not None:
                for dep in reads.get(name, ()):
                    if dep in values and dep not in staged:
                        staged[dep] = stage.get(dep, _MISSING)
                        stage[dep] = values[dep]
            try:
                values[name] = loads(chunks[name])
            except SerializationError as exc:
                failed[name] = str(exc)
    finally:
        for dep, old in staged.items():
            if old is _MISSING:
                stage.pop(dep, None)  # type: ignore[union-attr]
            else:
                stage[dep] = old  # type: ignore[index]
    bind_same(entries, values, failed)
    order = [e["name"] for e in entries]
    return {n: values[n] for n in order if n in values}, {
        n: failed[n] for n in order if n in failed
    }


def _load_order(names: list[str], reads: dict[str, list[str]]) -> list[str]:
    """``names`` with each after the names it ``reads`` (depth first, in the given order
    otherwise; a cycle is cut where it closes)."""
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str, path: set[str]) -> None:
        if name in placed or name in path:
            return
        path.add(name)
        for dep in reads.get(name, ()):
            place(dep, path)
        path.discard(name)
        placed.add(name)
        order.append(name)

    for name in names:
        place(name, set())
    return order


def unpack(entries: Sequence[dict[str, Any]], frames: Sequence[Any]) -> dict[str, Any]:
    """Inverse of :func:`pack`.  Raises SerializationError naming the variable that failed."""
    values, failed = unpack_each(entries, frames)
    for name, reason in failed.items():
        raise SerializationError(f"variable '{name}' could not be loaded ({reason})")
    return values
