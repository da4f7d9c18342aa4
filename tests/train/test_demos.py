"""Expert demonstrations: the expert solves levels and deals, its replies parse (host and jit
parsers) as the action they name with thoughts that are all true, collection is deterministic, and
encoding matches the host prompt / reply tokenization.

References: the Python Sokoban twin (`PySokoban`) and the shipped banks' A* lengths, the formula
games' Python rules (`FormulaGameReference`), hand-worked NumberLine and Blackjack cases, the host
reply rules (`text.replies`), the grounding checker, `encode_prompt`."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
from support.cards_reference import FormulaGameReference

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.sokoban import PySokoban, default_bank, make_atlas, parse_grid
from gtr_turbo_jax.envs.sokoban.expert import STUCK_ACTION
from gtr_turbo_jax.envs.sokoban.render import tile_grid_np
from gtr_turbo_jax.rollout.metrics import grounding
from gtr_turbo_jax.text import replies
from gtr_turbo_jax.text.image import ImageConfig, num_image_tokens
from gtr_turbo_jax.text.prompts import encode_prompt, make_template
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path
from gtr_turbo_jax.train import demos as D

FULL_KEYS = {  # the keys the full prompts ask for before the thoughts (`AgentSpec.replies`)
    "points24": ["cards", "formula"],
    "ezpoints": ["cards", "formula"],
    "numberline": ["current number", "target number"],
}
TILE = 14


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_tokenizer_path())


@pytest.fixture(scope="module")
def sokoban():
    return envs.make("sokoban", tile_size=TILE)


# --- the expert solves ----------------------------------------------------------------------------


@pytest.mark.parametrize("size,boxes,count", [((6, 6), 1, 40), ((8, 8), 2, 8)])
def test_sokoban_expert_solves_in_astar_length(size, boxes, count):
    bank = default_bank(size, boxes, "test")
    game = PySokoban(bank=bank, max_steps_in_episode=100, render_image=False)
    for level in range(count):
        obs, steps, done = game.reset_to(level), 0, False
        while not done:
            obs, _, terminated, truncated, _ = game.step(D.expert_action("sokoban", obs))
            steps, done = steps + 1, terminated or truncated
        assert terminated and steps == bank.solution_lengths[level], (level, steps)


def test_sokoban_dead_box_gets_the_fallback():
    # The box sits in a corner off the target: no push can ever move it onto one.
    grid = parse_grid("######\n#X__O#\n#__P_#\n######")
    fields = {"grid": grid, "player": np.asarray([2, 3], np.int32)}
    move = D.expert_move("sokoban", fields)
    assert move == (STUCK_ACTION, move.reason, False)
    assert "No box can reach a target" in move.reason


def test_sokoban_reason_names_the_next_push():
    # Player below the box's left neighbour; the box must go right twice onto the target.
    grid = parse_grid("#######\n#_X_O_#\n#P____#\n#######")
    fields = {"grid": grid, "player": np.asarray([2, 1], np.int32)}
    move = D.expert_move("sokoban", fields)
    assert move.action == 0  # Up, to (1, 1), from where the box is pushed right
    assert move.reason == (
        "Push the box at (1, 2) right from (1, 1); row 2 to 1 is up, column 1 to 1 is level, "
        "so I move Up."
    )
    fields = {"grid": parse_grid("#######\n#P_X_O#\n#_____#\n#######"), "player": np.array([1, 1])}
    assert D.expert_action("sokoban", fields) == 3  # Right: walk to (1, 2)
    fields = {"grid": parse_grid("#######\n#_PX_O#\n#_____#\n#######"), "player": np.array([1, 2])}
    move = D.expert_move("sokoban", fields)
    assert move.action == 3 and move.reason.endswith(
        "row 1 to 1 is level, column 2 to 2 is level, so I push Right."
    )


def test_sokoban_walk_closes_the_row_gap_first_when_it_can():
    # The box at (1, 4) goes left, from (1, 5); the player at (3, 1) has several equally short
    # walks there: the rule takes Up (row gap first) while that is on a shortest walk.
    grid = parse_grid("#######\n#O__X_#\n#_____#\n#P____#\n#######")
    fields = {"grid": grid, "player": np.asarray([3, 1], np.int32)}
    move = D.expert_move("sokoban", fields)
    assert move.reason == (
        "Push the box at (1, 4) left from (1, 5); row 3 to 1 is up, column 1 to 5 is right, "
        "so I move Up."
    )
    assert move.action == 0  # Up
    # A wall above the player: Up is no longer on a shortest walk, so the column gap: Right.
    grid = parse_grid("#######\n#O__X_#\n##____#\n#P____#\n#######")
    fields = {"grid": grid, "player": np.asarray([3, 1], np.int32)}
    move = D.expert_move("sokoban", fields)
    assert move.action == 3 and move.reason.endswith(
        "row 3 to 1 is up but blocked, column 1 to 5 is right, so I move Right."
    )
    # On the standing cell's row: Right, though Down starts an equally short walk too.
    grid = parse_grid("#######\n#OP_X_#\n#_____#\n#_____#\n#######")
    fields = {"grid": grid, "player": np.asarray([1, 2], np.int32)}
    move = D.expert_move("sokoban", fields)
    assert move.action == 3 and move.reason.endswith(
        "row 1 to 1 is level, column 2 to 5 is right, so I move Right."
    )


@functools.cache
def _env(env_name):
    return envs.make(env_name)[0]


def _formula_fields(env_name, ranks, tokens):
    env = _env(env_name)
    ids = [env.blank_symbol if t == " " else env.action_names.index(t) for t in tokens]
    formula = np.full(env.formula_capacity, -1, np.int32)
    formula[: len(ids)] = ids
    return {
        "ranks": np.asarray(ranks, np.int32),
        "values": np.minimum(np.asarray(ranks, np.int32), 10),
        "formula": formula,
        "formula_length": np.int32(len(ids)),
    }


def _play_formula(env_name, ranks, start=()):
    """Plays the expert from `start` tokens on the Python rules: (last reward, actions taken)."""
    env = _env(env_name)
    game = FormulaGameReference(ranks, env.action_names, env.target, env.max_formula_length)
    for token in start:
        game.step(env.action_names.index(token))
    taken = []
    for _ in range(2 * env.formula_capacity):
        action = D.expert_action(env_name, _formula_fields(env_name, ranks, game.formula))
        taken.append(env.action_names[action])
        reward, terminated, truncated = game.step(action)
        if terminated or truncated:
            return reward, taken
    raise AssertionError("the expert never ended the episode")


@pytest.mark.parametrize(
    "ranks", [(8, 3, 8, 3), (13, 12, 4, 1), (1, 1, 1, 8), (6, 6, 6, 6), (11, 2, 5, 7)]
)
def test_points24_expert_solves_solvable_deals(ranks):
    reward, taken = _play_formula("points24", ranks)
    assert reward == 10.0 and taken[-1] == "="


def test_points24_expert_ends_unsolvable_or_spoilt_formulas():
    reward, taken = _play_formula("points24", (1, 1, 1, 1))
    assert taken == ["="] and reward == -1.0
    move = D.expert_move("points24", _formula_fields("points24", (8, 3, 8, 3), ["*", "8"]))
    assert move.action == _env("points24").action_names.index("=") and not move.solvable
    # A rejected number leaves a blank that the plan skips: the expert still wins.
    reward, _ = _play_formula("points24", (8, 3, 8, 3), start=["7"])
    assert reward == 10.0


@pytest.mark.parametrize("ranks", [(2, 10), (3, 4), (12, 2), (6, 6), (11, 2)])
def test_ezpoints_expert_solves(ranks):
    reward, taken = _play_formula("ezpoints", ranks)
    assert reward == 10.0 and len(taken) == 4  # number, operator, number, "="


def test_numberline_expert_walks_straight_to_the_target():
    for target in range(6):
        for current in set(range(6)) - {target}:
            position, steps = current, 0
            while position != target:
                action = D.expert_action("numberline", {"current": position, "target": target})
                position += 1 if action == 1 else -1
                steps += 1
            assert steps == abs(target - current)


@pytest.mark.parametrize(
    "total,dealer,soft,hit",
    [
        (11, 1, False, True),
        (12, 3, False, True),
        (12, 4, False, False),
        (12, 7, False, True),
        (13, 2, False, False),
        (16, 6, False, False),
        (16, 10, False, True),
        (16, 1, False, True),
        (17, 1, False, False),
        (17, 2, True, True),
        (18, 8, True, False),
        (18, 9, True, True),
        (18, 1, True, True),
        (19, 1, True, False),
    ],
)
def test_blackjack_basic_strategy(total, dealer, soft, hit):
    fields = {"player_sum": total, "dealer_card": dealer, "usable_ace": int(soft)}
    assert D.expert_action("blackjack", fields) == int(hit)  # stand 0, hit 1


# --- replies --------------------------------------------------------------------------------------


def _sokoban_states(count=12, seed=0):
    """Prompt fields of states along random walks on held-out levels (plus a dead one)."""
    rng = np.random.default_rng(seed)
    game = PySokoban(bank=default_bank((6, 6), 1, "test"), render_image=False)
    states = []
    for level in range(count):
        obs = game.reset_to(level)
        for _ in range(rng.integers(0, 4)):
            obs, _, done, *_ = game.step(int(rng.integers(4)))
            if done:
                obs = game.reset_to(level)
        states.append(obs)
    return states + [{"grid": parse_grid("######\n#X__O#\n#__P_#\n######"), "player": [2, 3]}]


def _formula_states(env_name, deals):
    """Every prefix of the expert's play of each deal, a blank, and a spoilt formula."""
    states = []
    for ranks in deals:
        _, taken = _play_formula(env_name, ranks)
        states += [_formula_fields(env_name, ranks, taken[:k]) for k in range(len(taken))]
        states.append(_formula_fields(env_name, ranks, [" ", "+"]))
    return states


STATES = {
    "sokoban": _sokoban_states,
    "points24": lambda: _formula_states("points24", [(8, 3, 8, 3), (13, 12, 4, 1), (1, 1, 1, 1)]),
    "ezpoints": lambda: _formula_states("ezpoints", [(3, 4), (12, 2)]),
    "numberline": lambda: [
        {"current": c, "target": t} for c in range(6) for t in range(6) if c != t
    ],
    "blackjack": lambda: [
        {"player_sum": total, "dealer_card": dealer, "usable_ace": soft}
        for total in range(4, 22, 3)
        for dealer in (1, 2, 5, 7, 10)
        for soft in ((0, 1) if total >= 12 else (0,))
    ],
}


@pytest.mark.parametrize("style", ["full", "brief"])
@pytest.mark.parametrize("env_name", list(envs.ENVS))
def test_replies_parse_as_their_action_with_true_thoughts(env_name, style):
    names = _env(env_name).action_names
    rng = np.random.default_rng(0)
    for fields in STATES[env_name]():
        move = D.expert_move(env_name, fields)
        expert = D.expert_reply(env_name, fields, style=style)
        assert expert == D.expert_reply(env_name, fields, move.action, style)
        for action in range(len(names)):
            text = D.expert_reply(env_name, fields, action, style)
            parsed = replies.parse_reply(text, names, rng)
            assert parsed.valid and parsed.legal and parsed.action == action, text
            assert grounding(env_name, parsed.thoughts, fields) == 1.0, text
            # The solver's reason only where the reply names the solver's action.
            assert (move.reason in parsed.thoughts) == (action == move.action), text
            # The keys the prompt style asks for, in its order.
            keys = list(json.loads(text))
            assert keys == (FULL_KEYS.get(env_name, []) if style == "full" else []) + [
                "thoughts",
                "action",
            ]
            assert grounding(env_name, text, fields) == 1.0  # the state keys are true too


# --- collection -----------------------------------------------------------------------------------


def test_collect_is_deterministic_and_follows_the_expert(sokoban):
    env, params = sokoban
    first = D.collect_demos("sokoban", env, params, jax.random.key(7), 30)
    again = D.collect_demos("sokoban", env, params, jax.random.key(7), 30)
    other = D.collect_demos("sokoban", env, params, jax.random.key(8), 30)
    assert [d.reply for d in first] == [d.reply for d in again]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.fields.keys() == b.fields.keys()
        for k in a.fields:
            np.testing.assert_array_equal(a.fields[k], b.fields[k])
    assert [d.reply for d in first] != [d.reply for d in other]
    atlas = make_atlas(TILE)
    for demo in first:  # noise 0: every reply is the expert's, every image shows the fields
        expert = D.expert_action("sokoban", demo.fields)
        assert replies.matched_actions(demo.reply, env.action_names) == [expert]
        np.testing.assert_array_equal(demo.image, tile_grid_np(atlas, demo.fields["grid"]))


def test_collect_steps_the_env_with_the_named_actions(sokoban):
    env, params = sokoban
    key = jax.random.key(1)
    demos = D.collect_demos("sokoban", env, params, key, 40, noise=0.5, history_length=2)
    starts = default_bank((6, 6), 1, "train").levels
    restarts = 0
    assert demos[0].fields["history"].tolist() == [-1, -1]
    for here, after in zip(demos, demos[1:]):
        (action,) = replies.matched_actions(here.reply, env.action_names)
        # Replay the step from the recorded state on the Python twin (a one-level bank).
        game = PySokoban(bank=here.fields["grid"][None], render_image=False)
        game.reset_to(0)
        obs, _, terminated, *_ = game.step(action)
        if np.array_equal(obs["grid"], after.fields["grid"]):
            assert after.fields["history"].tolist() == [here.fields["history"][1], action]
        else:
            # Only an episode end (solved, or restarted after a dead push) breaks the chain.
            assert terminated or not D.expert_move("sokoban", obs).solvable
            assert (starts == after.fields["grid"]).all(axis=(1, 2)).any()
            assert after.fields["history"].tolist() == [-1, -1]
            restarts += 1
    assert 0 < restarts < 10
    with pytest.raises(ValueError, match="noise=1.5"):
        D.collect_demos("sokoban", env, params, key, 4, noise=1.5)
    with pytest.raises(ValueError, match="unknown env 'chess'"):
        D.expert_action("chess", {})


# --- encoding -------------------------------------------------------------------------------------


def test_encode_matches_host_tokenization(sokoban, tokenizer):
    env, params = sokoban
    height, width, _ = env.image_shape
    image_tokens = num_image_tokens(height, width, ImageConfig())
    template = make_template("sokoban", env, tokenizer, image_tokens)
    demos = D.collect_demos("sokoban", env, params, jax.random.key(5), 6, noise=0.5)
    encoded = D.encode_demos(demos, template, tokenizer, ImageConfig(), 96)
    assert encoded.prompt_ids.shape == (6, template.max_length)
    assert encoded.image_grid == (1, 6, 6)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, demo in enumerate(demos):
        host = encode_prompt(tokenizer, template, env, demo.fields, image_tokens)
        mask = encoded.prompt_mask[i].astype(bool)
        assert mask.sum() == len(host) and mask[-len(host) :].all()
        np.testing.assert_array_equal(encoded.prompt_ids[i][mask], host)
        labelled = encoded.reply_ids[i][encoded.label_mask[i]]
        assert labelled[-1] == im_end
        assert tokenizer.decode(labelled[:-1]) == demo.reply
        assert not encoded.label_mask[i][len(labelled) :].any()
        assert encoded.actions[i] == replies.matched_actions(demo.reply, env.action_names)[0]
        np.testing.assert_array_equal(encoded.images[i], demo.image)
    with pytest.raises(ValueError, match="more than the reply width 20"):
        D.encode_demos(demos, template, tokenizer, ImageConfig(), 20)
    with_history = make_template("sokoban", env, tokenizer, image_tokens, history_length=2)
    with pytest.raises(ValueError, match="history_length=2"):
        D.encode_demos(demos, with_history, tokenizer, ImageConfig(), 96)


def test_encode_assembles_history(sokoban, tokenizer):
    env, params = sokoban
    height, width, _ = env.image_shape
    image_tokens = num_image_tokens(height, width, ImageConfig())
    template = make_template("sokoban", env, tokenizer, image_tokens, history_length=2)
    demos = D.collect_demos("sokoban", env, params, jax.random.key(4), 3, history_length=2)
    encoded = D.encode_demos(demos, template, tokenizer, ImageConfig(), 96)
    for i, demo in enumerate(demos):
        host = encode_prompt(tokenizer, template, env, demo.fields, image_tokens)
        np.testing.assert_array_equal(encoded.prompt_ids[i][-len(host) :], host)
        assert encoded.prompt_mask[i].sum() == len(host)
