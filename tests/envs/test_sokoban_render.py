"""Sokoban pictures and text grids: shapes, determinism, distinctness, hand-written expectations."""

import itertools

import jax
import numpy as np
import pytest

from gtr_turbo_jax.envs.sokoban import GRID_SYMBOLS, Sokoban, make_atlas, parse_grid, text_grid


@pytest.fixture(scope="module")
def env():
    return Sokoban()  # default: 6x6, 1 box, 28 px tiles


@pytest.fixture(scope="module")
def trajectory(env):
    """Observations along random moves from one start (jitted once)."""
    params = env.default_params
    step = jax.jit(env.step)
    obs, state = jax.jit(env.reset_to)(0, params)
    out = [obs]
    for i, action in enumerate([3, 3, 1, 1, 2, 0, 0, 3, 1, 2]):
        obs, state, *_ = step(jax.random.key(i), state, action, params)
        out.append(jax.tree.map(np.asarray, obs))
    return out


def test_image_shape_and_dtype(env, trajectory):
    assert env.image_shape == (168, 168, 3)
    for obs in trajectory:
        assert obs["image"].shape == (6 * 28, 6 * 28, 3)
        assert obs["image"].dtype == np.uint8
        assert obs["grid"].shape == (6, 6) and obs["grid"].dtype == np.int8


def test_image_is_the_atlas_tile_of_each_cell(env, trajectory):
    atlas = make_atlas(28)
    for obs in trajectory[:3]:
        for r, c in itertools.product(range(6), range(6)):
            tile = obs["image"][r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28]
            np.testing.assert_array_equal(tile, atlas[obs["grid"][r, c]])


def test_render_is_deterministic(env, trajectory):
    render = jax.jit(env.render)
    _, state = env.reset_to(3)
    first, second = np.asarray(render(state, None)), np.asarray(render(state, None))
    np.testing.assert_array_equal(first, second)
    _, again = env.reset_to(3)
    np.testing.assert_array_equal(first, np.asarray(render(again, None)))


def test_distinct_states_give_distinct_images(trajectory):
    by_grid = {obs["grid"].tobytes(): obs["image"].tobytes() for obs in trajectory}
    assert len(by_grid) >= 4  # the walk visits several states
    assert len(set(by_grid.values())) == len(by_grid)


def test_sprites_are_pairwise_distinct_at_every_tile_size():
    for tile_size in (8, 14, 28, 56):
        atlas = make_atlas(tile_size).reshape(len(GRID_SYMBOLS), -1).astype(int)
        for a, b in itertools.combinations(range(len(GRID_SYMBOLS)), 2):
            # Distinct by a visible margin: many pixels differ, not one.
            assert np.mean(atlas[a] != atlas[b]) > 0.02, (tile_size, a, b)


def test_tile_size_override():
    env = Sokoban(tile_size=14)
    obs, _ = env.reset_to(0)
    assert obs["image"].shape == (84, 84, 3) == env.image_shape


def test_text_grid_matches_hand_written_symbols():
    # Ids in gym-sokoban's room_state order: wall, floor, target, box on target, box, player,
    # player on target.
    grid = np.array([[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 4, 0], [0, 5, 6, 0], [0, 0, 0, 0]])
    assert text_grid(grid) == "####\n#_O#\n#√X#\n#PS#\n####"
    assert GRID_SYMBOLS == ("#", "_", "O", "√", "X", "P", "S")
    np.testing.assert_array_equal(parse_grid(text_grid(grid)), grid)


def test_text_grid_of_an_observation(env):
    obs, _ = env.reset_to(0)
    text = text_grid(np.asarray(obs["grid"]))
    lines = text.splitlines()
    assert len(lines) == 6 and all(len(line) == 6 for line in lines)
    assert lines[0] == "######" and lines[-1] == "######"
    assert text.count("P") + text.count("S") == 1
    assert text.count("X") + text.count("√") == 1


@pytest.mark.parametrize("bad", [np.zeros(3), np.full((2, 2), 7), np.full((2, 2), -1)])
def test_text_grid_rejects_bad_grids(bad):
    with pytest.raises(ValueError, match="grid|cell ids"):
        text_grid(bad)


def test_parse_grid_rejects_unknown_symbols():
    with pytest.raises(ValueError, match=r"unknown grid symbol\(s\) \['@'\]"):
        parse_grid("#@#\n#P#")
