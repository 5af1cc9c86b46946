"""``rexec_magic.names.analyze``: which notebook variables a ``%%remote`` cell needs (free
names, shipped to the worker) and which it defines (bound names, brought back).

Shipping one name too many costs bytes; missing one breaks the cell with a NameError on the
worker, so the cases below say which of the two each construct must give.
"""

from __future__ import annotations

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from rexec_magic.names import ANY_NAME, analyze, analyze_cell

pytestmark = pytest.mark.unit


def free(code: str) -> set[str]:
    return set(analyze(code)[0])


def bound(code: str) -> set[str]:
    return set(analyze(code)[1])


def test_assignment_reads_the_right_side_and_binds_the_left():
    assert analyze("y = x * 2") == (["x"], ["y"])


def test_names_are_reported_in_first_seen_order_without_repeats():
    assert analyze("b = a\nc = a + b + d\nb = 2") == (["a", "d"], ["b", "c"])


def test_a_name_assigned_before_it_is_read_is_not_shipped():
    assert analyze("x = 1\ny = x") == ([], ["x", "y"])


def test_a_name_read_before_it_is_assigned_is_shipped():
    assert analyze("y = x\nx = 1") == (["x"], ["y", "x"])


def test_augmented_assignment_reads_then_binds():
    assert analyze("x += 1") == (["x"], ["x"])
    assert analyze("total = 0\ntotal += step") == (["step"], ["total"])


def test_unpacking_targets_are_all_bound():
    assert analyze("a, *b = seq") == (["seq"], ["a", "b"])


def test_attribute_and_item_assignment_read_the_object():
    code = "obj.attr = value\nd[key] = v2"
    assert free(code) == {"obj", "value", "d", "key", "v2"} and bound(code) == set()


def test_for_target_is_bound():
    code = "for i in items:\n    acc.append(i)"
    assert {"items", "acc"} <= free(code)
    assert "i" in bound(code)


def test_with_targets_are_bound():
    code = "with opener(path) as fh, other as (a, b):\n    data = fh.read()"
    assert {"opener", "path", "other"} <= free(code)
    assert bound(code) >= {"fh", "a", "b", "data"}


def test_except_target_is_bound_and_the_exception_type_read():
    code = "try:\n    risky()\nexcept MyError as err:\n    msg = str(err)"
    assert {"risky", "MyError"} <= free(code)
    assert bound(code) >= {"err", "msg"}


def test_a_branch_binding_may_not_happen_so_a_later_read_ships_the_name():
    code = "if cond:\n    maybe = 1\nprint(maybe)"
    assert {"cond", "maybe"} <= free(code)
    assert "maybe" in bound(code)


def test_comprehension_reads_its_source_and_outer_names():
    assert {"values", "k"} <= free("[v * k for v in values]")
    assert {"pairs"} <= free("{k: v for k, v in pairs}")
    assert {"limit", "lo"} <= free("g = (n for n in range(limit) if n > lo)")


def test_comprehension_variables_stay_inside_the_comprehension():
    """Python 3 comprehensions have their own scope: their loop variables are never defined
    in the notebook, so they must not be brought back (that would overwrite a notebook
    variable of the same name with whatever the worker had)."""
    assert analyze("x = [y for y in ys]") == (["ys"], ["x"])
    assert analyze("s = {k: v for k, v in pairs}") == (["pairs"], ["s"])
    assert "t" not in bound("g = (t for t in items)")


def test_a_name_read_after_a_comprehension_with_the_same_variable_is_the_notebooks():
    assert analyze("first = [t for t in items]\nprint(t)") == (["items", "print", "t"], ["first"])


def test_function_definition_binds_its_name_and_ships_what_its_body_reads():
    code = "def f(a, b=default):\n    return a + b + glob_c\nr = f(1)"
    assert analyze(code) == (["default", "glob_c"], ["f", "r"])


def test_function_locals_and_parameters_are_not_shipped():
    code = "def f(a, *args, k=1, **kw):\n    local = a + k\n    return local, args, kw"
    assert analyze(code) == ([], ["f"])


def test_a_function_that_assigns_a_global_ships_it_and_brings_it_back():
    """``global counter`` in a function the cell calls reads and rebinds the notebook's
    ``counter``: the worker needs its value and the notebook wants the new one."""
    code = "def bump():\n    global counter\n    counter += 1\nbump()"
    assert "counter" in free(code)
    assert "counter" in bound(code)


def test_module_level_global_statement_binds_the_name():
    assert analyze("global shared\nshared = 1") == ([], ["shared"])


def test_class_definition_binds_its_name_and_ships_bases_and_outer_reads():
    code = "class C(Base):\n    attr = val\n    def m(self):\n        return self.attr + other"
    assert analyze(code) == (["Base", "other", "val"], ["C"])


def test_lambda_parameters_are_local():
    assert analyze("f = lambda q: q + r") == (["r"], ["f"])


def test_imports_bind_the_name_the_notebook_sees():
    code = "import numpy as np\nimport os.path\nfrom math import sqrt, pi as PI\nz = np.sqrt(w)"
    assert analyze(code) == (["w"], ["np", "os", "PI", "sqrt", "z"])


def test_star_import_binds_nothing_by_name():
    assert analyze("from math import *") == ([], [])


def test_del_reads_the_name():
    assert free("del old") == {"old"}


def test_walrus_binds_at_module_level():
    code = "if (n := compute()) > 3:\n    out = n"
    assert "compute" in free(code)
    assert bound(code) >= {"n", "out"}


def test_f_string_expressions_are_read():
    assert analyze("s = f'{name!r} is {age:>{width}}'") == (["age", "name", "width"], ["s"])


def test_match_captures_are_bound():
    code = "match cmd:\n    case [first, *rest]:\n        got = first\n    case {'k': val}:\n" \
        "        got = val"  # fmt: skip
    assert "cmd" in free(code)
    assert bound(code) >= {"first", "rest", "val", "got"}


def test_async_function_body_reads_are_shipped():
    assert analyze("async def a():\n    await thing") == (["thing"], ["a"])


def test_ipython_syntax_is_a_syntax_error_for_the_caller_to_handle():
    with pytest.raises(SyntaxError):
        analyze("!ls\n%time x = 1")


@pytest.mark.parametrize(
    ("cell", "needs", "defines"),
    [
        ("files = !ls\nn = len(files)", {"len"}, {"files", "n"}),
        ("%matplotlib inline\nplot(data)", {"data", "plot"}, set()),
        ("x = %env HOME", set(), {"x"}),
    ],
)
def test_magics_are_analysed_in_their_python_form(cell, needs, defines):
    """What the magic does when a cell has IPython syntax: analyse IPython's transformation."""
    python = TransformerManager().transform_cell(cell)
    free_names, bound_names = analyze(python)
    assert needs <= set(free_names) and set(bound_names) == defines


@pytest.mark.parametrize(
    "code",
    [
        "with open(p) as f:\n    text = f.read()",
        "with a() as (f, g), b(f) as h:\n    use(f, g, h)",
        "with open(p) as f, lock:\n    pass\nprint(f)",  # the first item's target
        "for f in files:\n    print(f)",
        "try:\n    risky()\nexcept ValueError as f:\n    print(f)",
        "match cmd:\n    case [f, *rest]:\n        print(f, rest)",
        "if c:\n    f = 1\nelse:\n    f = 2\nprint(f)",
        "try:\n    f = load()\nexcept OSError:\n    f = None\nprint(f)",
        "try:\n    pass\nfinally:\n    f = 1\nprint(f)",
    ],
)
def test_a_name_bound_on_every_path_before_its_read_is_not_shipped(code):
    """``with open(p) as f: f.read()`` needs no notebook ``f`` (which may be an open file
    that cannot travel): compound statements are followed in order, as Python runs them."""
    assert "f" not in free(code) and "f" in bound(code)


@pytest.mark.parametrize(
    "code",
    [
        "for f in files:\n    pass\nprint(f)",  # no round: the notebook's f
        "if c:\n    f = 1\nprint(f)",
        "try:\n    f = load()\nexcept OSError:\n    pass\nprint(f)",
        "with suppress(E):\n    f = load()\nprint(f)",  # the manager may swallow the error
        "match cmd:\n    case [f]:\n        pass\nprint(f)",
        "f = 1\ntry:\n    pass\nexcept E as f:\n    pass\nprint(f)",  # the handler unbinds it
        "while more():\n    f = 1\nprint(f)",
        "for x in xs:\n    pass\nelse:\n    print(f)\nf = 1",
        "if flag or (f := 5):\n    print(f)",  # the `:=` may not run
        "while c and (f := 0):\n    pass\nelse:\n    print(f)",
        "if not any((f := x) > 3 for x in data):\n    print(f)",
        "if callable(lambda: (f := 1)):\n    print(f)",
        "with suppress(E), open(p) as f:\n    pass\nprint(f)",  # swallowed: f never bound
        "y = 0 if flag else (f := 1)\nprint(f)",
        "f: int\nprint(f)",  # an annotation binds nothing
    ],
)
def test_a_name_a_path_may_leave_unbound_is_shipped(code):
    """Where some path reaches the read without binding the name, the notebook's value is
    what it reads there, so it is shipped."""
    assert "f" in free(code)


@pytest.mark.parametrize(
    "code, read",
    [
        ("n = len(df.query('a > @threshold and b < @upper'))", ["threshold", "upper"]),
        ("total = pd.eval('x + @offset')", ["offset"]),
        ("r = eval('E * 2')", ["E"]),
        ("exec('y = base + 1')", ["base"]),
        ("r = globals()['GG']", ["GG"]),
        ("r = globals().get('GG', 0)", ["GG"]),
        ("r = vars()['V']", ["V"]),
        ("def f():\n    return eval('Q')", ["Q"]),
        ("r = \uff45\uff56\uff41\uff4c('W')", ["W"]),  # full-width letters: still ``eval``
        ("\u00e9 = 1\nr = eval('Z')", ["Z"]),  # (a cell whose text is not ASCII)
    ],
)
def test_names_looked_up_by_a_constant_string_are_read(code, read):
    """Names the cell reads through a string (``eval``, ``globals()[...]``, pandas' ``@x``)
    are shipped like the names in its syntax: without them the worker's older value of the
    name answered, silently."""
    free = analyze_cell(code)[0]
    assert all(name in free for name in read), free
    assert ANY_NAME not in free


@pytest.mark.parametrize(
    "code",
    ["r = eval(expr)", "r = globals()[key]", "print(vars())", "df.query(f'a > {t}')", "exec(src)"],
)
def test_a_lookup_by_a_name_not_written_in_the_cell_may_read_any_name(code):
    """What such a cell reads is not known before it runs: ``free`` says "any name", and the
    magic then ships every name the worker holds that changed here."""
    assert ANY_NAME in analyze_cell(code)[0]


def test_no_lookup_by_name_reads_nothing_more():
    assert analyze_cell("x = y + 1\nz = {'a': 1}['a']")[0] == ["y"]
