"""The oracle teacher's corrections: the expert's reply per state, tokenized and right-padded, with
labels on the reply minus its action span. References: the decoded token text (the labels cover
exactly the text before the `"action":` marker), the jitted parser's thought mask, validity and
action on the same ids, and `expert_reply`."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from gtr_turbo_jax.envs.sokoban import PySokoban, default_bank
from gtr_turbo_jax.text import replies
from gtr_turbo_jax.text.parse import make_reply_spec, parse_reply_ids
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path
from gtr_turbo_jax.train.demos import action_names, expert_action, expert_move, expert_reply
from gtr_turbo_jax.train.oracle import oracle_corrections

TURNS, ENVS, WIDTH = 3, 4, 128
MARKER = replies.ACTION_MARKER


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_tokenizer_path())


def _sokoban_fields(seed=0):
    """Prompt fields [TURNS, ENVS, ...] of random-walk states on held-out levels."""
    rng = np.random.default_rng(seed)
    game = PySokoban(bank=default_bank((6, 6), 1, "test"), render_image=False)
    rows = []
    for level in range(TURNS * ENVS):
        obs = game.reset_to(level)
        for _ in range(rng.integers(0, 3)):
            obs, _, done, *_ = game.step(int(rng.integers(4)))
            obs = game.reset_to(level) if done else obs
        rows.append(obs)
    return {
        k: np.stack([r[k] for r in rows]).reshape(TURNS, ENVS, *rows[0][k].shape) for k in rows[0]
    }


def _formula_fields():
    """Points24 states [TURNS, ENVS, ...]: deals with some formula typed so far."""
    symbols = action_names("points24")
    deals = [(8, 3, 8, 3), (13, 12, 4, 1), (1, 1, 1, 1), (11, 2, 5, 7)]
    typed = [[], ["8"], ["(", "1", "+"], ["10", "*"]]
    fields = {"ranks": [], "values": [], "formula": [], "formula_length": []}
    for i in range(TURNS * ENVS):
        ranks, tokens = deals[i % 4], typed[(i // 4 + i) % 4]
        formula = np.full(21, -1, np.int32)
        formula[: len(tokens)] = [symbols.index(t) for t in tokens]
        fields["ranks"].append(ranks)
        fields["values"].append(np.minimum(ranks, 10))
        fields["formula"].append(formula)
        fields["formula_length"].append(len(tokens))
    return {
        k: np.asarray(v, np.int32).reshape(TURNS, ENVS, *np.shape(v[0])) for k, v in fields.items()
    }


def _row(fields, t, e):
    return {k: v[t, e] for k, v in fields.items()}


@pytest.mark.parametrize("env_name", ["sokoban", "points24"])
def test_labels_cover_the_reply_before_the_action(env_name, tokenizer):
    fields = _sokoban_fields() if env_name == "sokoban" else _formula_fields()
    ids, labels = oracle_corrections(env_name, fields, tokenizer, width=WIDTH)
    assert ids.shape == labels.shape == (TURNS, ENVS, WIDTH) and ids.dtype == np.int32
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for t in range(TURNS):
        for e in range(ENVS):
            reply = expert_reply(env_name, _row(fields, t, e))
            row = ids[t, e].tolist()
            end = row.index(im_end)
            assert tokenizer.decode(row[:end]) == reply
            assert not labels[t, e, end:].any()  # EOS and padding unlabelled
            labelled = tokenizer.decode(ids[t, e][labels[t, e]])
            # The labels are a prefix of the reply ending within one token of the marker.
            marker = reply.rfind(MARKER)
            assert reply.startswith(labelled) and MARKER not in labelled
            assert 0 < marker - len(labelled) <= 2, (labelled[-10:], reply[marker - 5 :])
            assert labels[t, e, : labels[t, e].sum()].all()  # one contiguous span from the start


def test_label_mask_is_the_jit_parsers_thought_mask(tokenizer):
    fields = _sokoban_fields(1)
    agent = np.arange(TURNS * ENVS).reshape(TURNS, ENVS) % 4
    ids, labels = oracle_corrections("sokoban", fields, tokenizer, width=WIDTH, actions=agent)
    spec = make_reply_spec(tokenizer, action_names("sokoban"))
    flat_ids = ids.reshape(-1, WIDTH)
    mask = np.zeros_like(flat_ids, bool)
    for i, row in enumerate(flat_ids.tolist()):  # the reply through its EOS, as the sampler writes
        mask[i, : row.index(tokenizer.convert_tokens_to_ids("<|im_end|>")) + 1] = True
    keys = jax.random.split(jax.random.key(0), len(flat_ids))
    parsed = jax.jit(jax.vmap(parse_reply_ids, (0, 0, None, 0)))(flat_ids, mask, spec, keys)
    np.testing.assert_array_equal(parsed.thought_mask, labels.reshape(-1, WIDTH))
    assert np.asarray(parsed.valid).all() and np.asarray(parsed.legal).all()
    np.testing.assert_array_equal(parsed.action, agent.ravel())  # the agent's action put in


def test_agent_actions_change_only_the_action_span(tokenizer):
    fields = _sokoban_fields(2)
    expert = np.vectorize(lambda t, e: expert_action("sokoban", _row(fields, t, e)))(
        *np.indices((TURNS, ENVS))
    )
    other = (expert + 1) % 4
    own_ids, own_labels = oracle_corrections("sokoban", fields, tokenizer, width=WIDTH)
    put_ids, put_labels = oracle_corrections(
        "sokoban", fields, tokenizer, width=WIDTH, actions=other
    )
    for t in range(TURNS):
        for e in range(ENVS):
            # The agent's action replaces the solver's reason by a plain statement of the move.
            own = tokenizer.decode(own_ids[t, e][own_labels[t, e]])
            put = tokenizer.decode(put_ids[t, e][put_labels[t, e]])
            prefix = own[: own.index(". ") + 2]  # the state description
            assert put.startswith(prefix)
            reason = expert_move("sokoban", _row(fields, t, e)).reason
            assert reason in own and reason not in put
            assert put.endswith(f'I move {action_names("sokoban")[other[t, e]]}.",')


def test_errors_name_the_problem(tokenizer):
    fields = _sokoban_fields()
    with pytest.raises(ValueError, match="more than the reply width 10"):
        oracle_corrections("sokoban", fields, tokenizer, width=10)
    with pytest.raises(ValueError, match="actions has shape"):
        oracle_corrections("sokoban", fields, tokenizer, width=WIDTH, actions=np.zeros(3))
    bad = dict(fields, player=fields["player"][0])
    with pytest.raises(ValueError, match="leading axes"):
        oracle_corrections("sokoban", bad, tokenizer, width=WIDTH)


def test_brief_style_replies_carry_thoughts_and_action_only(tokenizer):
    fields = _formula_fields()
    ids, labels = oracle_corrections("points24", fields, tokenizer, width=WIDTH, style="brief")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for t in range(TURNS):
        row = ids[t, 0].tolist()
        text = tokenizer.decode(row[: row.index(im_end)])
        assert text == expert_reply("points24", _row(fields, t, 0), style="brief")
        assert list(json.loads(text)) == ["thoughts", "action"]
    with pytest.raises(ValueError, match="style='short' is not a prompt style"):
        oracle_corrections("points24", fields, tokenizer, width=WIDTH, style="short")


def _points24_state(ranks, tokens):
    symbols = action_names("points24")
    formula = np.full(21, -1, np.int32)
    formula[: len(tokens)] = [symbols.index(t) for t in tokens]
    return {
        "ranks": np.asarray(ranks, np.int32),
        "values": np.minimum(np.asarray(ranks, np.int32), 10),
        "formula": formula,
        "formula_length": np.int32(len(tokens)),
    }


@pytest.mark.parametrize(
    ("ranks", "typed", "finishes"),
    [
        ((1, 2, 3, 4), "( 1 * 2", False),  # no minimal form starts so: ( 1 * 2 ) * 3 * 4 does
        ((1, 2, 3, 4), "4 * ( 3 + 2 + 1 )", True),  # a redundant-parenthesis solution: finish
        ((1, 2, 3, 4), "1 + 2 + 3 +", True),  # only + 4 is left: 10, nothing completes it
        ((8, 3, 8, 3), "( 8", False),  # ( 8 / ( 3 - 8 / 3 ) )
    ],
)
def test_the_oracle_finishes_only_where_no_completion_reaches_24(ranks, typed, finishes):
    from gtr_turbo_jax.envs.cards.solver import completion
    from gtr_turbo_jax.train.demos import expert_move

    move = expert_move("points24", _points24_state(ranks, typed.split()))
    names = action_names("points24")
    assert (names[move.action] == "=") == finishes, move
    assert move.solvable == (completion(typed.split(), ranks, 24) is not None)
    if not finishes:  # the thought names a plan that starts with the typed prefix and makes 24
        plan = move.reason.split("Plan: ")[1].split(" = ")[0].split()
        assert plan[: len(typed.split())] == typed.split()
        assert completion(plan, ranks, 24) == ()
