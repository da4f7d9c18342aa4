"""Solvers: every formula they return is right (checked by Python's parser), known hands, the
vectorised solvability table against the exact solver, and the action encoding."""

import itertools
from collections import Counter

import numpy as np
import pytest
from support.cards_reference import evaluate

from gtr_turbo_jax.envs.cards import Points24, formula_actions, solve, solve24, solve_ezpoints
from gtr_turbo_jax.envs.cards.solver import solvable_table


def check_solution(formula, cards, target, operators="+-*/()"):
    tokens = formula.split()
    assert evaluate(tokens) == target, formula
    numbers = [int(t) for t in tokens if t.isdigit()]
    assert Counter(numbers) == Counter(min(c, 10) for c in cards), formula
    assert set(tokens) - {str(n) for n in range(1, 11)} <= set(operators), formula


@pytest.mark.parametrize(
    "cards",
    [[3, 3, 8, 8], [1, 5, 5, 5], [4, 4, 10, 10], [13, 12, 2, 2], [1, 2, 3, 4], [6, 6, 6, 6]],
)
def test_solve24_known_solvable_hands(cards):
    solutions = solve24(cards)
    assert solutions and len(solutions) == len(set(solutions))
    for formula in solutions:
        check_solution(formula, cards, 24)


def test_solve24_finds_the_famous_ones():
    assert "8 / ( 3 - 8 / 3 )" in solve24([3, 3, 8, 8])
    assert "5 * ( 5 - 1 / 5 )" in solve24([1, 5, 5, 5])
    assert "( 10 * 10 - 4 ) / 4" in solve24([4, 4, 10, 10])
    assert "1 * 2 * 3 * 4" in solve24([1, 2, 3, 4]) and "( 1 + 3 ) * ( 2 + 4 )" in solve24(
        [1, 2, 3, 4]
    )


@pytest.mark.parametrize("cards", [[1, 1, 1, 1], [1, 1, 1, 2], [10, 10, 10, 10], [13, 11, 12, 13]])
def test_solve24_unsolvable_hands(cards):
    assert solve24(cards) == []


def test_solve24_agrees_with_brute_force():
    # Brute force over token strings of the shapes a solution can take, checked by Python.
    cards = [1, 2, 3, 4]
    found = set()
    for a, b, c, d in set(itertools.permutations(cards)):
        for x, y, z in itertools.product("+-*/", repeat=3):
            for template in (
                "{a} {x} {b} {y} {c} {z} {d}",
                "( {a} {x} {b} ) {y} {c} {z} {d}",
                "( {a} {x} {b} {y} {c} ) {z} {d}",
                "{a} {x} ( {b} {y} {c} ) {z} {d}",
                "( {a} {x} {b} ) {y} ( {c} {z} {d} )",
                "{a} {x} ( {b} {y} {c} {z} {d} )",
                "{a} {x} {b} {y} ( {c} {z} {d} )",
                "( ( {a} {x} {b} ) {y} {c} ) {z} {d}",
                "{a} {x} ( {b} {y} ( {c} {z} {d} ) )",
                "{a} {x} ( ( {b} {y} {c} ) {z} {d} )",
                "( {a} {x} ( {b} {y} {c} ) ) {z} {d}",
            ):
                text = template.format(a=a, b=b, c=c, d=d, x=x, y=y, z=z)
                if evaluate(text.split()) == 24:
                    found.add(text)
    solutions = set(solve24(cards))
    # The solver writes each tree with the fewest parentheses, which the templates spell too.
    assert solutions <= found
    assert len(solutions) > 50 and len(found) > len(solutions)


def test_ezpoints_solver():
    assert solve_ezpoints([2, 6]) == ["2 * 6", "6 * 2"]
    assert solve_ezpoints([13, 2]) == ["10 + 2", "2 + 10"]
    assert solve_ezpoints([6, 6]) == ["6 + 6"]
    assert solve_ezpoints([5, 5]) == []
    for formula in solve_ezpoints([3, 4]):
        check_solution(formula, [3, 4], 12, "+*")


def test_solve_without_parentheses():
    for formula in solve([2, 3, 4], 20, parentheses=False):
        assert "(" not in formula
        check_solution(formula, [2, 3, 4], 20)
    assert "( 2 + 3 ) * 4" in solve([2, 3, 4], 20)
    assert "( 2 + 3 ) * 4" not in solve([2, 3, 4], 20, parentheses=False)


def test_solvable_table_matches_the_exact_solver():
    table = solvable_table()
    assert table.shape == (10, 10, 10, 10)
    assert (table == table.transpose(1, 0, 2, 3)).all() and (
        table == table.transpose(3, 1, 2, 0)
    ).all()
    multisets = list(itertools.combinations_with_replacement(range(1, 11), 4))
    rng = np.random.default_rng(0)
    for i in rng.choice(len(multisets), 60, replace=False):
        hand = multisets[i]
        assert table[tuple(v - 1 for v in hand)] == bool(solve24(list(hand))), hand
    assert not table[0, 0, 0, 0] and table[2, 2, 7, 7]


def test_formula_actions():
    names = Points24().action_names
    assert formula_actions("( 10 - 1 ) * 8 / 3", names) == [14, 9, 11, 0, 15, 12, 7, 13, 2, 16]
    assert formula_actions("1 + 2", names, finish=False) == [0, 10, 1]
    with pytest.raises(ValueError, match="not actions"):
        formula_actions("11 + 13", names)


def test_solver_bad_input():
    with pytest.raises(ValueError, match="four cards"):
        solve24([1, 2, 3])
    with pytest.raises(ValueError, match="ranks 1..13"):
        solve24([0, 2, 3, 4])
    with pytest.raises(ValueError, match="unknown operators"):
        solve([1, 2], 3, operators="+^")
