"""Split assert-style tests into what the sandbox computes (probes) and what the caller keeps (templates).

A test such as ``assert abs(candidate(1.33) - 0.33) < 1e-6`` becomes the probe ``candidate(1.33)``, sent to the
sandbox, and the template ``abs(<probe 0> - 0.33) < 1e-6``, kept by the caller and evaluated there on the value
the sandbox reported. The sandbox program never contains the expected values or the comparison, so code under
test that takes over its own process can only report values: it cannot make a wrong value pass.

What is split, and why the rules are what they are:

- **Templates** are built from constants, containers, operators, comparisons, ``and``/``or``/``not``,
  conditional expressions, subscripts and a few pure functions on plain data (:data:`SAFE_FUNCTIONS`:
  ``abs``, ``len``, ``sorted``, ``math.isclose``, ...). Everything else that mentions the program (the
  ``candidate`` argument of HumanEval's ``check``, the function under test, any name the test does not bind) is
  a **probe**: its source goes to the sandbox as it is.
- **Test-side expressions the caller cannot compute** (``list(range(10))``, ``random.randint(1, 9)``) make the
  assert unsplittable: their value would come from the sandbox, so the program could choose it.
- **Names the test binds itself** (locals of ``check``, loop variables, ``METADATA``, helper functions) are not
  available to probes, since the test's own code is not run in the sandbox when it is split; an assert that uses
  them is unsplittable. Imports are the exception: they carry no expected values, so they run in the sandbox
  before the probes (``setup``).
- A test that cannot be split, completely or in part, keeps that part as **code** run in-process as before; its
  verdict is then forgeable and says so (:attr:`TestPlan.forgeable`).
"""

from __future__ import annotations

import ast
import builtins
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# Pure functions of plain data the caller may apply to reported values (keys as the template names them).
SAFE_FUNCTIONS = {
    name: getattr(builtins, name)
    for name in (
        "abs", "all", "any", "bool", "dict", "float", "frozenset", "int", "len", "list", "max", "min", "round",
        "set", "sorted", "str", "sum", "tuple",
    )
}  # fmt: skip
SAFE_FUNCTIONS.update(
    {
        f"math.{name}": getattr(math, name)
        for name in ("ceil", "fabs", "floor", "isclose", "isfinite", "isinf", "isnan", "sqrt", "trunc")
    }
)
MATH_CONSTANTS = {name: getattr(math, name) for name in ("e", "inf", "nan", "pi", "tau")}
_BUILTIN_NAMES = frozenset(dir(builtins))
_STRUCTURAL = (
    ast.Tuple, ast.List, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare, ast.IfExp,
    ast.Subscript, ast.Slice,
)  # fmt: skip
_OPERATORS = (
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr, ast.BitXor,
)  # fmt: skip
MAX_UNROLL = 1000  # iterations of a loop of asserts turned into separate checks
_HARMLESS_TOP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.Pass)


class Unsplittable(Exception):
    """This assert (or test) cannot be judged by the caller; it runs in-process instead."""


class Probe(ast.expr):
    """A hole in a template: the value the sandbox reported for probe ``index``."""

    _fields = ("index",)


@dataclass(frozen=True)
class Check:
    """One assert: the caller's ``template`` over the reported values of ``probes``; ``text`` for reasons."""

    template: ast.expr
    text: str
    probes: tuple[int, ...]


@dataclass(frozen=True)
class TestPlan:
    """How one test is judged: its ``checks`` by the caller, then ``code`` (if any) run in the sandbox's process.

    ``code`` is what could not be split; a test that has some is forgeable (its verdict is a line the program's
    own process writes).
    """

    checks: tuple[Check, ...] = ()
    code: str | None = None

    @property
    def forgeable(self) -> bool:
        return self.code is not None

    @property
    def judged_by(self) -> str:
        """``values`` (the caller compared every value), ``mixed`` (and ran code in-process) or ``in-process``."""
        if self.code is None:
            return "values"
        return "mixed" if self.checks else "in-process"


@dataclass(frozen=True)
class Plan:
    """Everything the sandbox program needs (probe sources, imports, name bindings) and how to judge each test."""

    probes: tuple[str, ...]
    setup: tuple[str, ...]
    bind: tuple[tuple[str, str], ...]
    tests: tuple[TestPlan, ...]


@dataclass
class _Scope:
    hidden: set[str] = field(default_factory=set)  # bound by the test itself: unknown to the sandbox
    imports: dict[str, str] = field(default_factory=dict)  # local name -> module, from `import m [as a]`
    imported: set[str] = field(default_factory=set)  # every name an import statement binds
    functions: dict[str, str] = field(
        default_factory=dict
    )  # `from math import isclose [as c]`: c -> math.isclose


def _bound_names(body: Sequence[ast.stmt]) -> set[str]:
    """Names the statements of one scope bind, by anything but a top-level import statement.

    Function, lambda and class bodies and comprehensions have scopes of their own: only a definition's name is
    bound here, so a helper's local ``x`` does not hide the program's ``x``."""
    out: set[str] = set()
    stack: list[ast.AST] = [s for s in body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
            stack += node.decorator_list
            continue
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        elif isinstance(node, ast.alias):  # an import nested in a loop, an if, a try: not run as setup
            out.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            out.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            out.add(node.rest)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            out.update(node.names)
        stack += list(ast.iter_child_nodes(node))
    return out


def _add_import(scope: _Scope, stmt: ast.Import | ast.ImportFrom) -> None:
    for alias in stmt.names:
        local = (alias.asname or alias.name).split(".")[0]
        scope.imported.add(local)
        if isinstance(stmt, ast.Import) and (alias.asname is None or "." not in alias.name):
            scope.imports[local] = alias.name.split(".")[0] if alias.asname is None else alias.name
        elif (
            isinstance(stmt, ast.ImportFrom)
            and not stmt.level
            and f"{stmt.module}.{alias.name}" in SAFE_FUNCTIONS
        ):
            scope.functions[local] = f"{stmt.module}.{alias.name}"


def _free_names(node: ast.AST) -> set[str]:
    loaded, bound = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (loaded if isinstance(n.ctx, ast.Load) else bound).add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
    return loaded - bound


class _Splitter:
    """Turns assert statements into checks, collecting the probe sources of a whole plan."""

    def __init__(self) -> None:
        self.probes: list[str] = []

    def check(self, stmt: ast.Assert, scope: _Scope) -> Check:
        first = len(self.probes)
        try:
            template = self._split(stmt.test, scope)
        except Unsplittable:
            del self.probes[first:]
            raise
        text = ast.unparse(ast.Assert(test=stmt.test, msg=None))
        return Check(template, text[:160], tuple(range(first, len(self.probes))))

    def _safe_function(self, func: ast.expr, scope: _Scope) -> str | None:
        if isinstance(func, ast.Name) and func.id in scope.functions and func.id not in scope.hidden:
            return scope.functions[func.id]
        if isinstance(func, ast.Name) and func.id in SAFE_FUNCTIONS:
            ok = func.id not in scope.hidden and func.id not in scope.imported
            return func.id if ok else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            mod = func.value.id
            key = f"{scope.imports.get(mod)}.{func.attr}"
            if mod not in scope.hidden and key in SAFE_FUNCTIONS:
                return key
        return None

    def _split(self, node: ast.expr, scope: _Scope) -> ast.expr:
        if isinstance(node, ast.Constant):
            return node
        if isinstance(node, (ast.Starred, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            raise Unsplittable(type(node).__name__)
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and scope.imports.get(node.value.id) == "math"
            and node.value.id not in scope.hidden
            and node.attr in MATH_CONSTANTS
        ):
            return ast.Constant(MATH_CONSTANTS[node.attr])
        if isinstance(node, ast.BinOp) and not isinstance(node.op, _OPERATORS):
            raise Unsplittable(type(node.op).__name__)
        if isinstance(node, ast.Dict) and any(k is None for k in node.keys):
            raise Unsplittable("dict unpacking")
        if isinstance(node, _STRUCTURAL):
            return self._rebuild(node, scope)
        if isinstance(node, ast.Call):
            key = self._safe_function(node.func, scope)
            if key is not None:
                if any(k.arg is None for k in node.keywords):
                    raise Unsplittable("** arguments")
                return ast.Call(
                    func=ast.Name(id=key, ctx=ast.Load()),
                    args=[self._split(a, scope) for a in node.args],
                    keywords=[
                        ast.keyword(arg=k.arg, value=self._split(k.value, scope)) for k in node.keywords
                    ],
                )
        return self._probe(node, scope)

    def _rebuild(self, node: ast.expr, scope: _Scope) -> ast.expr:
        fields = {}
        for name, value in ast.iter_fields(node):
            if isinstance(value, ast.expr):
                fields[name] = self._split(value, scope)
            elif isinstance(value, list):
                fields[name] = [self._split(v, scope) if isinstance(v, ast.expr) else v for v in value]
            else:
                fields[name] = value
        return type(node)(**fields)

    def _probe(self, node: ast.expr, scope: _Scope) -> Probe:
        for sub in ast.walk(node):
            if isinstance(sub, (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
                raise Unsplittable(type(sub).__name__)
        hidden = _free_names(node) & scope.hidden
        if hidden:
            raise Unsplittable(f"uses the test's own names {sorted(hidden)}")
        if not _made_by_program(node, scope):
            raise Unsplittable(f"the sandbox would compute this for the test: {ast.unparse(node)[:60]}")
        self.probes.append(ast.unparse(node))
        return Probe(index=len(self.probes) - 1)


def _made_by_program(node: ast.expr, scope: _Scope) -> bool:
    """Whether a probe's value is made by the program: a name of the program, or a call, attribute or item of one.

    Anything inside the arguments of such a call is an input and may be test code. But a test-side function or
    operator applied to the program's values (``isclose(f(1), 2.0)``, ``[f(i) == 2 for i in xs]``,
    ``list(range(3))``) would run in the sandbox, where the program can patch the function or hand it an object
    that lies, and it often holds an expected value: such a probe is refused and the assert runs in-process."""
    if isinstance(node, ast.Name):
        return node.id not in _BUILTIN_NAMES and node.id not in scope.imported
    if isinstance(node, ast.Call):
        return _made_by_program(node.func, scope)
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        return _made_by_program(node.value, scope)
    return False


def _inert(stmt: ast.stmt) -> bool:
    """``pass``, a docstring or comment string, or a bare builtin name (HumanEval/129 has a lone ``print``)."""
    if isinstance(stmt, ast.Pass):
        return True
    value = stmt.value if isinstance(stmt, ast.Expr) else None
    return isinstance(value, ast.Constant) or (isinstance(value, ast.Name) and value.id in _BUILTIN_NAMES)


def _loop_values(node: ast.expr) -> list | None:
    """The values of a loop over ``range(<ints>)`` or a literal list/tuple of constants, at most MAX_UNROLL."""
    try:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
            args = [ast.literal_eval(a) for a in node.args]
            if node.keywords or not 1 <= len(args) <= 3 or any(type(a) is not int for a in args):
                return None
            values: list = list(range(*args)[: MAX_UNROLL + 1])
        elif isinstance(node, (ast.List, ast.Tuple)):
            values = list(ast.literal_eval(node))
        else:
            return None
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None
    ok = all(type(v) in (int, float, str, bool) or v is None for v in values)
    return values if ok and len(values) <= MAX_UNROLL else None


class _Substitute(ast.NodeTransformer):
    def __init__(self, name: str, value) -> None:
        self.name, self.value = name, value

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return ast.Constant(self.value) if node.id == self.name else node


def _unroll(loop: ast.For, body: Sequence[ast.stmt], hidden: set[str]) -> list[ast.Assert] | None:
    """``for x in range(2, 8): assert f(x) == str(x)`` as the asserts with x = 2, ..., 7, or None.

    Only a loop of asserts over constants, whose variable nothing else in ``check`` reads (it is gone once the
    loop is unrolled)."""
    if (
        loop.orelse
        or not isinstance(loop.target, ast.Name)
        or not all(isinstance(s, ast.Assert) for s in loop.body)
    ):
        return None
    name = loop.target.id
    if "range" in hidden or any(
        isinstance(n, ast.Name) and n.id == name
        for other in body
        for n in ast.walk(other)
        if other is not loop
    ):
        return None
    if any(
        isinstance(n, ast.Name) and n.id == name and not isinstance(n.ctx, ast.Load)
        for n in ast.walk(loop)
        if n is not loop.target
    ):
        return None
    values = _loop_values(loop.iter)
    if values is None:
        return None
    return [_Substitute(name, v).visit(copy.deepcopy(a)) for v in values for a in loop.body]


def plan_asserts(tests: Sequence[str]) -> Plan:
    """A plan for a list of tests, each a string of assert statements run against the program's names (GRPO).

    A test is split when every statement is an assert that splits (imports, ``pass`` and docstrings allowed);
    otherwise all of it is code run in-process, as one test."""
    splitter = _Splitter()
    setup: list[str] = []
    plans: list[TestPlan] = []
    for src in tests:
        first = len(splitter.probes)
        try:
            tree = ast.parse(src)
            scope = _Scope(hidden=_bound_names(tree.body))
            checks = []
            for stmt in tree.body:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    _add_import(scope, stmt)
            for stmt in tree.body:
                if isinstance(stmt, ast.Assert):
                    checks.append(splitter.check(stmt, scope))
                elif not (_inert(stmt) or isinstance(stmt, (ast.Import, ast.ImportFrom))):
                    raise Unsplittable(type(stmt).__name__)
            if not checks:
                raise Unsplittable("no assert")
        except (Unsplittable, SyntaxError, ValueError, RecursionError):
            del splitter.probes[first:]
            plans.append(TestPlan(code=src))
            continue
        setup += [ast.unparse(s) for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
        plans.append(TestPlan(checks=tuple(checks)))
    return Plan(tuple(splitter.probes), tuple(dict.fromkeys(setup)), (), tuple(plans))


def _check_function(tree: ast.Module) -> ast.FunctionDef | None:
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "check":
            a = stmt.args
            if len(a.args) == 1 and not (a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg or a.defaults):
                return stmt
    return None


def _effectful(stmt: ast.stmt) -> bool:
    """Whether skipping this top-level statement of a test module could change what the test checks."""
    if isinstance(stmt, _HARMLESS_TOP) or _inert(stmt):
        return bool(getattr(stmt, "decorator_list", None))
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
        return any(isinstance(n, (ast.Call, ast.Lambda, ast.comprehension)) for n in ast.walk(stmt.value))
    return True


def plan_check(test: str, entry_point: str) -> Plan:
    """A plan for one HumanEval-style test: a module whose ``check(candidate)`` asserts on the entry point.

    The asserts at the top of ``check`` that split are judged by the caller; whatever else the module or
    ``check`` does stays code (the module with those asserts removed, then ``check(entry_point)``), so the test is
    ``values`` only when nothing else is left."""
    whole = f"{test}\n\ncheck({entry_point})\n"
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError, RecursionError):
        return Plan((), (), (), (TestPlan(code=whole),))
    fn = _check_function(tree)
    if fn is None:
        return Plan((), (), (), (TestPlan(code=whole),))
    param = fn.args.args[0].arg
    scope = _Scope(hidden=(_bound_names(tree.body) | _bound_names(fn.body)) - {param})
    imports = [s for s in tree.body + fn.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    for stmt in imports:
        _add_import(scope, stmt)
    splitter = _Splitter()
    checks, split_ids, left_over = [], set(), False
    for stmt in fn.body:
        asserts = [stmt] if isinstance(stmt, ast.Assert) else None
        if isinstance(stmt, ast.For):
            asserts = _unroll(stmt, fn.body, scope.hidden)
        if asserts:
            first, n = len(splitter.probes), len(checks)
            try:
                checks += [splitter.check(a, scope) for a in asserts]
                split_ids.add(id(stmt))
                continue
            except Unsplittable:
                del splitter.probes[first:], checks[n:]
        if not (_inert(stmt) or isinstance(stmt, (ast.Import, ast.ImportFrom))):
            left_over = True
    left_over = left_over or any(_effectful(s) for s in tree.body if s is not fn)
    if not checks:
        return Plan((), (), (), (TestPlan(code=whole),))
    code = None
    if left_over:
        fn.body = [s for s in fn.body if id(s) not in split_ids] or [ast.Pass()]
        code = f"{ast.unparse(tree)}\n\ncheck({entry_point})\n"
    setup = tuple(dict.fromkeys(ast.unparse(s) for s in imports))
    return Plan(tuple(splitter.probes), setup, ((param, entry_point),), (TestPlan(tuple(checks), code),))
