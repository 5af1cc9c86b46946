"""A remote cell sees and leaves the namespace as a local cell would: the local run is the oracle.

Each case runs in a real Jupyter kernel (ipykernel via jupyter_client) against the real
`rexec up` stack twice: once as plain local cells, once with each cell under ``%%remote``.
Between the runs every name the case touches is removed locally, so a stale local value can
never pass for a remote one.  Compared: the values of the case's check expressions (their
repr, evaluated locally after the cells) and the class of any exception (the kernel's
``ename``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from jupyter_client.manager import KernelManager

from tests.harness import WAIT_S
from tests.kernel_harness import run

pytestmark = pytest.mark.stack

HELPER_MODULE = "SCALE = 3\n\n\ndef triple(v):\n    return v * SCALE\n"
PROBE = """
def __probe(expr):
    try:
        return repr(eval(expr, globals()))
    except BaseException as exc:
        return f"raised {type(exc).__name__}"
"""


@pytest.fixture(scope="module")
def kernel(stack, tmp_path_factory) -> Iterator[object]:
    """A kernel whose working directory holds a helper module the worker does not have."""
    notebook_dir = tmp_path_factory.mktemp("notebook")
    (notebook_dir / "nbhelper_tools.py").write_text(HELPER_MODULE)
    km = KernelManager(kernel_name="python3")
    env = {**os.environ, "REXEC_CONNECTION_FILE": str(stack.connection_file)}
    km.start_kernel(env=env, cwd=str(notebook_dir))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=WAIT_S)
    reply, _ = run(kc, "%load_ext rexec_magic\n" + PROBE)
    assert reply["status"] == "ok"
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


@dataclass
class Case:
    """``cells``: code, or ``(flags, code)``, or ``(flags, local code, remote code)``."""

    id: str
    setup: str
    cells: list
    checks: list[str] = field(default_factory=list)


def cells_of(case: Case, remote: bool) -> list[str]:
    out = []
    for cell in case.cells:
        if isinstance(cell, str):
            cell = ("", cell)
        flags, local = cell[0], cell[1]
        if not remote:
            out.append(local)
        elif len(cell) == 3:
            out.append(cell[2])
        else:
            out.append(f"%%remote {flags}\n{local}".replace(" \n", "\n"))
    return out


def names_in(case: Case) -> set[str]:
    text = "\n".join([case.setup, *(str(c) for c in case.cells), *case.checks])
    return {n for n in re.findall(r"\b[A-Za-z_]\w*\b", text) if not n.startswith("__")}


def probe(kc, checks: list[str]) -> dict[str, str]:
    code = f"print('ORACLE' + __import__('json').dumps({{e: __probe(e) for e in {checks!r}}}))"
    reply, outputs = run(kc, code)
    assert reply["status"] == "ok", reply
    text = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    return json.loads(text.split("ORACLE", 1)[1])


KEEP = {"print", "len", "sum", "range", "list", "int", "str", "isinstance", "type", "all", "abs"}


def run_case(kc, case: Case, remote: bool) -> dict[str, object]:
    forget = sorted(names_in(case) - KEEP)
    reply, _ = run(kc, f"for __n in {forget!r}:\n    globals().pop(__n, None)")
    assert reply["status"] == "ok"
    reply, _ = run(kc, case.setup)
    assert reply["status"] == "ok", reply
    errors = []
    for code in cells_of(case, remote):
        reply, outputs = run(kc, code)
        errors.append(reply.get("ename") if reply["status"] == "error" else None)
        stderr = "".join(
            m["content"]["text"]
            for m in outputs
            if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
        )
        assert "dill" not in stderr.lower() and "warning" not in stderr.lower(), stderr
    return {"errors": errors, "checks": probe(kc, case.checks)}


CLOSURE_SETUP = (
    "import math\nOFFSET = 10\ndef shift(v):\n    return v + OFFSET\n"
    "def root(v):\n    return math.sqrt(shift(v))"
)
CASES = [
    Case(
        # The notebook's fh, row and err do not pickle (an open file, a generator, a lock),
        # but the cell binds each before it reads it: they are not needed, so not refused.
        "names-bound-by-with-for-except-before-read",
        "import os, threading\npath = os.path.abspath('nbhelper_tools.py')\nfh = open(path)\n"
        "row = (i for i in range(3))\nerr = threading.Lock()",
        [
            "with open(path) as fh:\n    first = fh.readline().strip()\n"
            "for row in ['a', 'b']:\n    last = row.upper()\n"
            "try:\n    1 / 0\nexcept ZeroDivisionError as err:\n    said = type(err).__name__"
        ],
        ["first", "last", "row", "said"],
    ),
    Case("globals-read-transitively", CLOSURE_SETUP, ["r = root(6)"], ["r"]),
    Case(
        "globals-change-remotely-then-used",
        CLOSURE_SETUP,
        ["r1 = root(6)", "OFFSET = 30\nr2 = root(6)", "r3 = shift(0)"],
        ["r1", "r2", "r3", "OFFSET"],
    ),
    Case(
        "enum-identity-both-ways",
        "import enum\nclass Color(enum.Enum):\n    RED = 1\n    BLUE = 2\nc = Color.RED",
        ["ok = c is Color.RED\nback = Color.BLUE"],
        ["ok", "back is Color.BLUE", "c is Color.RED"],
    ),
    Case(
        "dataclass",
        "from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\n"
        "    def norm(self):\n        return abs(self.x)\np = P(-3)",
        ["q = P(p.x * 2)\nn = q.norm()"],
        ["q", "n", "isinstance(q, P)"],
    ),
    Case(
        "namedtuple",
        "from typing import NamedTuple\nclass Pt(NamedTuple):\n    x: int\n    y: int\n"
        "pt = Pt(1, 2)",
        ["s = pt.x + pt.y\npt2 = pt._replace(y=5)"],
        ["s", "pt2", "type(pt2) is Pt"],
    ),
    Case(
        "inheritance-and-class-defined-remotely",
        "class Base:\n    def hello(self):\n        return 'base ' + self.name()\n"
        "    def name(self):\n        return 'b'",
        ["class Child(Base):\n    def name(self):\n        return 'child'\nobj = Child()"],
        ["obj.hello()", "isinstance(obj, Base)", "type(obj).__name__"],
    ),
    Case(
        "lambda-partial-lru-cache-recursion",
        "import functools\nK = 3\nsq = lambda v: v * v + K\ndef power(b, e):\n    return b ** e\n"
        "cube = functools.partial(power, e=3)\n@functools.lru_cache(maxsize=None)\n"
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)",
        ["a1 = sq(4)\na2 = cube(2)\na3 = fib(30)\na4 = fact(6)"],
        ["a1", "a2", "a3", "a4"],
    ),
    Case(
        "closures",
        "def make_adder(k):\n    def add(v):\n        return v + k\n    return add\n"
        "add5 = make_adder(5)",
        ["c1 = add5(1)\nadd7 = make_adder(7)"],
        ["c1", "add7(2)"],
    ),
    Case(
        "classmethod-staticmethod",
        "class Temp:\n    scale = 2\n    def __init__(self, v):\n        self.v = v\n"
        "    @classmethod\n    def make(cls, v):\n        return cls(v * cls.scale)\n"
        "    @staticmethod\n    def unit():\n        return 'C'",
        ["t = Temp.make(5)\nu = Temp.unit()"],
        ["t.v", "u", "isinstance(t, Temp)"],
    ),
    Case(
        "nested-containers-of-notebook-instances",
        "class Item:\n    def __init__(self, n):\n        self.n = n\n"
        "    def __eq__(self, o):\n        return isinstance(o, Item) and o.n == self.n\n"
        "    def __repr__(self):\n        return f'Item({self.n})'\n"
        "bag = {'a': [Item(1), (Item(2),)]}",
        ["total = bag['a'][0].n + bag['a'][1][0].n\nbag['c'] = [Item(9)]"],
        ["total", "bag", "all(isinstance(i, Item) for i in bag['c'])"],
    ),
    Case(
        "in-place-list-and-dict",
        "lst = [1]\nd = {'a': 1}",
        ["lst.append(2)\nd.update(b=2)", "n = len(lst)"],
        ["lst", "d", "n"],
    ),
    Case(
        "in-place-through-a-notebook-function",
        "counter = []\ndef bump():\n    counter.append(1)",
        ["bump()", "k = len(counter)"],
        ["counter", "k"],
    ),
    Case(
        "numpy-in-place",
        "import numpy as np\narr = np.arange(5)",
        ["arr += 1", "s = int(arr.sum())"],
        ["arr.tolist()", "s"],
    ),
    Case(
        "pandas-in-place",
        "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})",
        ["df['b'] = df['a'] * 2"],
        ["df.to_dict()"],
    ),
    # Over dirty_pages.MIN_BYTES: the kernel tracks writes to these, on both sides; every
    # kind of write between and during remote cells must still reach the other side.
    Case(
        "large-numpy-written-in-place-on-both-sides",
        "import numpy as np, os\nbig = np.zeros(6 * 2**20 + 123, dtype=np.uint8)\n"
        "def by_kernel(a, at, data):\n    r, w = os.pipe()\n    os.write(w, data)\n"
        "    os.readv(r, [memoryview(a)[at : at + len(data)]])\n    os.close(r)\n    os.close(w)",
        [
            "s0 = int(big.sum())",
            "s1 = int(big.sum())",
            "big[0] = 1\nbig[3 * 2**20] = 2\nbig[-1] = 3",
            ("", "big[2**20] += 5", "big[2**20] += 5"),
            "s2 = int(big.sum())",
            "s3 = int(big.sum())",
            ("", "big += 1", "big += 1"),
            "s4 = int(big.sum())\nby_kernel(big, 5 * 2**20, bytes(range(200)))",
            ("", "by_kernel(big, 7, b'\\x09' * 9000)", "by_kernel(big, 7, b'\\x09' * 9000)"),
            "s5 = int(big.sum())",
            "s6 = int(big[:100].sum())",
        ],
        ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "int(big.sum())", "big.shape"],
    ),
    Case(
        "large-pandas-written-in-place-on-both-sides",
        "import numpy as np, pandas as pd\n"
        "df = pd.DataFrame({'a': np.zeros(10**6), 'b': np.ones(10**6)})",
        [
            "t0 = float(df['a'].sum())",
            "df.iloc[5, 0] = 7.0",
            ("", "df.iloc[999_999, 1] = 3.0", "df.iloc[999_999, 1] = 3.0"),
            "t1 = float(df['b'].sum())\nt2 = float(df['a'].sum())",
            "t3 = float(df['b'].sum())",
        ],
        ["t0", "t1", "t2", "t3", "float(df.sum().sum())"],
    ),
    Case(
        "model-fit-in-place",
        "class Model:\n    def __init__(self):\n        self.w = None\n"
        "    def fit(self, xs):\n        self.w = sum(xs)\n        return self\nmodel = Model()",
        ["model.fit([1, 2, 3]);"],
        ["model.w"],
    ),
    Case(
        "stays-remote-over-pull-limit-never-overwritten",
        "",
        ["data = [1]", ("--pull-limit 1KB", "data = list(range(100000))"), "n = len(data)"],
        ["n", "data == [1]"],
    ),
    Case(
        "stays-remote-no-pull-never-overwritten",
        "",
        ["m = 1", ("--no-pull", "m = 2"), "m2 = m * 10"],
        ["m2", "m == 1"],
    ),
    Case(
        "not-in-o-stays-remote",
        "",
        ["g = 1\nh = 1", ("-o g", "g = 2\nh = 2"), "gh = g + h"],
        ["g", "gh", "h == 1"],
    ),
    Case("wrapped-in-time", "", ["%%time\nz = 1"], ["z"]),
    Case("wrapped-in-capture", "", ["%%capture out\nprint('hi')\nw = 2"], ["w", "out.stdout"]),
    Case("wrapped-in-timeit", "", ["%%timeit -n1 -r1\ntz = 1"], ["tz"]),
    Case("line-magic-that-assigns", "def f():\n    return 6 * 7", ["x = %time f()"], ["x"]),
    Case(
        "line-remote-binds-the-value",
        "",
        [("", "v = 6 * 7", "v = %remote 6 * 7"), "v1 = v + 1"],
        ["v", "v1"],
    ),
    Case("underscore-is-the-value", "base = 6", ["base * 7", "u = _ + 1"], ["_", "u"]),
    Case(
        # The last outputs of local cells, read by a remote one: the notebook's.
        "underscore-of-a-local-output",
        "",
        [("", "21", "21"), ("", "'x'", "'x'"), "u2 = (_, __)"],
        ["u2"],
    ),
    Case(
        "exceptions-keep-their-class",
        "import json\nclass MyError(Exception):\n    pass",
        ["{}['k']", "json.loads('{')", "raise MyError('bad')", "1 / 0", "ok_after = 1"],
        ["ok_after"],
    ),
    Case(
        "except-clause-catches-the-remote-class",
        "class MyError(Exception):\n    pass",
        [
            (
                "",
                "try:\n    raise MyError('x')\nexcept MyError:\n    caught = 'mine'",
                "try:\n    %remote raise MyError('x')\nexcept MyError:\n    caught = 'mine'",
            ),
            (
                "",
                "try:\n    {}['k']\nexcept KeyError:\n    caught2 = 'key'",
                "try:\n    %remote {}['k']\nexcept KeyError:\n    caught2 = 'key'",
            ),
        ],
        ["caught", "caught2"],
    ),
    Case(
        "failed-cell-keeps-what-it-bound",
        "",
        ["before = 1\nraise ValueError('late')", "after = before + 1"],
        ["before", "after"],
    ),
    Case("deleted-remotely", "gone = 5", ["del gone"], ["'gone' in globals()"]),
    Case(
        # Bound and unbound in ways the cell's syntax does not show: found after it ran.
        "bound-at-run-time",
        "tmpv = 1\nrr = 1",
        [
            "def setg():\n    global NEWG\n    NEWG = 1\nseen = (tmpv, rr)",
            "setg()\nexec('EX = 2')\nglobals()['GS'] = 3\nfrom math import *\n"
            "globals().pop('tmpv')\nglobals()['rr'] = 2",
        ],
        ["NEWG", "EX", "GS", "pi", "floor(2.5)", "'tmpv' in globals()", "rr"],
    ),
    Case(
        # Deleted by a local cell after a remote cell had them: the next remote cells see
        # them gone too (max is the builtin again), whether they name them or not.
        "deleted-locally-after-an-exchange",
        "thr = 0.5\nmax = 5\ntab = [1]",
        [
            "seen = (thr, max, len(tab))",
            ("", "del thr, max\ntab.append(2)", "del thr, max\ntab.append(2)"),
            "has_thr = 'thr' in globals()\nbiggest = max([1, 2])",
            "tab_len = len(tab)\nstill_no_thr = globals().get('thr')",
        ],
        ["seen", "has_thr", "biggest", "tab_len", "still_no_thr", "'thr' in globals()", "max"],
    ),
    Case(
        # A value that stays remote (a lock) has a placeholder here; deleting it deletes it.
        "deleted-locally-while-it-lived-remotely",
        "import threading\nlk = None",
        [
            "lk = threading.Lock()",
            ("", "del lk", "del lk"),
            "has_lk = 'lk' in globals()",
        ],
        ["has_lk", "'lk' in globals()"],
    ),
    Case(
        "helper-module-beside-the-notebook",
        "import nbhelper_tools\nfrom nbhelper_tools import triple",
        ["t1 = nbhelper_tools.triple(2)\nt2 = triple(3)"],
        ["t1", "t2"],
    ),
    Case(
        # Names the cells read through strings: pandas' `@name`, eval's code, a constant
        # key or a computed one of globals().  Changed here after the worker had them, the
        # worker's older values answered, silently (3 of 3).
        "names-read-by-name-at-run-time",
        "import pandas as pd\ndf = pd.DataFrame({'a': range(10)})\nthreshold = 5\n"
        "E = [0]\nGG = 1\nkey = 'GG'",
        [
            "n1 = len(df.query('a > @threshold'))\ne1 = eval('E')\ng1 = globals()['GG']",
            ("", "threshold = 8\nE = [5]\nGG = 2", "threshold = 8\nE = [5]\nGG = 2"),
            "n2 = len(df.query('a > @threshold'))\ne2 = eval('E')\ng2 = globals()['GG']",
            ("", "GG = 3", "GG = 3"),
            "k3 = globals()[key]",
        ],
        ["n1", "e1", "g1", "n2", "e2", "g2", "k3"],
    ),
    Case(
        "module-alias-used-by-a-function",
        "import numpy as npx\ndef total(v):\n    return int(npx.sum(v))",
        ["tt = total([1, 2, 3])"],
        ["tt"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_remote_cell_matches_local_cell(kernel, case):
    local = run_case(kernel, case, remote=False)
    remote = run_case(kernel, case, remote=True)
    assert remote == local


def test_meaningless_value_is_refused_before_anything_is_sent(kernel):
    kc = kernel
    run(kc, "fh = open('nbhelper_tools.py')\nsent = 0")
    reply, outputs = run(kc, "%%remote\nsent = 1\ncontent = fh.read()")
    assert reply["status"] == "error"
    assert reply["ename"] == "UnserializableVariable"
    assert "'fh'" in reply["evalue"] and "open file" in reply["evalue"]
    assert "TextIOWrapper" in reply["evalue"]
    reply, _ = run(kc, "%%remote\nprint('sent' in globals())")
    assert probe(kc, ["sent"]) == {"sent": "0"}
    run(kc, "fh.close()")


def test_value_not_loadable_here_stays_remote_and_others_bind(kernel):
    """A package only the worker has (a directory only on its sys.path)."""
    kc = kernel
    cell = (
        "%%remote\nimport pathlib, sys, tempfile\nroot = tempfile.mkdtemp()\n"
        "pkg = pathlib.Path(root, 'onlyremote_pkg')\npkg.mkdir()\n"
        "(pkg / '__init__.py').write_text("
        "'class Thing:\\n    pass\\nclass Boom(Exception):\\n    pass\\n')\n"
        "sys.path.insert(0, root)\nimport onlyremote_pkg\n"
        "thing = onlyremote_pkg.Thing()\nok_value = 5"
    )
    reply, outputs = run(kc, cell)
    assert reply["status"] == "ok", reply
    # rexec's own note: a plain-text display (rexec_magic/notes.py), never on stderr
    notes = "".join(
        m["content"]["data"].get("text/plain", "")
        for m in outputs
        if m["msg_type"] == "display_data"
    )
    assert "`thing` stays remote" in notes and "onlyremote_pkg" in notes
    assert not [m for m in outputs if m["msg_type"] == "stream"]
    checks = probe(kc, ["ok_value", "type(thing).__name__", "'onlyremote_pkg' in globals()"])
    assert checks["ok_value"] == "5"
    assert checks["type(thing).__name__"] != "'Thing'"
    reply, _ = run(kc, "%%remote\nsame = type(thing).__name__")
    assert probe(kc, ["same"]) == {"same": "'Thing'"}
    # An exception whose class the notebook cannot load: RemoteCellError naming it.
    reply, _ = run(kc, "%%remote\nraise onlyremote_pkg.Boom('far away')")
    assert reply["ename"] == "RemoteCellError"
    assert "Boom" in reply["evalue"] and "far away" in reply["evalue"]
    text = "\n".join(reply["traceback"])
    assert "Boom" in text and "far away" in text


def test_traceback_points_at_the_notebook_cell(kernel):
    kc = kernel
    reply, _ = run(kc, "def fails_here(v):\n    scale = 2\n    return v / 0")
    defined_in = reply["execution_count"]
    reply, outputs = run(kc, "%%remote\nfails_here(1)")
    assert reply["status"] == "error" and reply["ename"] == "ZeroDivisionError"
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(reply["traceback"]))
    assert f"In[{defined_in}]" in text and f"In[{reply['execution_count']}]" in text
    assert "return v / 0" in text
    assert "Could not get source" not in text


def test_unchanged_value_is_not_sent_again(kernel):
    kc = kernel
    run(kc, "import numpy as np\nbig = np.ones(1_000_000)")
    run(kc, "%%remote --no-pull\nheld = big")
    run(kc, "%%remote\nsame_object = held is big")
    assert probe(kc, ["same_object"]) == {"same_object": "True"}
    run(kc, "big[0] = 5")  # a local change: the next cell ships it
    run(kc, "%%remote\nsame_after_change = held is big\nfirst = float(big[0])")
    assert probe(kc, ["same_after_change", "first"]) == {
        "same_after_change": "False",
        "first": "5.0",
    }


def test_remote_func_carries_the_globals_it_reads(kernel):
    kc = kernel
    reply, _ = run(
        kc,
        CLOSURE_SETUP + "\nfrom rexec_magic import remote_func\nrr = remote_func(root)(6)",
    )
    assert reply["status"] == "ok", reply
    assert probe(kc, ["rr"]) == {"rr": "4.0"}


def test_status_lists_names_that_live_only_remotely(kernel):
    kc = kernel
    run(kc, "%%remote --no-pull\nonly_there = 1")
    reply, outputs = run(kc, "%rexec_status")
    text = json.dumps([m["content"].get("data", {}) for m in outputs])
    assert "only remote" in text and "only_there" in text


def test_a_new_worker_gets_the_values_the_old_one_held(kernel):
    """The notebook skips unchanged values; a worker that lost them asks for them again."""
    kc = kernel
    run(kc, "keepme = 41")
    reply, _ = run(kc, "%%remote\nk1 = keepme + 1")
    assert reply["status"] == "ok" and probe(kc, ["k1"]) == {"k1": "42"}
    # Stop the worker behind the session's back: its records still say the worker has keepme.
    reply, _ = run(
        kc, "get_ipython().magics_manager.registry['RexecMagics'].session.spawner.stop()"
    )
    assert reply["status"] == "ok", reply
    reply, _ = run(kc, "%%remote\nk2 = keepme + 2")
    assert reply["status"] == "ok", reply
    assert probe(kc, ["k2"]) == {"k2": "43"}


def test_remote_func_changes_to_globals_come_back_and_are_not_overwritten(kernel):
    """As a local call would: the list the function appends to is changed here too, and the
    next call does not ship the old local list over the newer remote one."""
    kc = kernel
    reply, _ = run(
        kc,
        "from rexec_magic import remote_func\nseen = [1]\n"
        "@remote_func\ndef note(v):\n    seen.append(v)\n    return len(seen)",
    )
    assert reply["status"] == "ok", reply
    reply, _ = run(kc, "n1 = note(2)\nn2 = note(3)")
    assert reply["status"] == "ok", reply
    assert probe(kc, ["n1", "n2", "seen"]) == {"n1": "2", "n2": "3", "seen": "[1, 2, 3]"}


def test_globals_a_remote_func_binds_come_back_as_from_a_local_call(kernel):
    """``global NEW; NEW = v`` and ``globals()[k] = v`` in a called function bind names the
    notebook did not have: a local call binds them here, the remote one left them only on
    the worker without a word (synchronous and submitted alike).  Deleting goes too."""
    kc = kernel
    reply, _ = run(
        kc,
        "from rexec_magic import remote_func\n@remote_func\ndef setnew(k, v):\n"
        "    global NEWV\n    NEWV = v\n    globals()[k] = v\n"
        "@remote_func\ndef dropnew():\n    global NEWV\n    del NEWV",
    )
    assert reply["status"] == "ok", reply
    reply, _ = run(kc, "setnew('K0', 5)\nsetnew.submit('K1', 7).result()")
    assert reply["status"] == "ok", reply
    assert probe(kc, ["NEWV", "K0", "K1"]) == {"NEWV": "7", "K0": "5", "K1": "7"}
    reply, _ = run(kc, "dropnew()\ngone = 'NEWV' not in globals()")
    assert reply["status"] == "ok", reply
    assert probe(kc, ["gone"]) == {"gone": "True"}


def test_a_notebook_class_a_call_returns_or_changes_is_no_conflict(kernel):
    """A call returning an instance of a notebook dataclass, or bumping a class attribute:
    the class comes back as the notebook's own object, updated in place, and the call
    warned "`Result` was changed here while the remote call ran" (nothing local changed)."""
    kc = kernel
    reply, outputs = run(
        kc,
        "from rexec_magic import remote_func\nfrom dataclasses import dataclass\n"
        "@dataclass\nclass Result:\n    loss: float\n"
        "class Counter:\n    n = 0\n"
        "@remote_func\ndef fit(e):\n    return Result(0.5 * e)\n"
        "@remote_func\ndef bump():\n    Counter.n += 1\n    return Counter.n\n"
        "r = fit(1)\nb1 = bump()\nb2 = bump.submit().result()\nn = Counter.n",
    )
    assert reply["status"] == "ok", reply
    said = [m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream"]
    assert not [t for t in said if "changed here" in t], said
    assert probe(kc, ["r", "b1", "b2", "n"]) == {
        "r": "Result(loss=0.5)", "b1": "1", "b2": "2", "n": "2"
    }  # fmt: skip


def test_a_remote_func_called_on_the_worker_runs_there(kernel):
    """A remote function calling another one, or a remote cell calling one: the code is on
    the worker already, and it runs there, as a plain call (it raised "NotLoggedIn: No rexec
    connection file", pointing at a login).  A ``self=`` keyword goes to the function."""
    kc = kernel
    reply, _ = run(
        kc,
        "from rexec_magic import remote_func\n@remote_func\ndef inner(x):\n"
        "    import os\n    return (x + 1, os.getpid())\n"
        "@remote_func\ndef outer(x):\n    import os\n    return inner(x)[0] * 10, os.getpid()\n"
        "@remote_func\ndef kw(*args, **kwargs):\n    return sorted(kwargs)\n"
        "o = outer(1)\nk = kw(1, self=3)",
    )
    assert reply["status"] == "ok", reply
    reply, _ = run(
        kc, "%%remote\nimport os\nc = inner(5)\nf = inner.submit(6).result()\npid = os.getpid()"
    )
    assert reply["status"] == "ok", reply
    got = probe(kc, ["o", "k", "c", "f", "pid"])
    pid = got.pop("pid")
    assert got == {
        "o": f"(20, {pid})", "k": "['self']", "c": f"(6, {pid})", "f": f"(7, {pid})"
    }  # fmt: skip


def test_a_remote_func_that_changes_its_own_state_says_it_is_not_kept(kernel):
    """A closure variable (``nonlocal count``), a mutable default (``seen=[]``) or an
    ``lru_cache``: a local function keeps what a call changed for the next call; each
    remote call starts from the notebook's function, so answers differed from a local
    call's (1, 1, 1 against 1, 2, 3) without a word.  Now said; a function that keeps
    nothing, or leaves what it keeps alone, says nothing."""
    kc = kernel
    reply, _ = run(
        kc,
        "from rexec_magic import remote_func\nimport functools\n"
        "def make():\n    count = 0\n    @remote_func\n    def inc():\n"
        "        nonlocal count\n        count += 1\n        return count\n    return inc\n"
        "inc = make()\n"
        "@remote_func\ndef acc(x, seen=[]):\n    seen.append(x)\n    return len(seen)\n"
        "@remote_func\n@functools.lru_cache\ndef sq(n):\n    return n * n\n"
        "@remote_func\ndef pure(x, scale=2):\n    return x * scale\n"
        "import random, numpy as np\nrng = random.Random(0)\n"
        "@remote_func\ndef draw(r=rng):\n    return r.random()\n"
        "class Acc:\n    n = 0\n    def add(self):\n        self.n += 1\n        return self.n\n"
        "    def get(self):\n        return self.n\n"
        "acc_obj = Acc()\nradd = remote_func(acc_obj.add)\nrget = remote_func(acc_obj.get)\n"
        "@remote_func\ndef reads(x, table=np.arange(5), f=len, mod=np):\n"
        "    return int(table.sum()) + f([x])",
    )
    assert reply["status"] == "ok", reply
    for call in ("inc()", "acc(1)", "sq(3)", "draw()", "radd()"):
        reply, outputs = run(kc, call)
        assert reply["status"] == "ok", reply
        said = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
        assert "changed its own state in this call" in said and "not kept" in said, (call, said)
    for call in ("pure(3)", "rget()", "reads(1)"):  # keep what they keep as it was
        reply, outputs = run(kc, call)
        assert reply["status"] == "ok", reply
        assert not [m for m in outputs if m["msg_type"] == "stream"], (call, outputs)


def test_local_code_between_exchanges_of_one_cell_is_seen(kernel):
    """Within one local cell, code that changes a value in place, or binds a fresh object
    (that may reuse a freed one's address), before each exchange: every exchange sees the
    value as it is then, as a local call would.  Through remote_func, ``%remote`` in a loop,
    and ``run_cell_magic`` called from code."""
    kc = kernel
    reply, _ = run(
        kc,
        "from rexec_magic import remote_func\nacc = []\n"
        "@remote_func\ndef count():\n    return len(acc)\n"
        "@remote_func\ndef rate():\n    return cfg['lr']",
    )
    assert reply["status"] == "ok", reply
    reply, _ = run(
        kc,
        "counts, rates, lines, magics = [], [], [], []\n"
        "for i in range(3):\n    acc.append(i)\n    counts.append(count())\n"
        "for lr in (1, 2, 3):\n    cfg = {'lr': lr}\n    rates.append(rate())\n"
        "for i in range(2):\n    acc.append(i)\n    n = %remote len(acc)\n    lines.append(n)\n"
        "for i in range(2):\n    acc.append(i)\n"
        "    get_ipython().run_cell_magic('remote', '', 'm = len(acc)')\n    magics.append(m)",
    )
    assert reply["status"] == "ok", reply
    assert probe(kc, ["counts", "rates", "lines", "magics"]) == {
        "counts": "[1, 2, 3]",
        "rates": "[1, 2, 3]",
        "lines": "[4, 5]",
        "magics": "[6, 7]",
    }


def test_remote_func_ships_the_globals_of_functions_among_its_arguments(kernel):
    """A notebook function passed as an argument (plain or in a partial) reads notebook
    globals on the worker as it would locally: they travel, and a changed one travels again."""
    kc = kernel
    reply, _ = run(
        kc,
        "import functools\nfrom rexec_magic import remote_func\nlimit_a = 2\n"
        "def above(v):\n    return v > limit_a\n"
        "@remote_func\ndef keep(pred, xs):\n    return [x for x in xs if pred(x)]",
    )
    assert reply["status"] == "ok", reply
    reply, _ = run(
        kc,
        "kept1 = keep(above, [1, 2, 3, 4])\nlimit_a = 3\n"
        "kept2 = keep(functools.partial(above), [1, 2, 3, 4])",
    )
    assert reply["status"] == "ok", reply
    assert probe(kc, ["kept1", "kept2"]) == {"kept1": "[3, 4]", "kept2": "[4]"}


def test_a_package_travels_with_the_submodules_imported_under_it(kernel):
    """``import xml.dom.minidom`` binds ``xml``, and code reaches the submodule as an
    attribute: the other side imports the submodules too, both ways (a package travels by
    reference).  It used to fail with "module 'xml' has no attribute 'dom'" (2 of 2)."""
    kc = kernel
    fresh = "import sys\nprint('wsgiref.simple_server' in sys.modules, 'xml.dom' in sys.modules)"
    reply, outputs = run(kc, "%%remote\n" + fresh)
    assert "False False" in "".join(m["content"].get("text", "") for m in outputs), outputs
    reply, outputs = run(kc, "import sys\nprint('wsgiref.simple_server' in sys.modules)")
    assert "False" in "".join(m["content"].get("text", "") for m in outputs)
    run(kc, "import xml.dom.minidom")
    cell = "%%remote\ntag = xml.dom.minidom.parseString('<a/>').documentElement.tagName"
    reply, _ = run(kc, cell)
    assert reply["status"] == "ok", reply
    reply, _ = run(kc, "%%remote\nimport wsgiref.simple_server")
    assert reply["status"] == "ok", reply
    checks = ["tag", "wsgiref.simple_server.WSGIServer.__name__"]
    assert probe(kc, checks) == {"tag": "'a'", checks[1]: "'WSGIServer'"}
