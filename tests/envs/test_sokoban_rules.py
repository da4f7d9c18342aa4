"""Sokoban rules, rewards, resets and bad input, on hand-written levels with hand-worked outcomes.

Rewards (METHOD.md section 5, gym-sokoban): -0.1 per step, +1 box onto a target, -1 box off a
target, +10 when every box is on a target (terminated).
"""

import jax
import numpy as np
import pytest

from gtr_turbo_jax.envs.sokoban import LevelBank, PySokoban, Sokoban, parse_grid, text_grid

UP, DOWN, LEFT, RIGHT = range(4)

ONE_BOX_LEVELS = [
    # 0: open room, box away from its target
    """
    ######
    #P___#
    #_X_O#
    #____#
    #____#
    ######
    """,
    # 1: one push from solved
    """
    ######
    #PXO_#
    #____#
    #____#
    #____#
    ######
    """,
    # 2: box against the right wall
    """
    ######
    #__PX#
    #____#
    #__O_#
    #____#
    ######
    """,
]
TWO_BOX_LEVELS = [
    # 0: box into box
    """
    ######
    #PXX_#
    #____#
    #_OO_#
    #____#
    ######
    """,
    # 1: push onto a target, the other box still off
    """
    ######
    #PXO_#
    #____#
    #_X_O#
    #____#
    ######
    """,
    # 2: push off a target
    """
    ######
    #P√__#
    #____#
    #_X_O#
    #____#
    ######
    """,
    # 3: push from a target onto the next target
    """
    ######
    #P√O_#
    #____#
    #_X__#
    #____#
    ######
    """,
]
# No outer walls: the edge of the grid must stop the player and the boxes.
OPEN_LEVELS = [
    """
    P__X_
    _____
    __O__
    _____
    _____
    """,
]


def make_env(levels, num_boxes, **kwargs):
    grids = np.stack([parse_grid(text) for text in levels])
    bank = LevelBank(grids, np.zeros(len(grids), np.int16))
    return Sokoban(size=grids.shape[1:], num_boxes=num_boxes, bank=bank, **kwargs)


class Player:
    """Jitted reset_to/step of one env, compiled once per module."""

    def __init__(self, env):
        self.env = env
        self.reset_to = jax.jit(env.reset_to)
        self.step = jax.jit(env.step)

    def play(self, index, actions, params=None, key_seed=0):
        params = self.env.default_params if params is None else params
        obs, state = self.reset_to(index, params)
        out = []
        for i, action in enumerate(actions):
            key = jax.random.key(key_seed + i)
            obs, state, reward, terminated, truncated, info = self.step(key, state, action, params)
            out.append((float(reward), bool(terminated), bool(truncated), obs, state, info))
        return out


@pytest.fixture(scope="module")
def one_box():
    return Player(make_env(ONE_BOX_LEVELS, 1, render_image=False))


@pytest.fixture(scope="module")
def two_box():
    return Player(make_env(TWO_BOX_LEVELS, 2, render_image=False))


def grid_text(obs):
    return text_grid(np.asarray(obs["grid"]))


def dedent(text):
    return "\n".join(line.strip() for line in text.strip().splitlines())


def test_plain_move_costs_a_step(one_box):
    ((reward, term, trunc, obs, state, _),) = one_box.play(0, [RIGHT])
    assert (reward, term, trunc) == (pytest.approx(-0.1), False, False)
    assert grid_text(obs) == dedent(
        """
        ######
        #_P__#
        #_X_O#
        #____#
        #____#
        ######
        """
    )
    assert state.player.tolist() == [1, 2]


def test_walking_over_a_target_shows_player_on_target(one_box):
    steps = one_box.play(0, [RIGHT, RIGHT, RIGHT, DOWN, DOWN])  # (1,4) -> (2,4) target -> (3,4)
    assert grid_text(steps[3][3]).splitlines()[2] == "#_X_S#"
    assert grid_text(steps[4][3]).splitlines()[2:4] == ["#_X_O#", "#___P#"]
    assert [s[0] for s in steps] == pytest.approx([-0.1] * 5)


def test_move_into_wall_changes_nothing(one_box):
    start = ONE_BOX_LEVELS[0]
    for action in (UP, LEFT):
        ((reward, term, _, obs, state, info),) = one_box.play(0, [action])
        assert reward == pytest.approx(-0.1) and not term
        assert grid_text(obs) == dedent(start)
        assert state.player.tolist() == [1, 1] and not bool(info["pushed"])


def test_push_box_into_wall_changes_nothing(one_box):
    ((reward, term, _, obs, _, info),) = one_box.play(2, [RIGHT])
    assert reward == pytest.approx(-0.1) and not term and not bool(info["pushed"])
    assert grid_text(obs) == dedent(ONE_BOX_LEVELS[2])


def test_push_box_into_box_changes_nothing(two_box):
    ((reward, term, _, obs, _, _),) = two_box.play(0, [RIGHT])
    assert reward == pytest.approx(-0.1) and not term
    assert grid_text(obs) == dedent(TWO_BOX_LEVELS[0])


def test_push_box_onto_target(two_box):
    ((reward, term, _, obs, _, info),) = two_box.play(1, [RIGHT])
    assert reward == pytest.approx(1.0 - 0.1) and not term and bool(info["pushed"])
    assert grid_text(obs).splitlines()[1] == "#_P√_#"


def test_push_box_off_target(two_box):
    ((reward, term, _, obs, _, _),) = two_box.play(2, [RIGHT])
    assert reward == pytest.approx(-1.0 - 0.1) and not term
    assert grid_text(obs).splitlines()[1] == "#_SX_#"


def test_push_from_target_to_target_is_neutral(two_box):
    ((reward, term, _, obs, _, _),) = two_box.play(3, [RIGHT])
    assert reward == pytest.approx(-0.1) and not term
    assert grid_text(obs).splitlines()[1] == "#_S√_#"


def test_solving_terminates_with_bonus_and_auto_resets(one_box):
    ((reward, term, trunc, obs, state, info),) = one_box.play(1, [RIGHT], key_seed=5)
    assert reward == pytest.approx(10.0 + 1.0 - 0.1)
    assert term and not trunc
    assert grid_text(info["final_observation"]).splitlines()[1] == "#_P√_#"
    # The returned observation is the start of a freshly drawn level.
    assert int(state.time) == 0
    level = int(state.level)
    assert grid_text(obs) == dedent(ONE_BOX_LEVELS[level])


def test_two_box_level_terminates_only_when_both_are_on_targets(two_box):
    # Level 1: Right pushes box 1 on (+0.9); walk round to (3,1); push box 2 from (3,2) to (3,4).
    actions = [RIGHT, LEFT, DOWN, DOWN, RIGHT, RIGHT]
    steps = two_box.play(1, actions)
    rewards = [s[0] for s in steps]
    assert rewards == pytest.approx([0.9, -0.1, -0.1, -0.1, -0.1, 10.9])
    assert [s[1] for s in steps] == [False] * 5 + [True]


def test_truncation_at_max_steps(one_box):
    params = one_box.env.default_params.replace(max_steps_in_episode=3)
    steps = one_box.play(0, [RIGHT, RIGHT, DOWN], params)
    assert [(s[1], s[2]) for s in steps] == [(False, False), (False, False), (False, True)]
    final = steps[-1][5]["final_observation"]
    assert grid_text(final).splitlines()[1:3] == ["#____#", "#_XPO#"]
    assert int(steps[-1][4].time) == 0  # reset after the truncated step


def test_edge_of_grid_blocks_like_a_wall():
    player = Player(make_env(OPEN_LEVELS, 1, render_image=False))
    # Up and Left would leave the grid; three Rights walk to the box and push it to the edge;
    # the last Right would push it off the grid.
    steps = player.play(0, [UP, LEFT, RIGHT, RIGHT, RIGHT, RIGHT])
    players = [s[3]["player"].tolist() for s in steps]
    assert players == [[0, 0], [0, 0], [0, 1], [0, 2], [0, 3], [0, 3]]
    assert grid_text(steps[-1][3]).splitlines()[0] == "___PX"
    assert [s[0] for s in steps] == pytest.approx([-0.1] * 6)
    assert [bool(s[5]["pushed"]) for s in steps] == [False] * 4 + [True, False]


def test_out_of_range_actions_are_clipped(one_box):
    (high,) = one_box.play(0, [7])  # clipped to 3 = Right
    (right,) = one_box.play(0, [RIGHT])
    assert grid_text(high[3]) == grid_text(right[3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": (4, 4), "num_boxes": 2}, "too small"),
        ({"size": (6,)}, "size must be"),
        ({"size": "6x6"}, "size must be"),
        ({"size": (2, 9)}, "rows, cols >= 3"),
        ({"size": (6.0, 6)}, "size must be"),
        ({"num_boxes": 0}, "num_boxes must be"),
        ({"num_boxes": 1.5}, "num_boxes must be"),
        ({"split": "val"}, "split must be one of train, test"),
        ({"tile_size": 3}, "tile_size must be"),
        ({"bank": 42}, "bank must be"),
    ],
)
def test_bad_constructor_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sokoban(**kwargs)


def test_bank_of_other_size_or_box_count_is_rejected():
    bank = make_env(ONE_BOX_LEVELS, 1).bank
    with pytest.raises(ValueError, match="bank levels are 6x6, the env's size is 8x8"):
        Sokoban(size=(8, 8), num_boxes=1, bank=bank)
    with pytest.raises(ValueError, match="has 1 boxes, expected 2"):
        Sokoban(size=(6, 6), num_boxes=2, bank=bank)


def test_blocked_move_penalty_charges_only_moves_without_effect(one_box, two_box):
    """Hand-worked on level 0 (player at (1, 1), box at (2, 2)) and two-box level 0 (a box that
    pushes into a box): a wall bump and a jammed push pay the penalty on top of the step cost; a
    plain move and a push do not. The pure-Python env charges the same."""
    params = one_box.env.default_params.replace(blocked_move_penalty=-0.5)
    moves = [UP, LEFT, RIGHT, LEFT, DOWN, RIGHT]  # wall, wall, walk, walk back, walk, push the box
    rewards = [step[0] for step in one_box.play(0, moves, params)]
    assert rewards == pytest.approx([-0.6, -0.6, -0.1, -0.1, -0.1, -0.1])
    jammed = two_box.env.default_params.replace(blocked_move_penalty=-0.5)
    ((reward, *_),) = two_box.play(0, [RIGHT], jammed)
    assert reward == pytest.approx(-0.6)

    py = PySokoban(bank=one_box.env.bank, blocked_move_penalty=-0.5, render_image=False)
    py.reset_to(0)
    assert [py.step(a)[1] for a in moves] == pytest.approx(rewards)
