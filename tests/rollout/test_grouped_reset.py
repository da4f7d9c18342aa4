"""`rollout.multiturn.grouped_reset`: the envs of a group start on one level from one state, the
groups (and consecutive calls) on different ones."""

import jax
import numpy as np

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.wrappers import EpisodeStatistics
from gtr_turbo_jax.rollout.multiturn import grouped_reset, init_rollout_state


def test_groups_share_a_level_and_calls_draw_new_ones():
    env, params = envs.make("sokoban", tile_size=14, max_steps_in_episode=12)
    stats_env = EpisodeStatistics(env)
    state = init_rollout_state(stats_env, params, jax.random.key(0), 6, history_length=2)
    state = state.replace(history=state.history + 3)  # a stale history must be cleared
    first = grouped_reset(stats_env, params, state, 3)
    second = grouped_reset(stats_env, params, first, 3)
    for reset in (first, second):
        images = np.asarray(reset.obs["image"])
        np.testing.assert_array_equal(images[0], images[1])
        np.testing.assert_array_equal(images[0], images[2])
        np.testing.assert_array_equal(images[3], images[5])
        assert not np.array_equal(images[0], images[3])
        np.testing.assert_array_equal(reset.history, -1)
    assert not np.array_equal(np.asarray(first.obs["image"]), np.asarray(second.obs["image"]))
