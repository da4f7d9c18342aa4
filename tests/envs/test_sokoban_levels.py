"""Sokoban level banks, the shortest-solution solver and the reverse-play generator.

The solver is checked against a plain breadth-first search written here (no heuristic, no dead
cells, states as (player, frozenset of boxes)), and its plans are replayed in the JAX env.
"""

from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtr_turbo_jax.envs.sokoban import (
    LevelBank,
    Sokoban,
    generate_bank,
    generate_split,
    load_bank,
    parse_grid,
    save_bank,
    solve,
)
from gtr_turbo_jax.envs.sokoban.generator import default_bank
from gtr_turbo_jax.envs.sokoban.generator import main as generator_main
from gtr_turbo_jax.envs.sokoban.levels import SHIPPED_BANKS, count_boxes, shipped_bank_path

SHIPPED = [((r, c), b) for r, c, b in SHIPPED_BANKS]
DELTAS = [(-1, 0), (1, 0), (0, -1), (0, 1)]


def reference_bfs_length(level: np.ndarray) -> int | None:
    """Fewest moves to put every box on a target, by exhaustive BFS (None if impossible)."""
    rows, cols = level.shape
    walls = {(r, c) for r in range(rows) for c in range(cols) if level[r, c] == 0}
    targets = {(r, c) for r in range(rows) for c in range(cols) if level[r, c] in (2, 3, 6)}
    boxes = frozenset((r, c) for r in range(rows) for c in range(cols) if level[r, c] in (3, 4))
    (player,) = [(r, c) for r in range(rows) for c in range(cols) if level[r, c] in (5, 6)]

    def free(cell):
        return 0 <= cell[0] < rows and 0 <= cell[1] < cols and cell not in walls

    start = (player, boxes)
    seen, queue = {start}, deque([(start, 0)])
    while queue:
        (player, boxes), moves = queue.popleft()
        if boxes <= targets:
            return moves
        for dr, dc in DELTAS:
            ahead = (player[0] + dr, player[1] + dc)
            if not free(ahead):
                continue
            new_boxes = boxes
            if ahead in boxes:
                beyond = (ahead[0] + dr, ahead[1] + dc)
                if not free(beyond) or beyond in boxes:
                    continue
                new_boxes = (boxes - {ahead}) | {beyond}
            state = (ahead, new_boxes)
            if state not in seen:
                seen.add(state)
                queue.append((state, moves + 1))
    return None


def apply_plan(level: np.ndarray, plan: list[int]) -> bool:
    """Replay `plan` with plain rules; True if every box ends on a target."""
    level = level.copy()
    targets = np.isin(level, (2, 3, 6))
    (player,) = np.argwhere(np.isin(level, (5, 6)))
    boxes = np.isin(level, (3, 4))
    walls = level == 0
    for action in plan:
        dr, dc = DELTAS[action]
        ahead = (player[0] + dr, player[1] + dc)
        if walls[ahead]:
            continue
        if boxes[ahead]:
            beyond = (ahead[0] + dr, ahead[1] + dc)
            if walls[beyond] or boxes[beyond]:
                continue
            boxes[ahead], boxes[beyond] = False, True
        player = np.asarray(ahead)
    return bool(np.all(targets[boxes]))


# -- shipped banks --------------------------------------------------------------------------


@pytest.mark.parametrize("size, boxes", SHIPPED)
def test_shipped_banks_exist_with_their_shape_and_disjoint_splits(size, boxes):
    n_train, n_test, _ = SHIPPED_BANKS[(*size, boxes)]
    banks = {}
    for split, n in (("train", n_train), ("test", n_test)):
        path = shipped_bank_path(size, boxes, split)
        assert path is not None and path.stat().st_size < 100_000
        banks[split] = load_bank(path, size, boxes)
        assert banks[split].levels.shape == (n, *size)
        assert np.all(count_boxes(banks[split].levels) == boxes)
        assert np.all(banks[split].solution_lengths >= 5)
    train = {level.tobytes() for level in banks["train"].levels}
    test = {level.tobytes() for level in banks["test"].levels}
    assert len(train) == n_train and len(test) == n_test and not train & test


@pytest.mark.parametrize("size, boxes", SHIPPED)
def test_sample_of_shipped_levels_has_the_recorded_shortest_solution(size, boxes):
    bank = default_bank(size, boxes, "train")
    for i in np.random.default_rng(0).choice(len(bank), 8, replace=False):
        plan = solve(bank.levels[i])
        assert plan is not None and len(plan) == bank.solution_lengths[i] >= 5
        assert apply_plan(bank.levels[i], plan)


@pytest.mark.slow
@pytest.mark.parametrize("size, boxes", SHIPPED)
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_shipped_level_is_solvable_in_at_least_5_moves(size, boxes, split):
    bank = default_bank(size, boxes, split)
    for level, length in zip(bank.levels, bank.solution_lengths):
        plan = solve(level)
        assert plan is not None and len(plan) == length >= 5
        assert apply_plan(level, plan)


@pytest.mark.slow
@pytest.mark.parametrize("size, boxes", SHIPPED)
def test_shipped_banks_regenerate_from_their_seed(size, boxes):
    n_train, n_test, seed = SHIPPED_BANKS[(*size, boxes)]
    banks = generate_split(size, boxes, n_train, n_test, seed)
    for split in ("train", "test"):
        shipped = default_bank(size, boxes, split)
        np.testing.assert_array_equal(banks[split].levels, shipped.levels)
        np.testing.assert_array_equal(banks[split].solution_lengths, shipped.solution_lengths)


# -- solver ---------------------------------------------------------------------------------


def test_solver_finds_shortest_solutions_like_plain_bfs():
    levels = list(generate_bank((6, 6), 1, n=10, seed=11, min_solution=1).levels)
    levels += list(generate_bank((6, 6), 2, n=6, seed=12, min_solution=1).levels)
    levels += list(generate_bank((7, 7), 2, n=4, seed=13, min_solution=1).levels)
    for level in levels:
        plan = solve(level)
        assert plan is not None
        assert len(plan) == reference_bfs_length(level)
        assert apply_plan(level, plan)


def test_solver_hand_worked_cases():
    # One push right.
    assert solve(parse_grid("#####\n#PXO#\n#####")) == [3]
    # Two pushes left.
    level = parse_grid(
        """
        ######
        #O_XP#
        #____#
        ######
        """
    )
    assert solve(level) == [2, 2]
    level = parse_grid(
        """
        ######
        #OX_P#
        #____#
        ######
        """
    )
    assert solve(level) == [2, 2]  # Left walks to the box, Left pushes it on
    assert solve(parse_grid("#####\n#P_√#\n#####")) == []  # already solved
    assert solve(parse_grid("####\n#X_#\n#_P#\n#O_#\n####")) is None  # box stuck in a corner


def test_solver_rejects_malformed_levels():
    with pytest.raises(ValueError, match="exactly one player"):
        solve(parse_grid("#####\n#_XO#\n#####"))
    with pytest.raises(ValueError, match="2-D grid"):
        solve(np.zeros(5, np.int8))


@pytest.mark.parametrize("size, boxes", [((6, 6), 1), ((8, 8), 2)])
def test_solver_plans_solve_levels_in_the_jax_env(size, boxes):
    env = Sokoban(size=size, num_boxes=boxes, render_image=False)
    params = env.default_params
    bank = env.bank
    indices = np.arange(12)
    plans = [solve(bank.levels[i]) for i in indices]
    horizon = max(len(p) for p in plans)
    actions = np.zeros((len(plans), horizon), np.int32)
    for row, plan in zip(actions, plans):
        row[: len(plan)] = plan

    @jax.jit
    def play(indices, actions):
        _, state = jax.vmap(env.reset_to, in_axes=(0, None))(indices, params)

        def turn(state, action):
            key = jax.random.key(0)
            _, state, reward, terminated, _, _ = jax.vmap(env.step, in_axes=(None, 0, 0, None))(
                key, state, action, params
            )
            return state, (reward, terminated)

        return jax.lax.scan(turn, state, actions.T)[1]

    rewards, terminated = map(np.asarray, play(jnp.asarray(indices), jnp.asarray(actions)))
    for j, plan in enumerate(plans):
        first_end = np.flatnonzero(terminated[:, j])[0]
        assert first_end == len(plan) - 1
        # The episode's return: -0.1 per move, +10 at the end, and the box-on-target terms
        # net out to the boxes that start off their targets.
        start_off = int(np.sum(bank.levels[indices[j]] == 4))
        expected = -0.1 * len(plan) + 10 + start_off
        assert rewards[: len(plan), j].sum() == pytest.approx(expected, abs=1e-4)


# -- generator ------------------------------------------------------------------------------


def test_generation_is_deterministic_per_seed():
    first = generate_bank((6, 6), 1, n=12, seed=3)
    again = generate_bank((6, 6), 1, n=12, seed=3)
    other = generate_bank((6, 6), 1, n=12, seed=4)
    np.testing.assert_array_equal(first.levels, again.levels)
    np.testing.assert_array_equal(first.solution_lengths, again.solution_lengths)
    assert not np.array_equal(first.levels, other.levels)


def test_generated_levels_respect_min_solution_and_are_distinct():
    bank = generate_bank((7, 7), 2, n=10, seed=5, min_solution=9)
    assert len({level.tobytes() for level in bank.levels}) == 10
    for level, length in zip(bank.levels, bank.solution_lengths):
        assert length >= 9 and len(solve(level)) == length
        assert np.all(level[[0, -1], :] == 0) and np.all(level[:, [0, -1]] == 0)  # walled in


def test_generate_split_is_disjoint_and_sized():
    banks = generate_split((6, 6), 1, n_train=15, n_test=5, seed=9)
    assert (len(banks["train"]), len(banks["test"])) == (15, 5)
    train = {level.tobytes() for level in banks["train"].levels}
    assert not train & {level.tobytes() for level in banks["test"].levels}


def test_split_override_selects_the_held_out_bank():
    env = Sokoban(split="test")
    test_bank = default_bank((6, 6), 1, "test")
    np.testing.assert_array_equal(np.asarray(env.default_params.levels.grids), test_bank.levels)
    train_params = env.params_for(default_bank((6, 6), 1, "train"), max_steps_in_episode=7)
    assert train_params.levels.grids.shape[0] == SHIPPED_BANKS[(6, 6, 1)][0]
    assert train_params.max_steps_in_episode == 7


def test_unshipped_size_gets_a_generated_default_bank():
    env = Sokoban(size=(7, 7), num_boxes=2)
    assert env.bank.levels.shape[1:] == (7, 7) and len(env.bank) >= 100
    assert np.all(env.bank.solution_lengths >= 5)
    assert np.all(count_boxes(env.bank.levels) == 2)


@pytest.mark.parametrize(
    "size, boxes, n, match",
    [((4, 4), 2, 5, "too small"), ((6, 6), 0, 5, "num_boxes"), ((6, 6), 1, 0, "n must be")],
)
def test_generate_bank_rejects_bad_arguments(size, boxes, n, match):
    with pytest.raises(ValueError, match=match):
        generate_bank(size, boxes, n=n, seed=0)


# -- bank files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_bank():
    return generate_bank((6, 6), 1, n=6, seed=21)


def test_bank_round_trip(tmp_path, small_bank):
    path = save_bank(tmp_path / "sub" / "bank.npz", small_bank)
    loaded = load_bank(path, (6, 6), 1)
    np.testing.assert_array_equal(loaded.levels, small_bank.levels)
    np.testing.assert_array_equal(loaded.solution_lengths, small_bank.solution_lengths)
    env = Sokoban(bank=path)
    np.testing.assert_array_equal(np.asarray(env.default_params.levels.grids), small_bank.levels)


def test_missing_bank_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match=f"level bank {missing} not found"):
        load_bank(missing)
    with pytest.raises(FileNotFoundError, match="not found"):
        Sokoban(bank=missing)


def test_corrupt_bank_file_is_a_clear_error(tmp_path, small_bank):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match=f"corrupt Sokoban level bank {garbage}"):
        load_bank(garbage)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(save_bank(tmp_path / "ok.npz", small_bank).read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt Sokoban level bank"):
        load_bank(truncated)
    no_lengths = tmp_path / "no_lengths.npz"
    np.savez(no_lengths, levels=small_bank.levels)
    with pytest.raises(ValueError, match="missing array.*solution_lengths"):
        load_bank(no_lengths)
    two_players = tmp_path / "two_players.npz"
    levels = small_bank.levels.copy()
    levels[0][levels[0] == 1] = 5
    np.savez(two_players, levels=levels, solution_lengths=small_bank.solution_lengths)
    with pytest.raises(ValueError, match="level 0 has .* players, expected 1"):
        load_bank(two_players)


def test_mismatched_bank_file_is_a_clear_error(tmp_path, small_bank):
    path = save_bank(tmp_path / "bank.npz", small_bank)
    with pytest.raises(ValueError, match="holds 6x6 levels with 1 box.*expected 8x8 with 2"):
        load_bank(path, (8, 8), 2)
    with pytest.raises(ValueError, match="holds 6x6 levels .*expected 8x8 with 2"):
        Sokoban(size=(8, 8), num_boxes=2, bank=path)


def test_level_bank_validates_its_arrays():
    with pytest.raises(ValueError, match=r"levels must be \[N >= 1, rows, cols\]"):
        LevelBank(np.zeros((6, 6), np.int8), np.zeros(6))
    with pytest.raises(ValueError, match="solution_lengths"):
        LevelBank(np.zeros((2, 6, 6), np.int8), np.zeros(3))


def test_generator_cli_writes_loadable_banks(tmp_path, capsys):
    out = tmp_path / "one.npz"
    assert generator_main(["--size", "6", "6", "--boxes", "1", "--n", "4", "--out", str(out)]) == 0
    assert len(load_bank(out, (6, 6), 1)) == 4
    args = ["--size", "6", "6", "--n", "3", "--test", "2", "--out", str(tmp_path / "split")]
    assert generator_main(args) == 0
    assert len(load_bank(tmp_path / "split" / "6x6_1box_test.npz")) == 2
    assert generator_main(["--size", "3", "3", "--out", str(out)]) == 2
    assert "too small" in capsys.readouterr().err
