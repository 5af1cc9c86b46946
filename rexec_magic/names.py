"""Which names a cell reads from the notebook and which it binds, from its syntax tree.

*Free names* are read before the cell assigns them (at module level, in order; names read
inside functions and classes count too when those bodies do not bind them).  *Bound names*
are what the cell assigns at module level.  Shipping one variable too many costs bytes;
missing one breaks the cell, so when unsure a name counts as free.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterator
from typing import Any

_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _children(node: ast.AST) -> list[ast.AST]:
    """``ast.iter_child_nodes(node)`` as a list, the fields read directly rather than
    through two generators a node (``iter_child_nodes``, ``iter_fields``): a cell's
    analysis visits each node several times."""
    found: list[ast.AST] = []
    for field in node._fields:
        value = getattr(node, field, None)
        if isinstance(value, list):
            found.extend(item for item in value if isinstance(item, ast.AST))
        elif isinstance(value, ast.AST):
            found.append(value)
    return found


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk``: ``node`` and everything under it, in its order (breadth first)."""
    todo = deque((node,))
    while todo:
        node = todo.popleft()
        todo.extend(_children(node))
        yield node


def _declared_outside(body: list[ast.stmt]) -> set[str]:
    """Names a function body declares ``global`` or ``nonlocal`` (its own, not nested ones'):
    they are not local to it, whatever it assigns."""
    found: set[str] = set()
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Global | ast.Nonlocal):
            found.update(node.names)
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            todo.extend(ast.iter_child_nodes(node))
    return found


def _globals_assigned_in(node: ast.AST) -> set[str]:
    """Names any function inside ``node`` declares ``global``: calling it rebinds them."""
    return {n for g in _walk(node) if isinstance(g, ast.Global) for n in g.names}


def _walrus_targets(node: ast.AST) -> set[str]:
    """``(name := ...)`` inside a comprehension binds ``name`` in the enclosing scope."""
    return {
        n.target.id
        for n in _walk(node)
        if isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name)
    }


class _Visitor(ast.NodeVisitor):
    """``ast.NodeVisitor`` with its method found once per node class, not by building
    ``"visit_" + name`` and looking it up at every node, and ``generic_visit`` reading the
    fields directly (``_children``): the two visitors below walk every node of every cell
    (half of a cell's analysis was that lookup and ``ast.iter_fields``).  Same order, same
    methods."""

    _methods: dict[type, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._methods = {}

    def visit(self, node: ast.AST) -> Any:
        kind = type(node)
        method = self._methods.get(kind)
        if method is None:
            method = getattr(type(self), "visit_" + kind.__name__, type(self).generic_visit)
            self._methods[kind] = method
        return method(self, node)

    def generic_visit(self, node: ast.AST) -> None:
        for child in _children(node):
            self.visit(child)


class _Reads(_Visitor):
    """Collect names loaded anywhere in a node, minus names local to nested scopes."""

    def __init__(self) -> None:
        self.loads: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load | ast.Del):
            self.loads.add(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.loads.add(node.target.id)  # x += 1 reads x
        self.generic_visit(node)

    def _scope(self, node: ast.AST, args: ast.arguments | None, body: list[ast.stmt]) -> None:
        inner = _Reads()
        for child in body:
            inner.visit(child)
        local = _bound_in(body) - _declared_outside(body)
        if args is not None:
            local |= {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
            local |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
            for default in (*args.defaults, *args.kw_defaults):
                if default is not None:
                    self.visit(default)
        self.loads |= inner.loads - local

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        if node.returns is not None:
            self.visit(node.returns)
        self._scope(node, node.args, node.body)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._scope(node, node.args, [ast.Expr(node.body)])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in (*node.decorator_list, *node.bases, *(k.value for k in node.keywords)):
            self.visit(expr)
        self._scope(node, None, node.body)

    def _comprehension(self, node: ast.AST, results: list[ast.expr]) -> None:
        """A comprehension is its own scope (Python 3): its loop variables are local to it.
        The first iterable is evaluated outside, so its reads always count."""
        gens: list[ast.comprehension] = node.generators  # type: ignore[attr-defined]
        self.visit(gens[0].iter)
        inner = _Reads()
        local: set[str] = set()
        for i, gen in enumerate(gens):
            if i:
                inner.visit(gen.iter)
            for cond in gen.ifs:
                inner.visit(cond)
            local |= {n.id for n in _walk(gen.target) if isinstance(n, ast.Name)}
        for expr in results:
            inner.visit(expr)
        self.loads |= inner.loads - (local - _walrus_targets(node))

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp  # type: ignore[assignment]

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])


class _Binds(_Visitor):
    """Collect the names a block binds in its own scope."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.names.add(node.id)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        # The body is another scope, but a ``global`` there rebinds this scope's name.
        self.names.add(node.name)
        self.names |= _globals_assigned_in(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.names.add(node.name)
        self.names |= _globals_assigned_in(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        pass

    def visit_ListComp(self, node: ast.AST) -> None:
        self.names |= _walrus_targets(node)  # loop variables stay in the comprehension

    visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_ListComp  # type: ignore[assignment]

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.names.add(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import  # type: ignore[assignment]

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.names.add(node.name)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.names.update(node.names)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self.names.add(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.names.add(node.name)


def _bound_in(body: list[ast.stmt]) -> set[str]:
    """Names a block binds in its own scope (not inside nested functions or classes)."""
    visitor = _Binds()
    for stmt in body:
        visitor.visit(stmt)
    return visitor.names


def _unconditional_binds(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement surely binds (assignments, imports, defs; not branches,
    not a bare annotation ``x: int``, not a ``:=`` inside the value, which may not run)."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {stmt.name}  # not the globals it may rebind: only if it is called
    if isinstance(stmt, ast.Assign):
        return {n for target in stmt.targets for n in _stored(target)}
    if isinstance(stmt, ast.AnnAssign | ast.AugAssign):
        return _stored(stmt.target) if stmt.value is not None else set()
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        return _bound_in([stmt])
    return set()


def analyze(code: str) -> tuple[list[str], list[str]]:
    """``(free_names, bound_names)`` of a cell, each in first-seen order.

    Raises SyntaxError for code that does not parse (IPython syntax like ``!ls`` or ``%time``
    is not valid Python: the caller decides what to do then).
    """
    return _analyze_tree(ast.parse(code))


def _analyze_tree(tree: ast.Module) -> tuple[list[str], list[str]]:
    free: dict[str, None] = {}
    bound: dict[str, None] = {}
    for stmt in tree.body:
        for name in sorted(_bound_in([stmt])):
            bound.setdefault(name, None)
    _Flow(free).block(tree.body, set())
    return list(free), list(bound)


class _Flow:
    """Free names in execution order, through compound statements too: a read counts as
    free unless a name is surely bound on every path that reaches it.  ``with open(p) as
    f: f.read()``, ``for row in rows: print(row)`` and ``except E as err: log(err)`` read
    names they bind first, so the notebook's ``f``, ``row`` and ``err`` are not needed (and
    need not pickle).  Where a path may skip a binding (a loop that runs no time, a branch,
    a ``try`` that failed early, a ``with`` whose manager swallows an exception) the name
    does not count as bound after it: when unsure a name counts as free."""

    def __init__(self, free: dict[str, None]) -> None:
        self.free = free

    def reads(self, node: ast.AST | None, surely: set[str]) -> None:
        if node is None:
            return
        visitor = _Reads()
        visitor.visit(node)
        for name in sorted(visitor.loads):
            if name not in surely:
                self.free.setdefault(name, None)

    def block(self, body: list[ast.stmt], surely: set[str]) -> set[str]:
        """Walk ``body`` in order from ``surely`` (names bound on entry): what is surely
        bound after it."""
        surely = set(surely)
        for stmt in body:
            surely = self.statement(stmt, surely)
        return surely

    def statement(self, stmt: ast.stmt, surely: set[str]) -> set[str]:
        if isinstance(stmt, ast.With | ast.AsyncWith):
            inner = set(surely)
            after = set(surely)
            for i, item in enumerate(stmt.items):
                self.reads(item.context_expr, inner)
                if item.optional_vars is not None:
                    self.reads(item.optional_vars, inner)  # `as obj.attr` reads obj
                    inner |= _stored(item.optional_vars)
                    if i == 0:  # a later item's error may be swallowed by an earlier one
                        after |= _stored(item.optional_vars)
            self.block(stmt.body, inner)
            return after  # the body may stop early, its manager swallowing the error
        if isinstance(stmt, ast.For | ast.AsyncFor):
            self.reads(stmt.iter, surely)
            self.reads(stmt.target, surely)
            self.block(stmt.body, surely | _stored(stmt.target))
            self.block(stmt.orelse, surely)
            return surely  # it may run no time
        # A `:=` in a test may not run (`a or (m := 5)`, a comprehension over nothing, a
        # lambda's own scope): its name is never taken as bound by it.
        if isinstance(stmt, ast.While):
            self.reads(stmt.test, surely)
            self.block(stmt.body, surely)
            self.block(stmt.orelse, surely)
            return surely
        if isinstance(stmt, ast.If):
            self.reads(stmt.test, surely)
            return self.block(stmt.body, surely) & self.block(stmt.orelse, surely)
        if isinstance(stmt, ast.Try | ast.TryStar):
            ends = [self.block(stmt.orelse, self.block(stmt.body, surely))]
            for handler in stmt.handlers:
                self.reads(handler.type, surely)
                caught = {handler.name} if handler.name else set()
                ends.append(self.block(handler.body, surely | caught) - caught)
            # A `finally` may run after the body failed early: it starts from `surely`, and
            # adds only what it binds itself (a handler may have unbound a name of `surely`).
            return set.intersection(*ends) | (self.block(stmt.finalbody, surely) - surely)
        if isinstance(stmt, ast.Match):
            self.reads(stmt.subject, surely)
            for case in stmt.cases:
                self.reads(case.pattern, surely)
                inner = surely | _captures(case)
                self.reads(case.guard, inner)
                self.block(case.body, inner)
            return surely  # no case may match
        self.reads(stmt, surely)
        if isinstance(stmt, ast.Delete):
            return surely - _deleted(stmt)
        return surely | _unconditional_binds(stmt)


def _stored(target: ast.AST) -> set[str]:
    """Plain names an assignment target binds (``a``, ``(a, *b)``; not ``a[i]``)."""
    return {n.id for n in _walk(target) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _captures(case: ast.match_case) -> set[str]:
    """Names a ``case`` pattern binds when it matches."""
    visitor = _Binds()
    visitor.visit(case.pattern)
    return visitor.names


def _deleted(stmt: ast.Delete) -> set[str]:
    return {n.id for t in stmt.targets for n in _walk(t) if isinstance(n, ast.Name)}


# Stands in ``free`` for "any name": the cell looks names up at run time in ways its syntax
# does not show (``eval(expr)``, ``globals()[name]``), so what it reads is not known here.
ANY_NAME = "*"
# Functions that read the notebook's namespace by name at run time.
_NAMESPACE_FUNCTIONS = {"globals", "vars", "locals"}
_CODE_FUNCTIONS = {"eval", "exec"}
# ``df.query("a > @threshold")``, ``df.eval(...)``, ``pd.eval(...)``: pandas reads ``@name``
# from the caller's namespace.
_STRING_QUERIES = {"query", "eval"}
_AT_NAME = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")


def _read_by_name(tree: ast.AST) -> list[str]:
    """Names the cell reads at run time by name, not as names in its syntax: the code of
    ``eval("...")`` / ``exec("...")``, ``globals()["x"]`` / ``globals().get("x")`` (also
    ``vars()``, ``locals()``), and pandas' ``@x`` in ``df.query("a > @x")``; ``ANY_NAME``
    when such a lookup is not a constant (``eval(expr)``, ``globals()[key]``).  Without them
    the worker's older value of ``x`` answered, silently."""
    found: list[str] = []
    for node in _walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, args = node.func, node.args
        first = args[0] if args else None
        text = first.value if isinstance(first, ast.Constant) else None
        if isinstance(func, ast.Name) and func.id in _CODE_FUNCTIONS:
            if not isinstance(text, str):
                found.append(ANY_NAME)
                continue
            try:
                inner = ast.parse(text)  # (an expression is a statement too)
            except SyntaxError:
                continue
            found += _analyze_tree(inner)[0]
        elif isinstance(func, ast.Name) and func.id in _NAMESPACE_FUNCTIONS and not args:
            found.append(ANY_NAME)  # narrowed below when only a constant key is looked up
        elif isinstance(func, ast.Attribute) and func.attr in _STRING_QUERIES and args:
            if isinstance(text, str):
                found += _AT_NAME.findall(text)
            elif isinstance(first, ast.JoinedStr):
                found.append(ANY_NAME)
    # ``globals()["x"]`` / ``globals().get("x")``: only "x" (one ANY_NAME fewer for each).
    for node in _walk(tree):
        call = None
        key = None
        if isinstance(node, ast.Subscript):
            call, key = node.value, node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault", "__getitem__")
            and node.args
        ):
            call, key = node.func.value, node.args[0]
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id in _NAMESPACE_FUNCTIONS
            and not call.args
            and isinstance(key, ast.Constant)
            and isinstance(key.value, str)
        ):
            found.remove(ANY_NAME)
            found.append(key.value)
    return found


# Cell magics whose line names a variable they bind (``%%capture out``).
_BINDING_LINES = {"capture"}


def _magic_calls(tree: ast.AST) -> list[tuple[str, str, str | None]]:
    """``get_ipython().run_cell_magic(name, line, body)`` / ``run_line_magic(name, line)``
    calls with constant arguments, as IPython's transformer writes them: ``(name, line, body)``."""
    found: list[tuple[str, str, str | None]] = []
    for node in _walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("run_cell_magic", "run_line_magic"):
            continue
        args = node.args
        if not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
            continue
        if node.func.attr == "run_cell_magic" and len(args) == 3:
            found.append((args[0].value, args[1].value, args[2].value))
        elif node.func.attr == "run_line_magic" and len(args) == 2:
            found.append((args[0].value, args[1].value, None))
    return found


# Words a cell's text holds if ``_read_by_name`` / ``_magic_calls`` can find anything in
# its tree: every name and attribute there is spelled in the text, for ASCII text (Python
# folds other identifiers with NFKC: ``ｅｖａｌ`` is ``eval``).  Each is a whole walk of the
# tree in Python, three of the five a cell's analysis took.
_BY_NAME_WORDS = (*_CODE_FUNCTIONS, *_NAMESPACE_FUNCTIONS, *_STRING_QUERIES)
_MAGIC_WORDS = ("run_cell_magic", "run_line_magic")


def _may_hold(text: str, words: tuple[str, ...]) -> bool:
    """Whether ``text`` may hold one of ``words`` as a name (False only when it surely does
    not)."""
    return not text.isascii() or any(word in text for word in words)


def analyze_cell(code: str, transform: Any = None) -> tuple[list[str], list[str], bool]:
    """``(free, bound, ends_in_expression)`` of an IPython cell.  ``free`` holds ``ANY_NAME``
    when the cell looks names up in ways its syntax does not show.

    IPython syntax (``%%time``, ``x = %time f()``, ``!ls``) is analysed in its Python form
    (``transform``: the shell's ``transform_cell``), and the code that magics run — the body of
    ``%%time`` / ``%%capture out``, the argument of ``%time`` — counts as the cell's own: what it
    reads is shipped, what it binds comes back, whatever magic wraps it.
    """
    text = code
    try:
        tree = ast.parse(text)
    except SyntaxError:
        if transform is None:
            return [], [], False
        try:
            text = transform(code)
            tree = ast.parse(text)
        except SyntaxError:
            return [], [], False  # the worker will report the syntax error itself
    free, bound = _analyze_tree(tree)
    if _may_hold(text, _BY_NAME_WORDS):
        free += [n for n in dict.fromkeys(_read_by_name(tree)) if n not in free]
    magic_calls = _magic_calls(tree) if _may_hold(text, _MAGIC_WORDS) else []
    for name, line, body in magic_calls:
        inner = body if body is not None else line
        inner_free, inner_bound, _ = analyze_cell(inner, transform)
        free += [n for n in inner_free if n not in free]
        bound += [n for n in inner_bound if n not in bound]
        if body is not None and name in _BINDING_LINES and line.split():
            target = line.split()[0]
            if target.isidentifier() and target not in bound:
                bound.append(target)
    ends = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    return free, bound, ends
