"""The formula games' rules (Points24, EZPoints) in plain Python, written apart from the JAX envs to
cross-check them: formulas are evaluated by Python's own parser (`ast`) with exact fractions.

The rules are those `formula.py` states: gym_cards' `points.py` with exact arithmetic and tokens
that never merge (the formula is joined with spaces before parsing, so `2 4` and `* *` are syntax
errors; unary signs are refused).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from fractions import Fraction

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def evaluate(tokens: Sequence[str]) -> Fraction | None:
    """The exact value of the formula, or None when malformed or dividing by zero."""
    try:
        # strip: blanks (rejected numbers) may lead, as Python's `eval` allows
        tree = ast.parse(" ".join(tokens).strip(), mode="eval")
    except SyntaxError:
        return None
    try:
        return _value(tree.body)
    except (ValueError, ZeroDivisionError):
        return None


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        op = _BINARY[type(node.op)]
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        return left / right  # ZeroDivisionError -> malformed
    raise ValueError(f"not part of the game's grammar: {ast.dump(node)}")


class FormulaGameReference:
    """One episode of a formula game, stepped with action ids.

    `cards` are ranks 1..13 (J, Q, K count 10); `step` returns `(reward, terminated, truncated)`;
    `formula` holds the appended tokens (" " for a rejected number).
    """

    def __init__(
        self,
        cards: Sequence[int],
        action_names: Sequence[str],
        target: int,
        max_formula_length: int,
        correct_reward: float = 10.0,
        penalty: float = -1.0,
    ):
        self.values = [min(int(c), 10) for c in cards]
        self.unused = list(self.values)
        self.action_names = list(action_names)
        self.target = target
        self.max_formula_length = max_formula_length
        self.correct_reward = correct_reward
        self.penalty = penalty
        self.formula: list[str] = []

    def step(self, action: int) -> tuple[float, bool, bool]:
        token = self.action_names[action]
        if len(self.formula) > self.max_formula_length:
            return self.penalty, False, True
        if token == "=":
            value = evaluate(self.formula)
            won = value is not None and value == self.target and not self.unused
            return (self.correct_reward if won else self.penalty), True, False
        if token.isdigit():
            if int(token) not in self.unused:
                self.formula.append(" ")
                return self.penalty, False, False
            self.unused.remove(int(token))
        self.formula.append(token)
        return 0.0, False, False
