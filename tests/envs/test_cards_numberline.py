"""NumberLine: hand-worked rewards, truncation, the reset distribution, the picture, batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from card_play import play, rewards

from gtr_turbo_jax.envs.cards import NumberLine
from gtr_turbo_jax.envs.cards.numberline import NumberLineState

BATCH = 1024


@pytest.fixture(scope="module")
def numberline():
    return NumberLine()


@pytest.fixture(scope="module")
def batched_reset(numberline):
    return jax.jit(jax.vmap(numberline.reset, in_axes=(0, None)))


def line_state(target, current):
    return NumberLineState(time=jnp.int32(0), target=jnp.int32(target), current=jnp.int32(current))


MINUS, PLUS = 0, 1


def test_numberline_rewards(numberline):
    assert numberline.action_names == ("-", "+")
    rows = play(numberline, line_state(4, 1), [PLUS, MINUS, PLUS, PLUS, PLUS])
    # closer 0, farther -1, closer 0, closer 0, at target +1 (terminated)
    assert rewards(rows) == [0.0, -1.0, 0.0, 0.0, 1.0]
    assert [t for _, t, _, _ in rows] == [False] * 4 + [True]
    assert [int(o["current"]) for *_, o in rows] == [2, 1, 2, 3, 4]
    # Bumping into an end does not get closer: -1, position unchanged.
    rows = play(numberline, line_state(3, 0), [MINUS])
    assert rows[0][:3] == (-1.0, False, False) and int(rows[0][3]["current"]) == 0
    rows = play(numberline, line_state(0, 5), [PLUS, MINUS])
    assert rewards(rows) == [-1.0, 0.0] and int(rows[0][3]["current"]) == 5


def test_numberline_truncates_after_ten_steps(numberline):
    rows = play(numberline, line_state(5, 0), [PLUS, MINUS] * 5)
    assert [tr for _, _, tr, _ in rows] == [False] * 9 + [True]
    assert not any(t for _, t, _, _ in rows)
    # Reaching the target on step 10 terminates and does not truncate (gym_cards).
    rows = play(numberline, line_state(5, 0), [MINUS] * 5 + [PLUS] * 5)
    assert rows[-1][:3] == (1.0, True, False)


def test_numberline_reset_draws_distinct_target_and_current(numberline, batched_reset):
    keys = jax.random.split(jax.random.key(2), BATCH)
    obs, _ = batched_reset(keys, numberline.default_params)
    pairs = np.stack([np.asarray(obs["target"]), np.asarray(obs["current"])], 1)
    assert (pairs[:, 0] != pairs[:, 1]).all() and pairs.min() == 0 and pairs.max() == 5
    counts = np.unique(pairs, axis=0, return_counts=True)[1]
    assert len(counts) == 30 and counts.min() > 15  # all 30 ordered pairs, roughly uniform


def test_numberline_max_position_and_params(numberline):
    env = NumberLine(max_position=3)
    assert env.default_params.max_steps_in_episode == 6
    rows = play(env, line_state(3, 2), [MINUS, PLUS, PLUS])
    assert rewards(rows) == [-1.0, 0.0, 1.0]
    params = numberline.default_params.replace(
        goal_reward=5.0, penalty=-0.5, max_steps_in_episode=2
    )
    rows = play(numberline, line_state(2, 0), [MINUS, PLUS], params)
    assert [r[:3] for r in rows] == [(-0.5, False, False), (0.0, False, True)]


def test_numberline_render(numberline):
    render = jax.jit(numberline.render)
    params = numberline.default_params
    images = {}
    for target in range(6):
        for current in range(6):
            images[target, current] = np.asarray(render(line_state(target, current), params))
    image = images[4, 1]
    assert image.shape == numberline.image_shape == (224, 280, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(render(line_state(4, 1), params)))
    assert len({im.tobytes() for im in images.values()}) == 36
    # The blue dot sits on the current number's tick, the red ring on the target's.
    line = image[numberline.LINE_Y - 16 : numberline.LINE_Y + 17].astype(int)
    blue = np.flatnonzero(((line[..., 2] > 150) & (line[..., 0] < 80)).any(0))
    red = np.flatnonzero(((line[..., 0] > 150) & (line[..., 1] < 80)).any(0))
    assert abs(blue.mean() - numberline._tick_x(1)) < 1.0
    assert abs(red.mean() - numberline._tick_x(4)) < 1.0


def test_numberline_jit_vmap_1024_without_recompiling(numberline, batched_reset):
    step = jax.jit(jax.vmap(numberline.step, in_axes=(0, 0, 0, None)))
    params = numberline.default_params
    keys = jax.random.split(jax.random.key(5), BATCH)
    _, states = batched_reset(keys, params)
    actions = jnp.arange(BATCH) % 2
    obs, after, reward, terminated, truncated, _ = step(keys, states, actions, params)
    assert obs["image"].shape == (BATCH, *numberline.image_shape)
    # Every lane follows the rules, computed here with numpy.
    target, current = np.asarray(states.target), np.asarray(states.current)
    moved = np.clip(current + 2 * np.asarray(actions) - 1, 0, 5)
    closer = np.abs(moved - target) < np.abs(current - target)
    expected = np.where(moved == target, 1.0, np.where(closer, 0.0, -1.0))
    np.testing.assert_array_equal(np.asarray(reward), expected)
    np.testing.assert_array_equal(np.asarray(terminated), moved == target)
    changed = params.replace(goal_reward=2.0, penalty=-4.0, max_steps_in_episode=1)
    _, _, reward2, _, truncated2, _ = step(keys, states, actions, changed)
    assert step._cache_size() == 1
    np.testing.assert_array_equal(np.asarray(reward2), np.where(expected == 1, 2.0, expected * 4))
    np.testing.assert_array_equal(np.asarray(truncated2), moved != target)
    assert not np.asarray(truncated).any()
