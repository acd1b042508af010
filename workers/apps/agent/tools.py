"""The agent's tools: a calculator over integers and a lookup table of town populations.

A tool takes its input text and returns its observation text; a bad input gives an
observation starting with ``error:`` (the model reads it, as agents do), never an exception.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping

MAX_CALC_CHARS = 200
MAX_MAGNITUDE = 10 ** 15

_OPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
}


def _value(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.FloorDiv) and right == 0:
            raise ValueError("division by zero")
        out = _OPS[type(node.op)](left, right)
        if abs(out) > MAX_MAGNITUDE:
            raise ValueError(f"a result above {MAX_MAGNITUDE}")
        return out
    raise ValueError(f"not integer arithmetic (+ - * // and brackets): {ast.unparse(node)!r}")


def calc(expression: str) -> str:
    """``"(12 + 5) * 3"`` -> ``"51"``; integers with + - * // and brackets only."""
    if len(expression) > MAX_CALC_CHARS:
        return f"error: the expression is longer than {MAX_CALC_CHARS} characters"
    try:
        return str(_value(ast.parse(expression.strip(), mode="eval").body))
    except SyntaxError:
        return f"error: cannot parse {expression!r}"
    except ValueError as exc:
        return f"error: {exc}"


def lookup(table: Mapping[str, int], query: str) -> str:
    """``"Borvik population"`` -> the number, or ``"not found: ..."``."""
    words = query.split()
    if len(words) != 2 or words[1] != "population":
        return f"error: a lookup is '<town> population', got {query!r}"
    value = table.get(words[0])
    return str(value) if value is not None else f"not found: {words[0]}"


def run(table: Mapping[str, int], name: str, argument: str) -> str:
    """One tool call's observation."""
    if name == "calc":
        return calc(argument)
    if name == "lookup":
        return lookup(table, argument)
    return f"error: unknown tool {name!r} (tools: calc, lookup)"
