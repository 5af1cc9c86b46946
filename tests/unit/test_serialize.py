"""``rexec_magic.serialize``: values to frames and back, as client and worker use it.

Frames go through a real ZeroMQ socket pair on loopback and come back as the receiving
socket gives them (``zmq.Frame``, read-only, the message's own memory).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dill
import numpy as np
import pytest
import zmq

from rexec_magic import serialize
from tests.slow_import import SECONDS_VAR, slow_package

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def wire() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    ctx = zmq.Context()
    sender, receiver = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")
    sender.connect(f"tcp://127.0.0.1:{port}")
    yield sender, receiver
    ctx.destroy(linger=0)


@pytest.fixture
def over_the_wire(wire) -> Callable[[list], list[zmq.Frame]]:
    """Send frames (zero-copy) and receive them as a peer does: read-only zmq Frames."""
    sender, receiver = wire

    def send(frames: list) -> list[zmq.Frame]:
        sender.send_multipart(frames, copy=False)
        assert receiver.poll(10_000), "the frames did not arrive"
        return receiver.recv_multipart(copy=False)

    return send


@dataclass
class Point:
    x: float
    y: float


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        3.5,
        "text with ünïcode",
        b"\x00\xff bytes",
        [1, (2, 3), {"k": {4, 5}}],
        OrderedDict(a=1, b=2),
        Point(1.0, 2.0),
        lambda x: x + 1,  # noqa: E731 - a notebook-defined lambda travels by value
        np.arange(10),
    ],
    ids=lambda v: type(v).__name__,
)
def test_round_trip_gives_an_equal_value(value, over_the_wire):
    back = serialize.loads(over_the_wire(serialize.dumps(value)))
    if callable(value) and not isinstance(value, type):
        assert back(41) == 42
    elif isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
    else:
        assert back == value and type(back) is type(value)


def test_a_large_array_travels_out_of_band_and_arrives_writable_and_equal(over_the_wire):
    arr = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    frames = serialize.dumps(arr)
    assert len(frames) == 2  # the pickle, then the array's own memory
    assert memoryview(frames[0]).nbytes < 1024  # the data is not copied into the pickle
    assert memoryview(frames[1]).nbytes == arr.nbytes
    back = serialize.loads(over_the_wire(frames))
    np.testing.assert_array_equal(back, arr)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    back[0, 0] = -1.0  # an ordinary writable array, although the frame was read-only
    assert back[0, 0] == -1.0


def test_received_arrays_are_independent_and_the_sent_one_is_untouched(over_the_wire):
    """A received array is writable without a copy on arrival (it is the message's own
    memory): writing to it changes neither another received copy nor the sender's array."""
    arr = np.arange(200_000, dtype=np.int64)
    frames = serialize.dumps(arr)
    first = serialize.loads(over_the_wire(frames))
    second = serialize.loads(over_the_wire(frames))
    first[:] = -1
    first += 1
    np.testing.assert_array_equal(second, np.arange(200_000))
    np.testing.assert_array_equal(arr, np.arange(200_000))
    assert (first == 0).all()


def test_immutable_frames_are_copied_never_written():
    """Frames given as ``bytes`` (immutable memory, not a received message) load as a copy."""
    frames = [bytes(memoryview(f)) for f in serialize.dumps(np.zeros(100_000))]
    back = serialize.loads(frames)
    back[:] = 7.0
    again = serialize.loads(frames)
    assert (again == 0).all() and (back == 7.0).all()


def test_small_buffers_stay_in_band():
    assert len(serialize.dumps(np.zeros(16))) == 1
    assert len(serialize.dumps(b"x" * 1000)) == 1


def test_out_of_band_false_gives_one_pickle_plain_dill_can_load():
    arr = np.ones(200_000)
    frames = serialize.dumps({"a": arr}, out_of_band=False)
    assert len(frames) == 1
    np.testing.assert_array_equal(dill.loads(bytes(frames[0]))["a"], arr)


def test_pack_and_unpack_several_named_values(over_the_wire):
    values = {"x": 21, "arr": np.arange(100_000), "name": "n"}
    entries, frames = serialize.pack(values)
    assert [e["name"] for e in entries] == ["x", "arr", "name"]
    assert sum(e["nbuffers"] for e in entries) == len(frames)
    assert entries[1]["nbytes"] >= values["arr"].nbytes
    back = serialize.unpack(entries, over_the_wire(frames))
    assert back["x"] == 21 and back["name"] == "n"
    np.testing.assert_array_equal(back["arr"], values["arr"])


class Unpicklable:
    def __reduce__(self):
        raise TypeError("not today")


def test_an_unserializable_value_raises_naming_the_variable_and_its_type():
    with pytest.raises(serialize.SerializationError) as info:
        serialize.pack({"fine": 1, "odd": Unpicklable()})
    text = str(info.value)
    assert "'odd'" in text and "Unpicklable" in text and "cannot be serialized" in text


def test_a_meaningless_value_is_refused_naming_the_variable_and_its_type():
    gen = (i for i in range(3))
    with pytest.raises(serialize.SerializationError) as info:
        serialize.pack({"fine": 1, "gen": gen})
    text = str(info.value)
    assert "'gen'" in text and "generator" in text and "means nothing in another process" in text


def test_a_value_that_cannot_be_loaded_names_the_variable():
    entries = [{"name": "broken", "nbuffers": 1}]
    with pytest.raises(serialize.SerializationError, match="'broken' could not be loaded"):
        serialize.unpack(entries, [b"not a pickle"])


def test_missing_buffers_are_an_error_not_a_wrong_value():
    entries, frames = serialize.pack({"arr": np.arange(100_000)})
    with pytest.raises(serialize.SerializationError, match="missing buffers"):
        serialize.unpack(entries, frames[:1])


def test_a_pickle_of_a_class_that_only_exists_on_the_other_side_fails_with_its_name():
    payload = pickle.dumps(Point(1, 2))
    renamed = payload.replace(b"Point", b"Pxint")
    with pytest.raises(serialize.SerializationError, match="Pxint"):
        serialize.loads([renamed])


def test_version_note_names_both_sides():
    local = {"python": "3.11.7", "dill": "0.3.8"}
    remote = {"python": "3.12.1", "dill": "0.3.9"}
    assert serialize.version_note(local, remote) == (
        "local Python 3.11.7, dill 0.3.8; remote Python 3.12.1, dill 0.3.9"
    )
    assert "remote versions unknown" in serialize.version_note(local, None)


def test_only_a_different_python_minor_version_counts_as_a_mismatch():
    local = {"python": "3.11.7", "dill": "0.3.8"}
    assert not serialize.minor_mismatch(local, {"python": "3.11.2", "dill": "0.3.9"})
    assert serialize.minor_mismatch(local, {"python": "3.12.0", "dill": "0.3.8"})
    assert serialize.minor_mismatch(local, {})


def test_versions_describe_this_interpreter():
    import sys

    mine = serialize.versions()
    assert mine["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert mine["dill"] == dill.__version__


def test_pickling_keeps_which_warnings_were_shown_once():
    """A warning Python shows once per place (the default) stays shown once when values are
    pickled and loaded in between, as for every remote cell: changing the warning filters
    there made Python forget what it had shown, and the notebook saw it again after each
    remote cell (IPython's "To exit: use 'exit'" after every remote ``sys.exit``)."""

    def warn() -> None:
        warnings.warn("shown once here", UserWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        warn()
        serialize.loads(serialize.dumps({"a": [1, 2]}))
        serialize.loads(serialize.dumps({"a": [1, 2]}, legacy=True))
        warn()
    assert [str(w.message) for w in shown] == ["shown once here"]


def test_a_file_stays_where_it_is_said_so_rightly_open_or_closed(tmp_path):
    """A file object means nothing in another process: an open one is "an open file", one
    a ``with`` block closed is "a closed file" (it was called open, though ``f.closed``
    printed True; tester BL)."""
    from rexec_magic.serialize import refusal

    with open(tmp_path / "a.txt", "w") as f:
        assert refusal(f) == "an open file"
    assert refusal(f) == "a closed file"


def test_ctypes_handles_into_this_process_are_refused_saying_what_they_are():
    """A loaded library (any ``CDLL``: ``PyDLL`` too), a function pointer (of a library or
    made by ``CFUNCTYPE``) and the pointers (``pointer()``, ``c_void_p``, ``c_char_p``,
    ``c_wchar_p``) mean nothing in another process: each is refused by name."""
    import ctypes

    libc = ctypes.CDLL(None)
    cases = {
        "a loaded C library": [libc, ctypes.PyDLL(None)],
        "a C function pointer": [libc.getpid, ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1)],
        "a C pointer": [
            ctypes.pointer(ctypes.c_int(3)),
            ctypes.c_void_p(5),
            ctypes.c_char_p(b"x"),
            ctypes.c_wchar_p("x"),
        ],
    }
    for what, values in cases.items():
        for value in values:
            with pytest.raises(serialize.Refused) as info:
                serialize.dumps(value)
            assert info.value.what == what, value


def test_ctypes_types_made_at_run_time_travel_as_the_expression_that_makes_them():
    """An array type, a nested one and a pointer type arrive as that side's own type (ctypes
    keeps one per expression), and a notebook's ``Union`` with its fields, as data."""
    import ctypes

    class Either(ctypes.Union):
        _fields_ = [("i", ctypes.c_int), ("f", ctypes.c_float)]

    grid = ((ctypes.c_int * 2) * 2)((1, 2), (3, 4))
    back = serialize.loads(serialize.dumps(grid))
    assert type(back) is (ctypes.c_int * 2) * 2 and [list(row) for row in back] == [[1, 2], [3, 4]]
    assert serialize.loads(serialize.dumps(ctypes.POINTER(ctypes.c_double))) is ctypes.POINTER(
        ctypes.c_double
    )
    either = serialize.loads(serialize.dumps(Either(i=7)))
    assert either.i == 7 and bytes(either) == bytes(Either(i=7))


# Values whose loading imports a module this process never imported, each its own way (see
# ``serialize._Unpickler``): made in another process, as the worker pickles what it sends back.
# (the value, of ``m`` the package and ``h`` a helper module that imports it; how it is made)
MADE_ELSEWHERE = {
    "an object of its class": ("m.Thing(5)", ""),
    "the module": ("m", ""),
    "the module with a submodule in use": ("m", "importlib.import_module(m.__name__ + '.part')"),
    "a function reading it": ("(lambda mod: lambda: mod.VALUE)(m)", ""),
    "a helper module importing it": ("h", ""),
    "a legacy client's dill pickle of it": ("m", "LEGACY = True"),
}


def _made_elsewhere(expression: str, before: str, name: str, paths: list[Path]) -> list[bytes]:
    script = (
        "import importlib, sys\n"
        "from rexec_magic import serialize\n"
        "LEGACY = False\n"
        f"m = importlib.import_module({name!r})\n"
        f"h = importlib.import_module({name + '_helper'!r})\n"
        f"{before}\n"
        f"frames = serialize.dumps({expression}, legacy=LEGACY)\n"
        "assert len(frames) == 1\n"
        "sys.stdout.buffer.write(bytes(frames[0]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != SECONDS_VAR}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [ROOT, *paths])
    made = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, check=True, timeout=60
    )
    return [made.stdout]


@pytest.mark.parametrize("expression, before", MADE_ELSEWHERE.values(), ids=MADE_ELSEWHERE.keys())
def test_a_ctrl_c_while_a_load_imports_a_module_comes_once_the_import_is_over(
    tmp_path, monkeypatch, expression, before
):
    """A Ctrl-C (a real SIGINT to the main thread) while ``loads`` imports a module for the
    first time stops the load once that import is over, not inside it: the module is then
    imported whole, and the value loads next time.  Raised inside the import, it left a C
    extension initialised and its package forgotten: that module could never be imported
    again in the process ("cannot load module more than once per process"; numpy in a
    kernel loading a remote call's array, or in an executor loading a pushed one)."""
    lib, notebook = tmp_path / "lib", tmp_path / "notebook"
    name, flag = slow_package(lib)
    notebook.mkdir()
    (notebook / f"{name}_helper.py").write_text(f"import {name}\nVALUE = {name}.VALUE\n")
    frames = _made_elsewhere(expression, before, name, [lib, notebook])
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.setenv(SECONDS_VAR, "1")
    handler = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main = threading.main_thread().ident
    pressed = threading.Event()

    def press() -> None:
        deadline = time.monotonic() + 30
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGINT)
        pressed.set()

    presser = threading.Thread(target=press, daemon=True)
    loaded = []
    try:
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            serialize.loads(frames)
            loaded.append(True)  # (the Ctrl-C came after the load, and lands here)
            pressed.wait(30)
            time.sleep(0.1)
        assert not loaded, "the load ended before the Ctrl-C"
        assert sys.modules.get(name) is not None, f"{name} was not imported whole"
        value = serialize.loads(frames)
    finally:
        presser.join(60)
        signal.signal(signal.SIGINT, handler)
        for module in (name, f"{name}.part", f"{name}_helper"):
            sys.modules.pop(module, None)
    if expression == "m.Thing(5)":
        assert value.n == 5
    elif callable(value):
        assert value() == 7
    else:
        assert value.VALUE == 7
    if before.startswith("importlib"):
        assert value.part.PART == 1  # (``import_with_submodules``)
