"""Reported values as plain data, and the caller's evaluation of a check's template on them.

The sandbox reports each probe's value as JSON (:data:`ENCODER` is the code that writes it, run in the
sandbox). JSON's own types carry ``None``, booleans, ints, floats (``NaN`` and ``Infinity`` included), strings
and lists; everything else is a one-key object: ``{"t": [...]}`` tuple, ``{"d": [[k, v], ...]}`` dict,
``{"s": [...]}`` set, ``{"fs": [...]}`` frozenset, ``{"c": [re, im]}`` complex, ``{"y": "hex"}`` bytes.

The encoder reads an object only through the builtin type's own methods (``list.__iter__``, ``dict.items``,
``int.__int__``, ...), never through methods the object's class defines, and refuses any object that is not
builtin data. So a returned object whose ``__eq__`` always answers True is reported as what it holds (or not at
all) and compared by the caller as plain data. That is a matter of faithful reporting, not of security: the
program can write any line it likes into the results file. Security comes from the other side: the caller
decodes into fresh builtin objects (:func:`decode`), and evaluates the template itself (:func:`evaluate`), with
the expected values that only the caller has.

The caller's evaluator is a small interpreter over the node kinds :mod:`.split` lets into templates. The
values it meets are attacker-chosen, so operations that could take unbounded time or memory on them (huge
powers, sequence repetition, ``round`` to a huge number of digits) are refused past fixed sizes; any error is a
failed check.
"""

from __future__ import annotations

import ast
import json
import operator
from typing import Any

from .split import SAFE_FUNCTIONS, Check, Probe

MAX_POWER_BITS = 1_000_000  # int ** int results beyond about this many bits are refused
MAX_REPEAT = 10_000_000  # elements of a repeated str/bytes/list/tuple

# The sandbox side (a fragment of the harness program; see harness.py). Reads builtin data through the builtin
# types' own methods; anything else raises TypeError, and the probe is reported as failed.
ENCODER = r"""
_type, _issubclass = type, issubclass
def _plain_dict(v):
    return {k: x for k, x in dict.items(v)}
_BASES = (
    (int, int.__int__), (float, float.__float__), (str, str.__str__), (bytes, bytes.__bytes__),
    (list, lambda v: [x for x in list.__iter__(v)]), (tuple, lambda v: tuple(tuple.__iter__(v))),
    (dict, _plain_dict), (set, lambda v: set(set.__iter__(v))),
    (frozenset, lambda v: frozenset(frozenset.__iter__(v))),
)
def _enc(v):
    t = _type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list:
        return [_enc(x) for x in v]
    if t is tuple:
        return {"t": [_enc(x) for x in v]}
    if t is dict:
        return {"d": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if t is set:
        return {"s": [_enc(x) for x in v]}
    if t is frozenset:
        return {"fs": [_enc(x) for x in v]}
    if t is complex:
        return {"c": [v.real, v.imag]}
    if t is bytes:
        return {"y": v.hex()}
    for base, plain in _BASES:
        if _issubclass(t, base):
            return _enc(plain(v))
    raise TypeError("only builtin data can be reported, not %s" % t.__name__)
"""


def decode(x: Any) -> Any:
    """The plain value of a reported JSON value; ValueError when it is not one this encoding writes."""
    t = type(x)
    if x is None or t in (bool, int, float, str):
        return x
    if t is list:
        return [decode(e) for e in x]
    if t is dict and len(x) == 1:
        ((tag, body),) = x.items()
        if tag == "y" and type(body) is str:
            return bytes.fromhex(body)
        if type(body) is not list:
            raise ValueError(f"bad {tag!r} value")
        if tag == "t":
            return tuple(decode(e) for e in body)
        if tag == "s":
            return {decode(e) for e in body}
        if tag == "fs":
            return frozenset(decode(e) for e in body)
        if tag == "d":
            if not all(type(p) is list and len(p) == 2 for p in body):
                raise ValueError("bad dict items")
            return {decode(k): decode(v) for k, v in body}
        if tag == "c" and len(body) == 2 and all(type(e) in (int, float) for e in body):
            return complex(body[0], body[1])
    raise ValueError("not a reported value")


def _pow(a, b):
    if type(a) is int and type(b) is int and abs(a) > 1 and b > 0 and a.bit_length() * b > MAX_POWER_BITS:
        raise OverflowError("power too large to judge")
    return operator.pow(a, b)


def _mul(a, b):
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, bytes, list, tuple)) and type(n) is int and len(seq) * n > MAX_REPEAT:
            raise OverflowError("repetition too large to judge")
    return operator.mul(a, b)


def _round(x, ndigits=None):
    if ndigits is not None and (type(ndigits) is not int or abs(ndigits) > 1000):
        raise ValueError("round to too many digits")
    return round(x) if ndigits is None else round(x, ndigits)


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_, ast.Invert: operator.invert}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_FUNCTIONS = {**SAFE_FUNCTIONS, "round": _round}


class ProbeFailed(Exception):
    """A value the template needs was not reported, or the program raised instead of returning it."""


# A probe's outcome as read back: (True, value) or (False, why there is no value).
Outcome = tuple[bool, Any]


class _Evaluator:
    def __init__(self, outcomes: dict[int, Outcome]) -> None:
        self.outcomes = outcomes

    def ev(self, node: ast.AST) -> Any:
        if isinstance(node, Probe):
            ok, value = self.outcomes.get(node.index, (False, "no value reported"))
            if not ok:
                raise ProbeFailed(value)
            return value
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = [self.ev(e) for e in node.elts]
            return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
        if isinstance(node, ast.Dict):
            return {self.ev(k): self.ev(v) for k, v in zip(node.keys, node.values, strict=True)}
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self.ev(node.operand))
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self.ev(node.left), self.ev(node.right))
        if isinstance(node, ast.BoolOp):
            is_and = isinstance(node.op, ast.And)
            value = None
            for sub in node.values:
                value = self.ev(sub)
                if bool(value) != is_and:
                    return value
            return value
        if isinstance(node, ast.Compare):
            left = self.ev(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self.ev(right_node)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.ev(node.body) if self.ev(node.test) else self.ev(node.orelse)
        if isinstance(node, ast.Subscript):
            return self.ev(node.value)[self.ev(node.slice)]
        if isinstance(node, ast.Slice):
            parts = (node.lower, node.upper, node.step)
            return slice(*(None if p is None else self.ev(p) for p in parts))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
            args = [self.ev(a) for a in node.args]
            kwargs = {k.arg: self.ev(k.value) for k in node.keywords}
            return _FUNCTIONS[node.func.id](*args, **kwargs)
        raise TypeError(f"not a template node: {type(node).__name__}")


def evaluate(check: Check, outcomes: dict[int, Outcome]) -> tuple[bool, str]:
    """(passed, why not) for one check, evaluated here on the reported values."""
    try:
        result = bool(_Evaluator(outcomes).ev(check.template))
    except ProbeFailed as exc:
        return False, f"{check.text}: {exc}"
    except Exception as exc:  # TypeError, RecursionError, MemoryError...: the assert would have failed too
        return False, f"{check.text}: {type(exc).__name__} while comparing"
    if result:
        return True, ""
    got = ", ".join(_short(outcomes.get(i, (False, None))[1]) for i in check.probes)
    return False, f"{check.text}: got {got}" if got else f"{check.text}: false"


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # a huge int, a deep list
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_line(line: str) -> dict | None:
    """One line of the results file as a dict, or None for anything else (a partial line, garbage)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if type(obj) is dict else None
