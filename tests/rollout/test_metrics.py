"""Evaluation metrics: self-BLEU against a transcription of NLTK's BLEU, hand-worked rates, and the
grounding grammar against the true state of random env states."""

import math
from fractions import Fraction

import jax
import numpy as np
import pytest

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.sokoban.levels import BOX, BOX_ON_TARGET, FLOOR, PLAYER, TARGET, WALL
from gtr_turbo_jax.envs.sokoban.python_env import PySokoban
from gtr_turbo_jax.rollout import metrics

# ---------------------------------------------------------------------------------------------
# self-BLEU


def nltk_sentence_bleu(references, hypothesis):
    """NLTK 3.8 `sentence_bleu(refs, hyp, weights=(0.5, 0.5), smoothing_function=method1)`,
    transcribed with plain loops: corpus_bleu over one segment."""
    numerators, denominators = {}, {}
    for n in (1, 2):
        hyp_ngrams = [tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1)]
        counts = {}
        for g in hyp_ngrams:
            counts[g] = counts.get(g, 0) + 1
        max_counts = {}
        for reference in references:
            ref_ngrams = [tuple(reference[i : i + n]) for i in range(len(reference) - n + 1)]
            for g in counts:
                in_ref = 0
                for r in ref_ngrams:
                    if r == g:
                        in_ref += 1
                max_counts[g] = max(max_counts.get(g, 0), in_ref)
        clipped = 0
        for g, c in counts.items():
            clipped += min(c, max_counts[g])
        numerators[n] = clipped
        denominators[n] = max(1, len(hyp_ngrams))
    if numerators[1] == 0:
        return 0.0
    hyp_len = len(hypothesis)
    best = None
    for reference in references:
        key = (abs(len(reference) - hyp_len), len(reference))
        if best is None or key < best[0]:
            best = (key, len(reference))
    ref_len = best[1]
    if hyp_len > ref_len:
        bp = 1.0
    else:
        bp = math.exp(1 - ref_len / hyp_len)
    logs = 0.0
    for n in (1, 2):
        if numerators[n] == 0:
            p = (0 + 0.1) / denominators[n]  # method1
        else:
            p = Fraction(numerators[n], denominators[n])
        logs += 0.5 * math.log(p)
    return bp * math.exp(logs)


def reference_self_bleu(thoughts):
    words = [t.split() for t in thoughts]
    scores = []
    for i in range(len(words)):
        others = [words[j] for j in range(len(words)) if j != i]
        scores.append(nltk_sentence_bleu(others, words[i]))
    return sum(scores) / len(scores)


def test_self_bleu_matches_nltk_transcription_on_random_episodes():
    rng = np.random.default_rng(0)
    vocab = ["box", "left", "up", "the", "is", "at", "(2,", "3)", "target", "push"]
    for _ in range(300):
        turns = int(rng.integers(2, 7))
        thoughts = [" ".join(rng.choice(vocab, int(rng.integers(0, 9)))) for _ in range(turns)]
        assert metrics.self_bleu(thoughts) == pytest.approx(
            reference_self_bleu(thoughts), abs=1e-12
        )


def test_self_bleu_hand_worked():
    assert metrics.self_bleu(["push the box up"] * 3) == pytest.approx(1.0)
    assert metrics.self_bleu(["push the box", "move right now"]) == 0.0  # no shared word
    # p1 = 2/3, p2 = 1/2, equal lengths: sqrt(1/3) both ways
    assert metrics.self_bleu(["a b c", "a b d"]) == pytest.approx(math.sqrt(1 / 3))
    # no shared bigram: p2 smoothed to 0.1 / 1
    assert metrics.self_bleu(["a b", "b a"]) == pytest.approx(math.sqrt(0.1))
    # "a b c d" vs "a b": sqrt(2/4 * 1/3), no penalty; "a b" vs "a b c d": 1 * exp(1 - 4/2)
    expected = (math.sqrt(1 / 6) + math.exp(-1)) / 2
    assert metrics.self_bleu(["a b c d", "a b"]) == pytest.approx(expected)
    assert metrics.self_bleu(["  a   b c ", "a b\nd"]) == pytest.approx(math.sqrt(1 / 3))


def test_self_bleu_needs_two_thoughts():
    assert math.isnan(metrics.self_bleu(["only one"]))
    assert math.isnan(metrics.self_bleu([]))


# ---------------------------------------------------------------------------------------------
# lengths and rates


def test_thought_length_counts_words():
    assert metrics.thought_length("Player at (2, 3), box at (3, 3).") == 8
    assert metrics.thought_length("  \n ") == 0


def test_valid_and_success_rates_with_masks():
    valid = np.array([[1, 0, 1], [1, 1, 0]], bool)
    mask = np.array([[1, 1, 1], [1, 0, 0]], bool)
    assert metrics.valid_rate(valid) == pytest.approx(4 / 6)
    assert metrics.valid_rate(valid, mask) == pytest.approx(3 / 4)
    assert math.isnan(metrics.valid_rate(valid, np.zeros_like(mask)))
    returns = np.array([10.0, -1.0, 0.0, 0.5])
    assert metrics.success_rate(returns) == pytest.approx(0.5)  # return > 0, 0 is a failure
    assert metrics.success_rate(returns, [True, True, True, False]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="mask shape"):
        metrics.valid_rate(valid, mask[0])


def test_success_tracker_keeps_the_last_window():
    tracker = metrics.SuccessTracker(window=3)
    assert math.isnan(tracker.rate) and tracker.count == 0
    tracker.update([1.0, -1.0])
    assert tracker.rate == pytest.approx(0.5)
    # per-step returns with a done mask: only the finished episodes count
    tracker.update(np.array([[5.0, 2.0], [0.0, 3.0]]), done=np.array([[1, 0], [1, 1]], bool))
    # history 1, -1, 5, 0, 3 -> last three: 5, 0, 3
    assert tracker.count == 3 and tracker.rate == pytest.approx(2 / 3)
    assert metrics.SuccessTracker().update([1.0]) is None
    with pytest.raises(ValueError, match="window=0"):
        metrics.SuccessTracker(window=0)


# ---------------------------------------------------------------------------------------------
# grounding

STEPS, ENVS = 12, 8


def host_states(env_name, count=96, seed=0):
    """Random unbatched `prompt_fields` built on the host: Sokoban by random play of the plain
    Python env on the default bank (every 4th state with a box moved onto a target), the card
    games drawn from each field's documented range."""
    rng = np.random.default_rng(seed)
    env, params = envs.make(env_name)
    out = []
    if env_name == "sokoban":
        game = PySokoban(bank=np.asarray(params.levels.grids), render_image=False)
        fields = game.reset(seed)
        for i in range(count):
            grid = fields["grid"].copy()
            boxes, targets = np.argwhere(grid == BOX), np.argwhere(grid == TARGET)
            if i % 4 == 0 and len(boxes) and len(targets):  # random play rarely solves one
                grid[tuple(boxes[0])], grid[tuple(targets[0])] = FLOOR, BOX_ON_TARGET
            out.append(dict(fields, grid=grid))
            fields, _, terminated, truncated, _ = game.step(int(rng.integers(4)))
            if terminated or truncated:
                fields = game.reset(int(rng.integers(1 << 30)))
        return out
    for _ in range(count):
        if env_name in ("points24", "ezpoints"):
            ranks = rng.integers(1, 14, env.num_cards)
            length = int(rng.integers(0, env.formula_capacity + 1))
            formula = np.full(env.formula_capacity, -1, np.int32)
            formula[:length] = rng.integers(0, len(env.formula_symbols), length)
            fields = {
                "ranks": ranks,
                "values": np.minimum(ranks, 10),
                "formula": formula,
                "formula_length": np.int32(length),
            }
        elif env_name == "numberline":
            current, target = rng.choice(6, 2, replace=False)
            fields = {"current": np.int32(current), "target": np.int32(target)}
        else:
            fields = {
                "player_sum": np.int32(rng.integers(4, 22)),
                "dealer_card": np.int32(rng.integers(1, 11)),
                "usable_ace": np.int32(rng.integers(2)),
            }
        out.append(fields)
    return out


def env_states(env_name, seed=0):
    """`prompt_fields` (numpy, unbatched) of states met in random play of the JAX env."""
    env, params = envs.make(env_name)

    @jax.jit
    def play(key):
        reset_key, key = jax.random.split(key)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, ENVS), params)

        def turn(state, key):
            action_key, step_key = jax.random.split(key)
            actions = jax.random.randint(action_key, (ENVS,), 0, env.num_actions)
            step = jax.vmap(lambda k, s, a: env.step(k, s, a, params)[1])
            fields = jax.vmap(lambda s: env.prompt_fields(s, params))(state)
            return step(jax.random.split(step_key, ENVS), state, actions), fields

        return jax.lax.scan(turn, state, jax.random.split(key, STEPS))[1]

    batch = jax.device_get(play(jax.random.key(seed)))
    return [
        {k: np.asarray(v[t, i]) for k, v in batch.items()}
        for t in range(STEPS)
        for i in range(ENVS)
    ]


def corruptions(env_name, fields):
    """(corrupted fields, claims of the true description they falsify): each changes one claim."""
    f = {k: np.array(v) for k, v in fields.items()}
    if env_name == "sokoban":
        moved = dict(f, player=f["player"] + np.array([1, 0]))
        yield moved, 1
        grid = f["grid"].copy()
        boxes = np.argwhere(grid == BOX)
        floors = np.argwhere(grid == FLOOR)
        if len(boxes) and len(floors):
            grid[tuple(boxes[0])], grid[tuple(floors[0])] = FLOOR, BOX
            yield dict(f, grid=grid), 1
    elif env_name in ("points24", "ezpoints"):
        values = f["values"].copy()
        values[0] = values[0] % 10 + 1
        yield dict(f, values=values), 1
        if f["formula_length"] < len(f["formula"]):
            formula = f["formula"].copy()
            formula[f["formula_length"]] = 0
            yield dict(f, formula=formula, formula_length=f["formula_length"] + 1), 1
    elif env_name == "numberline":
        yield dict(f, current=(f["current"] + 1) % 6), 1
        yield dict(f, target=(f["target"] + 1) % 6), 1
    else:
        yield dict(f, player_sum=f["player_sum"] + 1), 1
        yield dict(f, dealer_card=f["dealer_card"] % 10 + 1), 1
        yield dict(f, usable_ace=1 - f["usable_ace"]), 1


def check_descriptions(env_name, states):
    kinds = set()
    for fields in states:
        text = metrics.describe_state(env_name, fields)
        claims = metrics.grounding_claims(env_name, text, fields)
        assert claims and all(claims), text
        assert metrics.grounding(env_name, text, fields) == 1.0
        for corrupted, wrong in corruptions(env_name, fields):
            bad = metrics.describe_state(env_name, corrupted)
            expected = (len(claims) - wrong) / len(claims)
            assert metrics.grounding(env_name, bad, fields) == pytest.approx(expected), bad
        kinds.add(text)
    assert len(kinds) > 5  # the random states differ


@pytest.mark.parametrize("env_name", list(envs.ENVS))
def test_description_is_fully_grounded_and_corruptions_score_lower(env_name):
    check_descriptions(env_name, host_states(env_name))


@pytest.mark.slow
@pytest.mark.parametrize("env_name", list(envs.ENVS))
def test_description_grounded_on_states_of_jax_env_play(env_name):
    check_descriptions(env_name, env_states(env_name))


def test_sokoban_host_states_include_a_box_on_target():
    grids = [f["grid"] for f in host_states("sokoban")]
    assert any((g == BOX_ON_TARGET).any() for g in grids)


def sokoban_fields():
    # row 1: player at (1, 1); (2, 2) box; (3, 2) target; (3, 3) box on target
    grid = np.full((5, 5), WALL, np.int8)
    grid[1:4, 1:4] = FLOOR
    grid[1, 1], grid[2, 2], grid[3, 2], grid[3, 3] = PLAYER, BOX, TARGET, BOX_ON_TARGET
    return {"grid": grid, "player": np.array([1, 1], np.int32)}


def test_sokoban_claims_hand_worked():
    fields = sokoban_fields()
    text = metrics.describe_state("sokoban", fields)
    assert text == ("Player at (1, 1), box at (2, 2), box on target at (3, 3), target at (3, 2).")
    say = lambda t: metrics.grounding("sokoban", t, fields)  # noqa: E731
    # player wrong; both boxes right (a box on target is a box); the target right
    assert say("Player at (2, 3), boxes at (2,2) and (3, 3), targets at (3,2)") == 3 / 4
    assert say("You are at (1, 1). The target is at (3, 3).") == 1.0  # covered target
    assert say("box on target at (2, 2); box at (9, 9)") == 0.0  # not on target; outside
    assert say("push the box up") is None


def test_card_game_claims_hand_worked():
    # K, 3, A, 10 dealt; the formula so far is "3 + <blank>"
    fields = {
        "ranks": np.array([13, 3, 1, 10]),
        "values": np.array([10, 3, 1, 10]),
        "formula": np.array([2, 10, 16, -1, -1, -1]),  # 3, +, blank (id 16 is '=' -> blank)
        "formula_length": np.array(3),
    }
    text = metrics.describe_state("points24", fields)
    assert text == "Cards: 10, 3, 1, 10. Formula: 3 + _."
    say = lambda t: metrics.grounding("points24", t, fields)  # noqa: E731
    assert say("cards: K, 3, 10, A; formula: 3+_") == 1.0
    # Q matches no card (rank 12), 3 does; two cards unnamed -> 1 of 4; formula is not empty
    assert say("Cards: Q, 3 and the formula is empty") == 1 / 5
    assert say("Cards: 10, 10, 10, 3, 1") == 4 / 5  # an extra card is a false claim
    assert say("the formula evaluates to 24") is None
    # a whole JSON reply: the "cards" and "formula" keys are claims too
    reply = '{"cards": ["K", "3", "A", "9"], "formula": "3 + _", "thoughts": "...", "action": "4"}'
    assert say(reply) == 4 / 5


def test_numberline_and_blackjack_claims_hand_worked():
    line = {"current": np.array(2), "target": np.array(4)}
    assert metrics.describe_state("numberline", line) == "Current 2, target 4."
    assert metrics.grounding("numberline", "current number is 3, target: 4", line) == 0.5
    hand = {"player_sum": np.array(15), "dealer_card": np.array(1), "usable_ace": np.array(0)}
    assert metrics.describe_state("blackjack", hand) == (
        "Player sum 15, dealer card 1, usable ace: no."
    )
    say = lambda t: metrics.grounding("blackjack", t, hand)  # noqa: E731
    assert say("My total is 15, the dealer shows an ace and I have no usable ace") == 1.0
    assert say("player sum 16, dealer card K, usable ace: yes") == 0.0
    assert say("I should hit") is None


def test_mean_grounding_skips_thoughts_without_claims():
    assert metrics.mean_grounding([1.0, None, 0.5]) == 0.75
    assert math.isnan(metrics.mean_grounding([None]))


def test_unknown_env_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown env 'chess'"):
        metrics.grounding("chess", "", {})
    with pytest.raises(ValueError, match="fields lack 'current'"):
        metrics.describe_state("numberline", {"target": np.array(1)})
