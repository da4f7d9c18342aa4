"""`solver.completion`: whether a typed prefix can still reach the target, against a brute force
over token strings evaluated by Python's own parser, and the hand case of the issue."""

import ast
import itertools
from fractions import Fraction

import pytest

from gtr_turbo_jax.envs.cards.solver import completion

OPS = "+-*/"


def value_of(tokens, cards):
    """The formula's exact value, or None when Python's grammar (binary operators only) or the
    cards reject it."""
    if sorted(int(t) for t in tokens if t.isdigit()) != sorted(cards):
        return None
    text = " ".join(f"Fraction({t})" if t.isdigit() else t for t in tokens)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    if any(isinstance(node, (ast.UnaryOp, ast.Tuple)) for node in ast.walk(tree)) or any(
        not isinstance(c.func, ast.Name) for c in calls
    ):
        return None  # `- 3`, `( )`, `2 ( 3 )`
    try:
        return eval(compile(tree, "formula", "eval"), {"Fraction": Fraction})
    except ZeroDivisionError:
        return None


def brute_force(prefix, cards, target, max_length):
    """Whether some token string of at most `max_length` tokens that starts with `prefix` is a
    formula worth `target`. Extensions are pruned only by the infix alternation (an operand, i.e.
    a card or `(`, after the start, `(` or an operator; an operator or `)` after an operand) and
    parenthesis depth; Python's parser judges the rest."""
    alphabet = [*{str(c) for c in cards}, *OPS, "(", ")"]

    def extend(tokens, depth):
        if depth < 0:
            return False
        if value_of(tokens, cards) == target:
            return True
        if len(tokens) == max_length:
            return False
        numbers = sum(t.isdigit() for t in tokens)
        after_operand = bool(tokens) and (tokens[-1].isdigit() or tokens[-1] == ")")
        for token in alphabet:
            if token.isdigit() and numbers == len(cards):
                continue
            if after_operand != (token in OPS or token == ")"):
                continue
            step = {"(": 1, ")": -1}.get(token, 0)
            if extend([*tokens, token], depth + step):
                return True
        return False

    depth = prefix.count("(") - prefix.count(")")
    return extend(list(prefix), depth)


def test_the_issues_prefix_completes():
    # `( 1 * 2` is no prefix of a minimal-parenthesis solution, but ( 1 * 2 ) * 3 * 4 = 24.
    tokens = completion("( 1 * 2".split(), [1, 2, 3, 4], 24)
    assert tokens is not None
    assert value_of([*"( 1 * 2".split(), *tokens], [1, 2, 3, 4]) == 24
    assert completion("1 + 2 + 3 +".split(), [1, 2, 3, 4], 24) is None  # only + 4 = 10 is left
    assert completion("1 2".split(), [1, 2, 3, 4], 24) is None  # malformed
    assert completion("5".split(), [1, 2, 3, 4], 24) is None  # not a card
    assert completion("1 * 2 * 3 * 4".split(), [1, 2, 3, 4], 24) == ()


@pytest.mark.parametrize(("cards", "target"), [((2, 3, 4), 24), ((1, 5, 5), 20), ((3, 3, 8), 8)])
def test_agrees_with_the_brute_force_on_every_short_prefix(cards, target):
    alphabet = [*{str(c) for c in cards}, *OPS, "(", ")"]
    checked = 0
    for length in range(3):
        for prefix in itertools.product(alphabet, repeat=length):
            want = brute_force(prefix, cards, target, 9)
            got = completion(prefix, cards, target, budget=9 - length)
            assert (got is not None) == want, prefix
            if got is not None:
                assert value_of([*prefix, *got], cards) == target
            checked += 1
    assert checked == 1 + len(alphabet) + len(alphabet) ** 2
