"""The legacy reply splice (``broker/legacy.py``): the broker wraps a worker's value pickle
into a legacy reply dict without unpickling it, and a legacy client's plain ``dill.loads``
must read back exactly ``{"type", "sequence", "channel", "data": value}``.

Here the pickles come from the same serializer the worker uses (``serialize.dumps(...,
out_of_band=False)``) and from plain pickle/dill at several protocols: the splice must hold
for FRAME opcodes, memo references, big values and values that are code.
"""

from __future__ import annotations

import pickle

import dill
import numpy as np
import pytest

from broker import legacy
from rexec_magic import protocol as P
from rexec_magic import serialize

pytestmark = pytest.mark.unit


def worker_pickle(value) -> bytes:
    return bytes(serialize.dumps(value, out_of_band=False)[0])


shared = [1, 2, 3]
VALUES = {
    "none": None,
    "int": 7,
    "text": "é and ünïcode",
    "nested": {"nested": [1, (2, 3)], "set": {4}},
    "shared-references": {"a": shared, "b": shared},  # memo: b refers back to a
    "big-bytes": b"x" * 300_000,  # several pickle frames
    "array": np.arange(50_000, dtype=np.int32),
}


@pytest.mark.parametrize("name", VALUES)
def test_a_spliced_value_loads_with_plain_dill(name):
    value = VALUES[name]
    event = dill.loads(legacy.value_event(7, "return", worker_pickle(value)))
    assert set(event) == {"type", "sequence", "channel", "data"}
    assert (event["type"], event["sequence"], event["channel"]) == ("DATA", 7, "return")
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(event["data"], value)
    else:
        assert event["data"] == value


def test_shared_references_stay_shared():
    event = dill.loads(legacy.value_event(1, "return", worker_pickle(VALUES["shared-references"])))
    assert event["data"]["a"] is event["data"]["b"]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_any_pickle_protocol_from_2_on_can_be_spliced(protocol):
    value = {"k": list(range(100)), "s": "v" * 70_000}
    event = pickle.loads(legacy.value_event(3, "yield", pickle.dumps(value, protocol=protocol)))
    assert event["data"] == value and event["channel"] == "yield"


def test_a_function_value_is_spliced_by_value_and_callable():
    code = dill.dumps(lambda n: n * 3, recurse=True)
    event = dill.loads(legacy.value_event(2, "return", code))
    assert event["data"](14) == 42


def test_what_is_not_a_protocol_2_pickle_is_refused():
    with pytest.raises(ValueError, match="not a protocol 2"):
        legacy.value_event(1, "return", b"plain bytes")
    with pytest.raises(ValueError):
        legacy.value_event(1, "return", pickle.dumps(1, protocol=1))


def legacy_replies(kind: str, header: dict, buffers: list) -> list[bytes]:
    """The legacy payloads for one worker event, built as the broker builds them."""
    return legacy.replies(P.Message(kind, {"id": "call-1", **header}, buffers))


def test_a_returned_value_is_followed_by_end():
    header = {"seq": 3, "status": P.DoneStatus.OK, "vars": [{"name": "return", "nbuffers": 1}]}
    replies = [dill.loads(p) for p in legacy_replies(P.Kind.DONE, header, [worker_pickle(42)])]
    assert replies == [
        {"type": "DATA", "sequence": 3, "channel": "return", "data": 42},
        {"type": "END", "sequence": 4},
    ]


def test_stream_yield_and_start_become_the_legacy_events():
    start = legacy_replies(P.Kind.ACCEPTED, {"id": "x"}, [])
    out = legacy_replies(P.Kind.STREAM, {"seq": 1, "name": "stdout", "text": "hi\n"}, [])
    err = legacy_replies(P.Kind.STREAM, {"seq": 2, "name": "stderr", "text": "oops"}, [])
    item = legacy_replies(P.Kind.YIELD, {"seq": 3}, [worker_pickle("item")])
    assert [dill.loads(p) for p in (*start, *out, *err, *item)] == [
        {"type": "START", "sequence": 0},
        {"type": "DATA", "sequence": 1, "channel": "stdout", "data": "hi\n"},
        {"type": "DATA", "sequence": 2, "channel": "stderr", "data": "oops"},
        {"type": "DATA", "sequence": 3, "channel": "yield", "data": "item"},
    ]


def test_a_remote_exception_is_one_error_with_its_traceback():
    trace = ["Traceback (most recent call last):", '  File "<cell>", line 1']
    header = {"seq": 4, "ename": "KeyError", "evalue": "'k'", "traceback": trace}
    (reply,) = [dill.loads(p) for p in legacy_replies(P.Kind.ERROR, header, [])]
    assert reply["type"] == "ERROR" and reply["sequence"] == 4
    assert reply["message"].startswith("Remote function raised KeyError: 'k'\nTraceback")
    done = {"seq": 5, "status": P.DoneStatus.ERROR}
    assert legacy_replies(P.Kind.DONE, done, []) == []  # the ERROR already ended the stream


def test_an_error_shown_while_the_call_went_on_is_stderr_not_the_calls_end():
    """A display whose repr raised inside the call (``Error.shown``): a legacy client would
    have ended the call's stream at that ERROR."""
    header = {"seq": 2, "ename": "ValueError", "evalue": "repr broke", "shown": True}
    (reply,) = [dill.loads(p) for p in legacy_replies(P.Kind.ERROR, header, [])]
    assert reply == {
        "type": "DATA",
        "sequence": 2,
        "channel": "stderr",
        "data": "Remote function raised ValueError: repr broke\n",
    }


def test_an_interrupted_call_ends_with_an_error_that_says_so():
    header = {"seq": 2, "status": P.DoneStatus.INTERRUPTED}
    (reply,) = [dill.loads(p) for p in legacy_replies(P.Kind.DONE, header, [])]
    assert reply == {"type": "ERROR", "sequence": 2, "message": "The remote call was interrupted."}


def test_parse_request_reads_a_call_and_a_cancel():
    call = legacy.parse_request([P.LEGACY, b"tok", b"fn-pickle", b"args-pickle"])
    assert (call.token, call.cancel, call.fn, call.args) == (
        "tok",
        False,
        b"fn-pickle",
        b"args-pickle",
    )
    cancel = legacy.parse_request([P.LEGACY, b"tok", P.LEGACY_CANCEL, P.LEGACY_CANCEL_TEXT])
    assert cancel.cancel and cancel.token == "tok"


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([P.LEGACY, b"tok", b"fn"], "4 frames, got 3"),
        ([P.LEGACY, b"\xff\xfe", b"fn", b"args"], "not UTF-8"),
        ([b"RX1", b"tok", b"fn", b"args"], "4 frames"),
    ],
)
def test_malformed_legacy_frames_are_refused_with_a_reason(frames, why):
    with pytest.raises(legacy.LegacyFrameError, match=why):
        legacy.parse_request(frames)
