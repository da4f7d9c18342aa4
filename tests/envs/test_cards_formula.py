"""The JAX formula evaluator against Python's own parser (`reference.evaluate`: `ast` + fractions),
on random well-formed expressions, mutated ones and token soup, in one batched call."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support.cards_reference import evaluate

from gtr_turbo_jax.envs.cards import Points24, evaluate_formula
from gtr_turbo_jax.envs.cards.formula import symbol_tables

SYMBOLS = Points24().formula_symbols  # "1".."10" + - * / ( ) and the blank
LENGTH = 21


def random_expression(rng, numbers):
    """Tokens of a random binary tree over `numbers`, with needed and some redundant parentheses."""
    if len(numbers) == 1:
        tokens = [str(numbers[0])]
    else:
        split = int(rng.integers(1, len(numbers)))
        left = random_expression(rng, numbers[:split])
        right = random_expression(rng, numbers[split:])
        tokens = ["(", *left, ")", str(rng.choice(list("+-*/"))), "(", *right, ")"]
    if rng.random() < 0.2:
        tokens = ["(", *tokens, ")"]
    return tokens


def strip_parentheses(rng, tokens):
    """Drop some parenthesis pairs: changes the value or keeps it, and stays well formed."""
    tokens = list(tokens)
    for _ in range(int(rng.integers(0, 4))):
        opens = [i for i, t in enumerate(tokens) if t == "("]
        if not opens:
            break
        i = int(rng.choice(opens))
        depth = 0
        for j in range(i, len(tokens)):
            depth += {"(": 1, ")": -1}.get(tokens[j], 0)
            if depth == 0:
                break
        del tokens[j], tokens[i]
    return tokens


def mutate(rng, tokens):
    tokens = list(tokens)
    for _ in range(int(rng.integers(1, 3))):
        i = int(rng.integers(0, len(tokens) + 1))
        kind = rng.integers(0, 3)
        if kind == 0 and tokens:
            del tokens[min(i, len(tokens) - 1)]
        elif kind == 1:
            tokens.insert(i, str(rng.choice(["+", "-", "*", "/", "(", ")", " "])))
        elif tokens:
            tokens[min(i, len(tokens) - 1)] = str(rng.choice(SYMBOLS[10:]))
    return tokens


def cases(seed, count):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        numbers = [int(x) for x in rng.integers(1, 11, int(rng.integers(1, 5)))]
        tokens = strip_parentheses(rng, random_expression(rng, numbers))
        roll = rng.random()
        if roll < 0.3:
            tokens = mutate(rng, tokens)
        elif roll < 0.4:  # soup, at most four numbers (the games have at most four cards)
            soup = rng.choice(SYMBOLS, int(rng.integers(0, LENGTH + 1)))
            tokens = [str(t) for t in soup]
            extra = [i for i, t in enumerate(tokens) if t.isdigit()][4:]
            tokens = [t for i, t in enumerate(tokens) if i not in extra]
        if len(tokens) <= LENGTH:
            out.append(tokens)
    return out


@pytest.fixture(scope="module")
def evaluate_batch():
    kinds, values = (jnp.asarray(t) for t in symbol_tables(SYMBOLS))
    return jax.jit(jax.vmap(lambda s: evaluate_formula(s, kinds, values)))


def check(evaluate_batch, token_lists):
    ids = np.full((len(token_lists), LENGTH), -1, np.int32)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = [SYMBOLS.index(t) for t in tokens]
    ok, num, den = (np.asarray(x) for x in evaluate_batch(jnp.asarray(ids)))
    well_formed = 0
    for tokens, o, n, d in zip(token_lists, ok, num, den):
        expected = evaluate(tokens)
        assert bool(o) == (expected is not None), tokens
        if expected is not None:
            assert Fraction(int(n), int(d)) == expected, tokens
            well_formed += 1
    return well_formed


def test_hand_worked_formulas(evaluate_batch):
    formulas = {
        "8 / ( 3 - 8 / 3 )": Fraction(24),
        "2 - 3 - 4": Fraction(-5),
        "2 * 3 + 4 * 5": Fraction(26),
        "1 / 3 / 4": Fraction(1, 12),
        "( ( 10 ) )": Fraction(10),
        "10 - ( 4 - 2 ) * 3": Fraction(4),
        "4 / ( 2 - 2 )": None,
        "( )": None,
        "2 4": None,
        "- 2": None,
        "2 * * 3": None,
        "( 2 ) ( 3 )": None,
        "": None,
        "_ 2 + _ 3 _": Fraction(5),  # blanks (rejected numbers) are skipped
    }
    token_lists = [[" " if t == "_" else t for t in text.split()] for text in formulas]
    for tokens, value in zip(token_lists, formulas.values()):
        assert evaluate(tokens) == value, tokens
    assert check(evaluate_batch, token_lists) == 7


def test_evaluator_matches_python(evaluate_batch):
    assert check(evaluate_batch, cases(0, 3000)) > 1500


@pytest.mark.slow
def test_evaluator_matches_python_many(evaluate_batch):
    for seed in range(1, 11):
        check(evaluate_batch, cases(seed, 3000))
