"""Solvers for the formula card games, on the host (plain Python): the privileged teacher's tool and
the source of demonstrations.

A formula is a string of the env's action tokens separated by single spaces, e.g.
`"8 / ( 3 - 8 / 3 )"`, without the final `=`; `formula_actions` turns it into action ids. Cards are
ranks 1..13 or values; J, Q, K (11..13) count 10. Arithmetic is exact (`fractions.Fraction`), the
same rules as the envs' evaluator: binary `+ - * /` and parentheses, each card exactly once.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3  # a number or a parenthesised group


def _combine(left: tuple[str, int], op: str, right: tuple[str, int]) -> tuple[str, bool]:
    """Text of `left op right` with only the parentheses the tree needs, and whether any were."""
    (lt, lp), (rt, rp) = left, right
    prec = _PRECEDENCE[op]
    wrap_left = lp < prec
    wrap_right = rp < prec or (rp == prec and op in "-/")
    lt = f"( {lt} )" if wrap_left else lt
    rt = f"( {rt} )" if wrap_right else rt
    return f"{lt} {op} {rt}", wrap_left or wrap_right


def solve(
    cards: Sequence[int],
    target: int,
    operators: str = "+-*/",
    parentheses: bool = True,
) -> list[str]:
    """All distinct formulas (sorted) that use each card once and equal `target` exactly.

    Builds, for every subset of the cards, every expression over it (value, text, precedence);
    `parentheses=False` keeps only formulas that need none (EZPoints has no `(` action).
    """
    values = [min(int(c), 10) for c in cards]
    if not values or any(v < 1 for v in values):
        raise ValueError(f"cards must be ranks 1..13, got {list(cards)}")
    unknown = set(operators) - set(_PRECEDENCE)
    if unknown:
        raise ValueError(f"unknown operators {sorted(unknown)}; valid: + - * /")
    n = len(values)
    # exprs[mask]: {(text, precedence): value} over the cards in bitmask `mask`
    exprs: dict[int, dict[tuple[str, int], Fraction]] = {
        1 << i: {(str(v), _ATOM): Fraction(v)} for i, v in enumerate(values)
    }
    for mask in sorted(range(1, 1 << n), key=lambda m: bin(m).count("1")):
        if mask in exprs:
            continue
        out: dict[tuple[str, int], Fraction] = {}
        sub = (mask - 1) & mask
        while sub:
            rest = mask ^ sub
            for (lt, lp), lv in exprs[sub].items():
                for (rt, rp), rv in exprs[rest].items():
                    for op in operators:
                        if op == "/" and rv == 0:
                            continue
                        text, wrapped = _combine((lt, lp), op, (rt, rp))
                        if wrapped and not parentheses:
                            continue
                        out[(text, _PRECEDENCE[op])] = _apply(op, lv, rv)
            sub = (sub - 1) & mask
        exprs[mask] = out
    full = exprs[(1 << n) - 1]
    return sorted({text for (text, _), value in full.items() if value == target})


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b


def solve24(cards: Sequence[int], target: int = 24) -> list[str]:
    """All distinct Points24 solutions for four cards (ranks 1..13, J/Q/K count 10)."""
    if len(cards) != 4:
        raise ValueError(f"Points24 deals four cards, got {len(cards)}: {list(cards)}")
    return solve(cards, target)


def solve_ezpoints(cards: Sequence[int], target: int = 12) -> list[str]:
    """All distinct EZPoints solutions for two cards: `+` and `*`, no parentheses."""
    if len(cards) != 2:
        raise ValueError(f"EZPoints deals two cards, got {len(cards)}: {list(cards)}")
    return solve(cards, target, operators="+*", parentheses=False)


def formula_actions(formula: str, action_names: Sequence[str], finish: bool = True) -> list[int]:
    """Action ids that type `formula` (space-separated tokens), then `=` if `finish`."""
    tokens = formula.split() + (["="] if finish else [])
    unknown = [t for t in tokens if t not in action_names]
    if unknown:
        raise ValueError(f"tokens {unknown} are not actions; valid: {' '.join(action_names)}")
    return [list(action_names).index(t) for t in tokens]


@functools.lru_cache(maxsize=8)
def solvable_table(target: int = 24, num_cards: int = 4, max_value: int = 10) -> np.ndarray:
    """bool[max_value] * num_cards: whether the card values (index + 1) can make `target`.

    Vectorised over all value tuples: every binary tree shape and operator choice over the cards in
    index order is evaluated with float64 (NaN after a division by zero), then the table is
    symmetrised over card orders. Exact enough: with values <= 10 a wrong result differs from an
    integer target by at least 1 / 10^(num_cards - 1), far above the rounding error.
    """
    if not 1 <= num_cards <= 5:
        raise ValueError(f"num_cards must be in [1, 5], got {num_cards}")
    grids = np.meshgrid(*[np.arange(1, max_value + 1, dtype=np.float64)] * num_cards, indexing="ij")
    hit = np.zeros(grids[0].shape, bool)
    for value in _all_values(tuple(range(num_cards)), grids):
        hit |= np.abs(value - target) < 1e-6
    table = hit
    for order in itertools.permutations(range(num_cards)):
        table = table | hit.transpose(order)
    return table


def _all_values(leaves: tuple[int, ...], grids: list[np.ndarray]):
    """Yields the value arrays of every expression over `leaves` kept in order."""
    if len(leaves) == 1:
        yield grids[leaves[0]]
        return
    for split in range(1, len(leaves)):
        rights = list(_all_values(leaves[split:], grids))
        for left in _all_values(leaves[:split], grids):
            for right in rights:
                yield left + right
                yield left - right
                yield left * right
                with np.errstate(divide="ignore", invalid="ignore"):
                    yield np.where(right == 0, np.nan, left / np.where(right == 0, 1, right))
