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


# A partial formula as the evaluator reads it: one (total, sign, term, pending op) per open
# parenthesis, innermost last; `term` is None while the level waits for its first operand.
_Level = tuple[Fraction, int, "Fraction | None", "str | None"]


def _take_operand(levels: tuple[_Level, ...], value: Fraction) -> tuple[_Level, ...] | None:
    total, sign, term, op = levels[-1]
    if op == "/" and value == 0:
        return None
    term = value if op is None else term * value if op == "*" else term / value
    return (*levels[:-1], (total, sign, term, None))


def _after(levels, expecting_operand: bool, token: str):
    """(levels, expecting_operand) after `token`, or None where the grammar forbids it."""
    if token == "(":
        return ((*levels, (Fraction(0), 1, None, None)), True) if expecting_operand else None
    if expecting_operand:
        if not token.isdigit():
            return None
        levels = _take_operand(levels, Fraction(min(int(token), 10)))
        return None if levels is None else (levels, False)
    total, sign, term, _ = levels[-1]
    if token in "+-":
        return (*levels[:-1], (total + sign * term, 1 if token == "+" else -1, None, None)), True
    if token in "*/":
        return (*levels[:-1], (total, sign, term, token)), True
    if token == ")" and len(levels) > 1:
        inner = _take_operand(levels[:-1], total + sign * term)
        return None if inner is None else (inner, False)
    return None


def completion(
    prefix: Sequence[str],
    cards: Sequence[int],
    target: int,
    operators: str = "+-*/",
    parentheses: bool = True,
    budget: int = 20,
) -> tuple[str, ...] | None:
    """Tokens that complete `prefix` (the tokens typed so far, each card at most once) into a
    formula equal to `target` that uses every card, at most `budget` of them; () when `prefix`
    already is one; None when no completion exists (or `prefix` is malformed).

    Judges any prefix, not only prefixes of `solve`'s minimal-parenthesis forms: `( 1 * 2` on
    cards 1 2 3 4 completes with `) * 3 * 4`. The search appends whole operands (a card, or a
    parenthesised group over several cards with any value `solve`'s expressions reach), so
    redundant parentheses never multiply its states."""
    remaining = sorted(min(int(c), 10) for c in cards)
    state: tuple | None = ((Fraction(0), 1, None, None),), True
    for token in prefix:
        if token.isdigit():
            if min(int(token), 10) not in remaining:
                return None
            remaining.remove(min(int(token), 10))
        state = _after(*state, token)
        if state is None:
            return None
    return _search(*state, tuple(remaining), operators, parentheses, Fraction(target), budget)


@functools.lru_cache(maxsize=1 << 16)
def _search(levels, expecting_operand, remaining, operators, parentheses, target, budget):
    """A completion of at most `budget` tokens from this state, or None."""
    closes = len(levels) - 1
    if 2 * len(remaining) - (1 if expecting_operand else 0) + closes > budget:
        return None  # each card left needs itself and an operator, each open group its `)`
    if expecting_operand:
        operands = [((card,), Fraction(card), (str(card),)) for card in sorted(set(remaining))]
        if parentheses:
            operands += [
                (group, value, ("(", *text.split(), ")"))
                for group in _groups(remaining)
                for value, text in _expressions(group, operators).items()
            ]
        for group, value, tokens in operands:
            taken = _take_operand(levels, value)
            if taken is None or len(tokens) > budget:
                continue
            rest = _without(remaining, group)
            found = _search(
                taken, False, rest, operators, parentheses, target, budget - len(tokens)
            )
            if found is not None:
                return (*tokens, *found)
        return None
    total, sign, term, _ = levels[-1]
    if len(levels) == 1 and not remaining:
        return () if total + sign * term == target else None
    for token in ((")",) if closes else ()) + tuple(operators):
        nxt = _after(levels, False, token)
        if nxt is None:
            continue
        found = _search(*nxt, remaining, operators, parentheses, target, budget - 1)
        if found is not None:
            return (token, *found)
    return None


def _without(cards: tuple[int, ...], group: tuple[int, ...]) -> tuple[int, ...]:
    """`cards` minus one copy of each card of `group`."""
    rest = list(cards)
    for card in group:
        rest.remove(card)
    return tuple(rest)


def _groups(cards: tuple[int, ...]):
    """Every distinct sub-multiset of two or more of `cards` (sorted tuples)."""
    seen = set()
    for size in range(2, len(cards) + 1):
        for index in itertools.combinations(range(len(cards)), size):
            group = tuple(cards[i] for i in index)
            if group not in seen:
                seen.add(group)
                yield group


@functools.lru_cache(maxsize=4096)
def _expressions(cards: tuple[int, ...], operators: str) -> dict[Fraction, str]:
    """Every value an expression over exactly `cards` reaches, with one of its shortest texts."""
    exprs = {1 << i: {Fraction(v): (str(v), _ATOM)} for i, v in enumerate(cards)}
    for mask in sorted(range(1, 1 << len(cards)), key=lambda m: bin(m).count("1")):
        if mask in exprs:
            continue
        out: dict[Fraction, tuple[str, int]] = {}
        sub = (mask - 1) & mask
        while sub:
            for lv, left in exprs[sub].items():
                for rv, right in exprs[mask ^ sub].items():
                    for op in operators:
                        if op == "/" and rv == 0:
                            continue
                        value = _apply(op, lv, rv)
                        text, _ = _combine(left, op, right)
                        if value not in out or len(text) < len(out[value][0]):
                            out[value] = (text, _PRECEDENCE[op])
            sub = (sub - 1) & mask
        exprs[mask] = out
    return {value: text for value, (text, _) in exprs[(1 << len(cards)) - 1].items()}


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
