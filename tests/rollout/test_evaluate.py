"""The evaluator on a one-level Sokoban with scripted replies, against the env stepped directly.

The level (player P, box X, target O):
    ######
    #____#
    #PX_O#      env 0 replies a valid "Right" twice: solved in 2 moves (return 10.8), then its
    #____#      env restarts and solves again (that second episode must not count);
    #____#      env 1 replies invalid JSON whose action is "Left" (blocked by the wall);
    ######      env 2 replies a valid "Down" (two moves, then blocked).
Episodes run to the step limit (4) unless solved. The expected metrics are computed from the env
stepped directly with those actions and from `rollout.metrics` on the known thought texts.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.sokoban import LevelBank, parse_grid
from gtr_turbo_jax.models import ValueHead, from_pretrained, get_config
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.rollout import metrics
from gtr_turbo_jax.rollout.evaluate import (
    METRIC_NAMES,
    EpisodeRecord,
    episode_metrics,
    make_evaluator,
)
from gtr_turbo_jax.rollout.sampler import SampleOutput, SamplingConfig
from gtr_turbo_jax.text.image import ImageConfig, num_image_tokens
from gtr_turbo_jax.text.parse import make_reply_spec
from gtr_turbo_jax.text.prompts import make_template
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path
from gtr_turbo_jax.train.state import ModelDefs, split_model

LEVEL = "######\n#____#\n#PX_O#\n#____#\n#____#\n######"
MAX_STEPS, REPLY_LEN, TILE = 4, 40, 14
THOUGHTS = ("player at (2, 1) and box at (2, 2)", "", "box at (2, 2), target at (2, 4)")
REPLIES = (
    f'{{"thoughts": "{THOUGHTS[0]}", "action": "Right"}}',
    '{"thoughts": "player at (2, 1)", "action": "Left"',  # no closing brace: invalid
    f'{{"thoughts": "{THOUGHTS[2]}", "action": "Down"}}',
)
ACTIONS = (3, 2, 1)  # Right, Left, Down
VALID = (True, False, True)
ENVS = len(REPLIES)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    bank = LevelBank(parse_grid(LEVEL)[None], np.array([2]))
    env, params = envs.make("sokoban", bank=bank, tile_size=TILE, max_steps_in_episode=MAX_STEPS)
    height, width, _ = env.image_shape
    image_config = ImageConfig()
    template = make_template(
        "sokoban", env, tokenizer, num_image_tokens(height, width, image_config), style="brief"
    )
    spec = make_reply_spec(tokenizer, env.action_names)
    checkpoint = write_random_checkpoint(tmp_path_factory.mktemp("eval"), get_config("micro"), 2)
    graphdef, policy, base = split_model(from_pretrained(checkpoint))
    value_graphdef, value_head = nnx.split(
        ValueHead(get_config("micro").text.hidden_size, widths=(8,), rngs=nnx.Rngs(0)), nnx.Param
    )
    encoded = [tokenizer.encode(text + "<|im_end|>") for text in REPLIES]
    assert max(map(len, encoded)) <= REPLY_LEN
    scripted_ids = np.asarray([np.pad(ids, (0, REPLY_LEN - len(ids))) for ids in encoded])

    def scripted(prompt_ids, prompt_mask, key):
        del prompt_ids, prompt_mask, key
        mask = scripted_ids != 0
        zeros = jnp.zeros(mask.shape, jnp.float32)
        return SampleOutput(jnp.asarray(scripted_ids), jnp.asarray(mask), zeros, zeros, mask.sum(1))

    evaluator = make_evaluator(
        "sokoban",
        env,
        params,
        template,
        spec,
        image_config,
        SamplingConfig(max_new_tokens=REPLY_LEN, greedy=True, eos_ids=(2,)),
        ModelDefs(graphdef, value_graphdef),
        tokenizer,
        num_episodes=ENVS,
        record=1,
        reply_fn=scripted,
    )
    return dict(env=env, params=params, evaluator=evaluator, weights=(base, policy, value_head))


@pytest.fixture(scope="module")
def reference(setup):
    """The env stepped directly with the scripted actions: each env's first episode."""
    env, params = setup["env"], setup["params"]
    keys = jax.random.split(jax.random.key(0), ENVS)  # one level: every reset is the same
    obs, state = jax.vmap(env.reset, (0, None))(keys, params)
    step = jax.jit(jax.vmap(env.step, (0, 0, 0, None)))
    episodes = [dict(rewards=[], fields=[], frames=[], done=False) for _ in range(ENVS)]
    for _ in range(MAX_STEPS):
        before = jax.device_get(obs)
        obs, state, reward, terminated, truncated, _ = step(
            keys, state, jnp.asarray(ACTIONS), params
        )
        for e, episode in enumerate(episodes):
            if not episode["done"]:
                episode["rewards"].append(float(reward[e]))
                episode["fields"].append({"grid": before["grid"][e], "player": before["player"][e]})
                episode["frames"].append(before["image"][e])
                episode["done"] = bool(terminated[e] | truncated[e])
    return episodes


def test_metrics_count_first_episodes_only(setup, reference):
    result = setup["evaluator"](*setup["weights"], jax.random.key(1))
    returns = [sum(e["rewards"]) for e in reference]
    lengths = [len(e["rewards"]) for e in reference]
    # Hand-worked: env 0 solves in 2 moves (-0.1, then -0.1 + 1 + 10); the others hit the limit.
    assert lengths == [2, MAX_STEPS, MAX_STEPS]
    assert returns[0] == pytest.approx(10.8) and returns[1] == pytest.approx(-0.1 * MAX_STEPS)
    m = result.metrics
    assert set(m) == set(METRIC_NAMES) and all(isinstance(v, float) for v in m.values())
    assert m["success_rate"] == pytest.approx(1 / 3)
    assert m["return_mean"] == pytest.approx(np.mean(returns), abs=1e-5)
    assert m["episode_length"] == pytest.approx(np.mean(lengths))
    valid_turns = sum(n for n, v in zip(lengths, VALID) if v)
    assert m["valid_rate"] == pytest.approx(valid_turns / sum(lengths))
    # Thought metrics on the known texts (env 1 has none; thoughts repeat within an episode).
    bleus = [metrics.self_bleu([THOUGHTS[e]] * lengths[e]) for e in (0, 2)]
    assert m["self_bleu"] == pytest.approx(np.mean(bleus))
    words = [metrics.thought_length(THOUGHTS[e]) for e in (0, 2)]
    assert m["thought_len"] == pytest.approx(np.average(words, weights=[lengths[0], lengths[2]]))
    scores = [
        metrics.grounding("sokoban", THOUGHTS[e], fields)
        for e in (0, 2)
        for fields in reference[e]["fields"]
    ]
    assert m["grounding"] == pytest.approx(np.mean(scores))
    assert 0 < m["grounding"] < 1  # env 0's claims turn false after its first move
    # Hand-worked: env 0 moves both times; env 1's "Left" hits the wall on all 3 moves that have a
    # next turn; env 2 walks down twice, then hits the wall once before its last turn.
    assert m["no_effect_rate"] == pytest.approx((0 + 3 + 1) / (1 + 3 + 3))

    for e, episode in enumerate(result.episodes):
        assert episode.actions == [ACTIONS[e]] * lengths[e]
        np.testing.assert_allclose(episode.rewards, reference[e]["rewards"], atol=1e-6)
        assert episode.replies == [REPLIES[e]] * lengths[e]
        assert episode.valid == [VALID[e]] * lengths[e]
        assert episode.success == (e == 0) and episode.finished
        for got, want in zip(episode.fields, reference[e]["fields"]):
            np.testing.assert_array_equal(got["grid"], want["grid"])
            np.testing.assert_array_equal(got["player"], want["player"])
    # record=1: frames for the first episode only, the images each reply answered.
    np.testing.assert_array_equal(np.stack(result.episodes[0].frames), reference[0]["frames"])
    assert result.episodes[1].frames == [] and result.episodes[2].frames == []


def test_max_turns_cuts_episodes_and_compiles_once(setup, tmp_path):
    evaluator = dataclasses.replace(setup["evaluator"], max_turns=1)
    result = evaluator(*setup["weights"], jax.random.key(2))
    assert [e.length for e in result.episodes] == [1, 1, 1]
    assert not any(e.finished or e.success for e in result.episodes)
    assert result.metrics["success_rate"] == 0.0
    assert result.metrics["return_mean"] == pytest.approx(-0.1)
    assert math.isnan(result.metrics["self_bleu"])  # one thought per episode: no reference
    assert setup["evaluator"].max_turns == MAX_STEPS  # the default: the env's step limit
    assert setup["evaluator"].rollout.run.compiled._cache_size() == 1  # every turn, every call
    gif = result.episodes[0].save_gif(tmp_path / "episode.gif")
    assert Image.open(gif).n_frames == 1
    with pytest.raises(ValueError, match="no frames"):
        result.episodes[1].save_gif(tmp_path / "none.gif")


def test_make_evaluator_rejects_bad_arguments(setup):
    env, params = setup["env"], setup["params"]
    args = (env, params, None, None, None, None, None, None)
    with pytest.raises(ValueError, match="unknown env 'sokobam'"):
        make_evaluator("sokobam", *args, num_episodes=2)
    with pytest.raises(ValueError, match="num_episodes=0: need an int >= 1"):
        make_evaluator("sokoban", *args, num_episodes=0)
    with pytest.raises(ValueError, match="max_turns=0: need an int >= 1"):
        make_evaluator("sokoban", *args, num_episodes=2, max_turns=0)
    with pytest.raises(ValueError, match="record=3: need an int in 0..num_episodes=2"):
        make_evaluator("sokoban", *args, num_episodes=2, record=3)
    with pytest.raises(ValueError, match="max_turns=0: need an int >= 1"):
        dataclasses.replace(setup["evaluator"], max_turns=0)


def test_no_effect_rate_compares_consecutive_states():
    def episode(states):
        n = len(states)
        return EpisodeRecord(
            frames=[], replies=[""] * n, actions=[0] * n, rewards=[0.0] * n, success=False,
            fields=states, valid=[False] * n, thoughts=[""] * n,
        )  # fmt: skip

    line = lambda current: {"current": np.int32(current), "target": np.int32(3)}
    # Hand-worked NumberLine: 1 -> 1 (no effect) -> 2 -> 3; a one-turn episode adds no move.
    episodes = [episode([line(1), line(1), line(2), line(3)]), episode([line(0)])]
    assert episode_metrics("numberline", episodes)["no_effect_rate"] == pytest.approx(1 / 3)
    # An env without state fields cannot tell: nan, not "every move had no effect".
    assert math.isnan(episode_metrics("numberline", [episode([{}, {}, {}])])["no_effect_rate"])
