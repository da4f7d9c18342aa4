"""Blackjack: Gymnasium's rules by hand-worked hands and against a plain-Python transcription of its
dealer rule and scoring; the picture; batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtr_turbo_jax.envs.cards import Blackjack, BlackjackState
from gtr_turbo_jax.envs.cards.blackjack import DEALER_CAPACITY, DEALER_DRAWS, PLAYER_CAPACITY

STAND, HIT = 0, 1
KEYS = 256


@pytest.fixture(scope="module")
def blackjack():
    return Blackjack()


@pytest.fixture(scope="module")
def step_many(blackjack):
    """`step_env` (no automatic reset, so the hands can be read) over many keys, one state."""
    return jax.jit(jax.vmap(blackjack.step_env, in_axes=(0, None, None, None)))


def table(player, dealer):
    def slots(ranks, size):
        return jnp.zeros(size, jnp.int32).at[: len(ranks)].set(jnp.asarray(ranks, jnp.int32))

    return BlackjackState(
        time=jnp.int32(0),
        player_ranks=slots(player, PLAYER_CAPACITY),
        player_suits=jnp.zeros(PLAYER_CAPACITY, jnp.int32),
        dealer_ranks=slots(dealer, DEALER_CAPACITY),
        dealer_suits=jnp.zeros(DEALER_CAPACITY, jnp.int32),
    )


# Gymnasium's blackjack.py, transcribed: values 1..10, an ace counts 11 when that does not bust.
def value(ranks):
    cards = [min(r, 10) for r in ranks if r > 0]
    usable = 1 in cards and sum(cards) + 10 <= 21
    return sum(cards) + 10 * usable


def score(ranks):
    return 0 if value(ranks) > 21 else value(ranks)


def run(step_many, blackjack, player, dealer, action, params=None):
    params = blackjack.default_params if params is None else params
    keys = jax.random.split(jax.random.key(7), KEYS)
    _, state, reward, terminated, _ = step_many(keys, table(player, dealer), action, params)
    return jax.tree.map(np.asarray, state), np.asarray(reward), np.asarray(terminated)


def test_action_names(blackjack):
    assert blackjack.action_names == ("stand", "hit")


@pytest.mark.parametrize(
    "player, dealer, expected",
    [
        ([10, 10], [10, 7], 1.0),  # 20 beats 17
        ([10, 12], [13, 11], 0.0),  # 20 against 20 (face cards count 10)
        ([10, 10], [1, 10], -1.0),  # the dealer's A + 10 is 21
        ([10, 6], [10, 7], -1.0),  # 16 loses to 17
        ([10, 8], [1, 6], 1.0),  # the dealer stands on soft 17 (A + 6)
        ([1, 1, 9], [10, 8], 1.0),  # A + A + 9 = 21 (one ace usable)
    ],
)
def test_stand_against_a_standing_dealer(step_many, blackjack, player, dealer, expected):
    state, reward, terminated = run(step_many, blackjack, player, dealer, STAND)
    assert (reward == expected).all() and terminated.all()
    assert (state.dealer_ranks[:, 2:] == 0).all()  # at 17 or more the dealer draws nothing


@pytest.mark.parametrize("dealer", [[10, 6], [2, 2], [1, 1], [5, 1], [6, 10]])
def test_dealer_draws_to_17_and_scores_like_gymnasium(step_many, blackjack, dealer):
    player = [10, 8]
    state, reward, terminated = run(step_many, blackjack, player, dealer, STAND)
    assert terminated.all()
    outcomes = set()
    for hand, r in zip(state.dealer_ranks, reward):
        cards = [int(c) for c in hand if c > 0]
        assert cards[:2] == dealer
        # Drew while under 17, and stopped at 17 or more.
        assert all(value(cards[:k]) < 17 for k in range(2, len(cards)))
        assert value(cards) >= 17
        expected = float(np.sign(score(player) - score(cards)))
        assert r == expected
        outcomes.add(expected)
    assert outcomes == {-1.0, 0.0, 1.0}  # 18 against the dealer's draws: win, draw and loss


def test_hit_busts_or_goes_on(step_many, blackjack):
    state, reward, terminated = run(step_many, blackjack, [10, 10], [10, 7], HIT)
    drawn = state.player_ranks[:, 2]
    assert (state.player_ranks[:, 3:] == 0).all() and (drawn >= 1).all() and (drawn <= 13).all()
    ace = drawn == 1  # 21: the game goes on, reward 0
    assert ace.any() and (~ace).any()
    np.testing.assert_array_equal(reward, np.where(ace, 0.0, -1.0))
    np.testing.assert_array_equal(terminated, ~ace)
    assert (state.dealer_ranks[:, 2:] == 0).all()  # a hit does not play the dealer
    # A low hand never busts on one card; the prompt's total counts a usable ace as 11.
    keys = jax.random.split(jax.random.key(8), KEYS)
    params = blackjack.default_params
    obs, state, reward, terminated, _ = step_many(keys, table([2, 3], [10, 7]), HIT, params)
    assert (np.asarray(reward) == 0).all() and not np.asarray(terminated).any()
    totals = [value(h) for h in np.asarray(state.player_ranks)]
    np.testing.assert_array_equal(np.asarray(obs["player_sum"]), totals)
    assert 16 in totals  # an ace drawn to 2 + 3


def test_naturals(step_many, blackjack):
    params = blackjack.default_params
    natural, plain = [1, 13], [10, 7]
    _, reward, _ = run(step_many, blackjack, natural, plain, STAND, params)
    assert (reward == 1.0).all()
    _, reward, _ = run(step_many, blackjack, natural, plain, STAND, params.replace(natural=True))
    assert (reward == 1.5).all()
    # sab: a natural wins even against the dealer's three-card 21 ...
    _, reward, _ = run(step_many, blackjack, natural, [5, 6], STAND, params.replace(sab=True))
    state, reward_plain, _ = run(step_many, blackjack, natural, [5, 6], STAND, params)
    assert (reward == 1.0).all() and (reward_plain == 0.0).any()
    # ... and draws against the dealer's natural; a 21 that is not a natural pays 1, not 1.5.
    _, reward, _ = run(step_many, blackjack, natural, [1, 10], STAND, params.replace(sab=True))
    assert (reward == 0.0).all()
    _, reward, _ = run(step_many, blackjack, [5, 6, 10], plain, STAND, params.replace(natural=True))
    assert (reward == 1.0).all()
    assert step_many._cache_size() == 1  # natural / sab are params: no recompilation


def test_dealer_never_needs_more_draws_than_the_capacity():
    most = 0
    stack = [[a, b] for a in range(1, 11) for b in range(1, 11)]
    while stack:
        cards = stack.pop()
        if value(cards) >= 17:
            most = max(most, len(cards) - 2)
        else:
            stack.extend(cards + [c] for c in range(1, 11))
    assert most == DEALER_DRAWS == 10  # A A | A A A A 6 A A A A 10 (bust)


def test_prompt_fields(blackjack):
    params = blackjack.default_params
    fields = blackjack.prompt_fields(table([1, 6], [12, 3]), params)
    assert {k: int(v) for k, v in fields.items()} == {
        "player_sum": 17,
        "dealer_card": 10,
        "usable_ace": 1,
    }
    fields = blackjack.prompt_fields(table([1, 6, 10], [1, 3]), params)
    assert {k: int(v) for k, v in fields.items()} == {
        "player_sum": 17,
        "dealer_card": 1,
        "usable_ace": 0,
    }


def test_reset_and_auto_reset(blackjack):
    params = blackjack.default_params
    obs, state = blackjack.reset(jax.random.key(0), params)
    assert (np.asarray(state.player_ranks[2:]) == 0).all() and (
        np.asarray(state.player_ranks[:2]) > 0
    ).all()
    assert int(obs["player_sum"]) == value(np.asarray(state.player_ranks))
    obs, state, reward, terminated, truncated, info = blackjack.step(
        jax.random.key(1), state, STAND, params
    )
    assert bool(terminated) and not bool(truncated)
    assert (np.asarray(state.player_ranks[2:]) == 0).all() and (
        np.asarray(state.dealer_ranks[2:]) == 0
    ).all()


def test_render(blackjack):
    render = jax.jit(blackjack.render)
    params = blackjack.default_params
    state = table([10, 9], [1, 5])
    image = np.asarray(render(state, params))
    assert image.shape == blackjack.image_shape == (336, 336, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(render(state, params)))
    # The hidden card is hidden: changing it changes nothing.
    np.testing.assert_array_equal(image, np.asarray(render(table([10, 9], [1, 12]), params)))
    # The face-up card, and each new player card (up to ten, two rows), do show.
    assert (np.asarray(render(table([10, 9], [2, 5]), params)) != image).any()
    previous = image
    for n in range(3, 11):
        hand = np.asarray(render(table([1] * n, [1, 5]), params))
        changed_rows = np.flatnonzero((hand != previous).any(axis=(1, 2)))
        assert changed_rows.size and changed_rows.min() >= 150  # the player's area
        if n > 5:
            assert changed_rows.min() >= 150 + blackjack.CARD_HEIGHT  # the second row
        previous = hand


@pytest.mark.slow
def test_jit_vmap_1024(blackjack):
    params = blackjack.default_params
    keys = jax.random.split(jax.random.key(3), 1024)
    obs, states = jax.jit(jax.vmap(blackjack.reset, in_axes=(0, None)))(keys, params)
    step = jax.jit(jax.vmap(blackjack.step, in_axes=(0, 0, 0, None)))
    actions = jnp.arange(1024) % 2
    obs, _, reward, terminated, _, _ = step(keys, states, actions, params)
    assert obs["image"].shape == (1024, *blackjack.image_shape)
    assert (np.asarray(terminated)[::2]).all()  # every stand ends the hand
    step(keys, states, actions, params.replace(natural=True, max_steps_in_episode=5))
    assert step._cache_size() == 1
