"""EZPoints: hand-worked cases for every reward branch, the deal, the pure-Python reference, the
picture and batching."""

import jax
import numpy as np
import pytest
from card_play import deal, play, rewards, typed
from hypothesis import given, settings
from hypothesis import strategies as st
from support.cards_reference import FormulaGameReference

from gtr_turbo_jax.envs.cards import EZPoints, formula_actions, solve_ezpoints


@pytest.fixture(scope="module")
def ezpoints():
    return EZPoints()


def test_ezpoints_rules(ezpoints):
    assert ezpoints.action_names == (*[str(n) for n in range(1, 11)], "+", "*", "=")
    assert play(ezpoints, deal(ezpoints, [2, 6]), typed(ezpoints, "2 * 6 ="))[-1][:2] == (
        10.0,
        True,
    )
    assert play(ezpoints, deal(ezpoints, [13, 2]), typed(ezpoints, "2 + 10 ="))[-1][:2] == (
        10.0,
        True,
    )
    assert rewards(play(ezpoints, deal(ezpoints, [2, 6]), typed(ezpoints, "2 + 6 ="))) == [
        0,
        0,
        0,
        -1,
    ]
    assert rewards(play(ezpoints, deal(ezpoints, [2, 6]), typed(ezpoints, "6 ="))) == [0, -1]
    assert rewards(play(ezpoints, deal(ezpoints, [2, 6]), typed(ezpoints, "3 2"))) == [-1, 0]


def test_ezpoints_length_cap_is_five(ezpoints):
    rows = play(ezpoints, deal(ezpoints, [2, 6]), typed(ezpoints, "+ + + + + + ="))
    assert rewards(rows) == [0.0] * 6 + [-1.0]
    assert rows[-1][1:3] == (False, True)


def test_ezpoints_deal_follows_gym_cards(ezpoints):
    keys = jax.random.split(jax.random.key(0), 2000)
    ranks, suits = (np.asarray(x) for x in jax.jit(jax.vmap(ezpoints.deal))(keys))
    values = np.minimum(ranks, 10)
    solvable = (values.sum(1) == 12) | (values.prod(1) == 12)
    assert solvable.all()
    # The dealt card is 2..K, its partner a plain number: no aces, at most one face card ...
    assert ranks.min() >= 2 and ((ranks > 10).sum(1) <= 1).all()
    # ... every value pair reachable by the deal appears, in both orders.
    pairs = {tuple(v) for v in values}
    expected = {(v, 12 - v) for v in range(2, 11)} | {(v, 12 // v) for v in (2, 3, 4, 6)}
    assert pairs == expected | {(b, a) for a, b in expected}
    assert set(suits.ravel()) == {0, 1, 2, 3}


def test_ezpoints_solutions_play_to_ten(ezpoints):
    for cards in ([2, 6], [13, 2], [3, 4], [4, 8]):
        solutions = solve_ezpoints(cards)
        assert solutions, cards
        for formula in solutions:
            rows = play(
                ezpoints, deal(ezpoints, cards), formula_actions(formula, ezpoints.action_names)
            )
            assert rewards(rows) == [0.0] * (len(rows) - 1) + [10.0], formula


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    st.lists(st.integers(1, 13), min_size=2, max_size=2),
    st.lists(st.integers(0, 12), min_size=1, max_size=9),
)
def test_ezpoints_matches_reference(ezpoints, ranks, actions):
    reference = FormulaGameReference(ranks, ezpoints.action_names, 12, 5)
    state = deal(ezpoints, ranks)
    for i, action in enumerate(actions):
        _, state, reward, terminated, truncated, info = ezpoints.step(
            jax.random.key(i), state, action, ezpoints.default_params
        )
        expected = reference.step(action)
        assert (float(reward), bool(terminated), bool(truncated)) == expected, (ranks, actions)
        final = info["final_observation"]
        text = [ezpoints.formula_symbols[s] for s in np.asarray(final["formula"])]
        assert text[: int(final["formula_length"])] == reference.formula
        if expected[1] or expected[2]:
            return


def test_ezpoints_render(ezpoints):
    render = jax.jit(ezpoints.render)
    params = ezpoints.default_params
    state = deal(ezpoints, [2, 6])
    image = np.asarray(render(state, params))
    assert image.shape == ezpoints.image_shape == (196, 224, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(render(state, params)))
    assert (np.asarray(render(deal(ezpoints, [2, 10]), params)) != image).any()
    typed_two = state.replace(formula=state.formula.at[0].set(1), length=1)
    typed_six = state.replace(formula=state.formula.at[0].set(5), length=1)
    two, six = (np.asarray(render(s, params)) for s in (typed_two, typed_six))
    assert (two != image).any() and (two != six).any()
    assert np.flatnonzero((two != image).any(axis=(1, 2))).min() > 6 + 112  # the formula line


def check_batched_step(env, batch):
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    params = env.default_params
    keys = jax.random.split(jax.random.key(3), batch)
    obs, states = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, params)
    actions = jax.random.randint(jax.random.key(4), (batch,), 0, env.num_actions)
    obs, _, reward, terminated, _, info = step(keys, states, actions, params)
    assert obs["image"].shape == (batch, *env.image_shape)
    for lane in (0, batch - 1):
        state = jax.tree.map(lambda x, i=lane: x[i], states)
        one = env.step(keys[lane], state, actions[lane], params)
        np.testing.assert_array_equal(np.asarray(one[0]["image"]), np.asarray(obs["image"][lane]))
        assert float(one[2]) == float(reward[lane]) and bool(one[3]) == bool(terminated[lane])
    step(keys, states, actions, params.replace(penalty=-2.0, correct_reward=1.0))
    assert step._cache_size() == 1


@pytest.mark.slow
def test_ezpoints_jit_vmap_1024(ezpoints):
    check_batched_step(ezpoints, 1024)
