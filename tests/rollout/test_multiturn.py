"""The compiled multi-turn rollout on Sokoban (one-level bank: resets are deterministic, so a plain
stepping of the env with the recorded actions is an exact reference) and a tiny random model.

References: host prompt encoding (`encode_prompt`), the env stepped directly, the uncached scoring
forward (`train.scoring.score_replies`) + value head for every value, and the host JSON rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gtr_turbo_jax import envs
from gtr_turbo_jax.models import LoRAConfig, ValueHead, from_pretrained, get_config
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.rollout.multiturn import make_rollout, stacked_patches
from gtr_turbo_jax.rollout.sampler import SampleOutput, SamplingConfig
from gtr_turbo_jax.text import replies
from gtr_turbo_jax.text.image import ImageConfig, num_image_tokens, preprocess_images
from gtr_turbo_jax.text.parse import make_reply_spec
from gtr_turbo_jax.text.prompts import assemble, encode_prompt, make_template
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path
from gtr_turbo_jax.train.scoring import score_replies
from gtr_turbo_jax.train.state import ModelDefs, split_model

CONFIG = get_config("micro")
EOS = 2
ENVS, MAX_STEPS, REPLY_LEN = 2, 3, 24
FORMAT = (0.5, -2.0)
SCRIPTED_TEXT = '{"thoughts": "the wall is near", "action": "Left"}'
IMAGE_CONFIG = ImageConfig()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    env, params = envs.make("sokoban", tile_size=14, max_steps_in_episode=MAX_STEPS)
    # One level: every reset starts from it, so stepping the env directly reproduces the rollout.
    params = params.replace(levels=jax.tree.map(lambda x: x[:1], params.levels))
    height, width, _ = env.image_shape
    image_tokens = num_image_tokens(height, width, IMAGE_CONFIG)
    template = make_template("sokoban", env, tokenizer, image_tokens)
    spec = make_reply_spec(tokenizer, env.action_names)
    checkpoint = write_random_checkpoint(tmp_path_factory.mktemp("multiturn"), CONFIG, 5)
    model = from_pretrained(checkpoint, lora=LoRAConfig(rank=4, alpha=8.0, dropout=0.0))
    graphdef, policy, base = split_model(model)
    value_graphdef, value_head = nnx.split(
        ValueHead(CONFIG.text.hidden_size, widths=(16,), rngs=nnx.Rngs(1)), nnx.Param
    )
    defs = ModelDefs(graphdef, value_graphdef)
    sampling = SamplingConfig(max_new_tokens=REPLY_LEN, top_k=50, eos_ids=(EOS,))

    scripted_ids = np.asarray(tokenizer.encode(SCRIPTED_TEXT + "<|im_end|>"), np.int32)

    def scripted(prompt_ids, prompt_mask, key):
        del prompt_mask, key
        tokens = np.zeros((REPLY_LEN,), np.int32)
        tokens[: len(scripted_ids)] = scripted_ids
        shape = (prompt_ids.shape[0], REPLY_LEN)
        mask = jnp.broadcast_to(jnp.arange(REPLY_LEN) < len(scripted_ids), shape)
        zeros = jnp.zeros(shape, jnp.float32)
        lengths = jnp.full(shape[:1], len(scripted_ids), jnp.int32)
        return SampleOutput(jnp.broadcast_to(tokens, shape), mask, zeros, zeros, lengths)

    common = (env, params, template, spec, IMAGE_CONFIG, sampling, defs)
    return dict(
        tokenizer=tokenizer,
        env=env,
        params=params,
        template=template,
        image_tokens=image_tokens,
        defs=defs,
        weights=(base, policy, value_head),
        sampled=make_rollout(*common, format_reward=FORMAT),
        scripted=make_rollout(*common, format_reward=FORMAT, reply_fn=scripted),
        scripted_ids=scripted_ids,
        env_step=jax.jit(jax.vmap(env.step, (0, 0, 0, None))),
    )


@pytest.fixture(scope="module")
def value_fn(setup):
    """Reference value: uncached forward over the prompt (+ a one-token dummy reply)."""
    defs = setup["defs"]

    @jax.jit
    def values(base, policy, value_head, prompt_ids, prompt_mask, patches):
        reply = jnp.zeros((prompt_ids.shape[0], 1), jnp.int32)
        scores = score_replies(
            defs.model,
            base,
            policy,
            prompt_ids,
            prompt_mask,
            patches,
            reply,
            reply,
            setup["sampled"].image_grid,
        )
        return nnx.merge(defs.value_head, value_head)(scores.prompt_hidden)

    return lambda prompt_ids, prompt_mask, patches: values(
        *setup["weights"], prompt_ids, prompt_mask, patches
    )


def _prompts(setup, obs):
    fields = {k: v for k, v in obs.items() if k != "image"}
    ids, mask = jax.vmap(assemble, (None, 0))(setup["template"], fields)
    return ids, mask.astype(jnp.int32), preprocess_images(obs["image"], IMAGE_CONFIG).pixel_values


def _step_reference(setup, env_state, actions):
    """Steps the env directly with `actions [T, E]`: rewards, flags and final observations."""
    step, params = setup["env_step"], setup["params"]
    out = {"reward": [], "terminated": [], "truncated": [], "final_obs": []}
    for turn_actions in np.asarray(actions):
        keys = jax.random.split(jax.random.key(123), ENVS)  # resets are deterministic
        _, env_state, reward, terminated, truncated, info = step(
            keys, env_state, jnp.asarray(turn_actions), params
        )
        out["reward"].append(np.asarray(reward))
        out["terminated"].append(np.asarray(terminated))
        out["truncated"].append(np.asarray(truncated))
        out["final_obs"].append(info["final_observation"])
    return out


def _check_values(setup, value_fn, batch, env_state, bootstrap_obs):
    """`value` and `next_value` against the uncached reference forward."""
    turns = batch.turns
    for t in range(turns):
        expected = value_fn(batch.prompt_ids[t], batch.prompt_mask[t], batch.image_patches[t])
        np.testing.assert_allclose(batch.value[t], expected, rtol=1e-4, atol=1e-4)
    reference = _step_reference(setup, env_state, batch.action)
    for t in range(turns):
        if t + 1 < turns:
            following = np.asarray(batch.value[t + 1])
        else:
            following = np.asarray(value_fn(*_prompts(setup, bootstrap_obs)))
        final = np.asarray(value_fn(*_prompts(setup, reference["final_obs"][t])))
        truncated, terminated = np.asarray(batch.truncated[t]), np.asarray(batch.terminated[t])
        expected = np.where(truncated, final, np.where(terminated, 0.0, following))
        np.testing.assert_allclose(batch.next_value[t], expected, rtol=1e-4, atol=1e-4)
    return reference


@pytest.fixture(scope="module")
def sampled_run(setup):
    rollout = setup["sampled"]
    state = rollout.init(jax.random.key(0), ENVS)
    new_state, batch, metrics = rollout.run(state, *setup["weights"], num_turns=MAX_STEPS + 1)
    return state, new_state, batch, metrics


def test_sampled_rollout_shapes_masks_and_prompts(setup, sampled_run):
    state, _, batch, _ = sampled_run
    batch.check_shapes()
    assert batch.image_grid_thw == (1, 6, 6)
    assert batch.prompt_ids.shape == (MAX_STEPS + 1, ENVS, setup["template"].max_length)
    mask = np.asarray(batch.response_mask)
    # The reply is a prefix, ending at its EOS (or at the budget).
    tokens = np.asarray(batch.response_ids)
    for row_tokens, row_mask in zip(tokens.reshape(-1, REPLY_LEN), mask.reshape(-1, REPLY_LEN)):
        length = int(row_mask.sum())
        assert row_mask[:length].all() and not row_mask[length:].any()
        eos_at = np.flatnonzero(row_tokens[:length] == EOS)
        assert eos_at.size == 0 or eos_at[0] == length - 1
    thought, action = np.asarray(batch.thought_mask), np.asarray(batch.action_mask)
    np.testing.assert_array_equal(thought | action, mask)
    assert not (thought & action).any()
    logp = np.asarray(batch.sampler_logp)
    assert (logp[~mask] == 0).all() and (logp[mask] < 0).all()
    # Validity and format reward against the host JSON rules on the decoded replies.
    tok = setup["tokenizer"]
    texts = [
        tok.decode(r[m], skip_special_tokens=True)
        for r, m in zip(tokens.reshape(-1, REPLY_LEN), mask.reshape(-1, REPLY_LEN))
    ]
    host_valid = np.asarray([replies.is_valid_reply(t) for t in texts]).reshape(mask.shape[:2])
    np.testing.assert_array_equal(batch.valid, host_valid)
    np.testing.assert_array_equal(batch.format_reward, np.where(host_valid, *FORMAT))
    # The patches the Batch holds (made after the scan) are the first observations' own (to the
    # last bit of float32: the jitted preprocessing is fused, the reference runs op by op).
    expected = preprocess_images(state.obs["image"], IMAGE_CONFIG).pixel_values
    np.testing.assert_allclose(batch.image_patches[0], expected, rtol=1e-6, atol=1e-6)
    # The first turn's prompts are the host encoding of the initial observations.
    for e in range(ENVS):
        fields = {k: np.asarray(v[e]) for k, v in state.obs.items() if k != "image"}
        expected = encode_prompt(
            tok, setup["template"], setup["env"], fields, setup["image_tokens"]
        )
        ids, pmask = np.asarray(batch.prompt_ids[0, e]), np.asarray(batch.prompt_mask[0, e])
        np.testing.assert_array_equal(ids[pmask > 0], expected)
        assert pmask[-len(expected) :].all() and not pmask[: -len(expected)].any()


def test_stacked_patches_equal_each_turns_preprocessing():
    images = np.random.default_rng(0).integers(0, 256, (3, 2, 28, 56, 3), dtype=np.uint8)
    stacked = stacked_patches(jnp.asarray(images), IMAGE_CONFIG)
    for turn, turn_images in enumerate(images):
        expected = preprocess_images(jnp.asarray(turn_images), IMAGE_CONFIG).pixel_values
        np.testing.assert_array_equal(stacked[turn], expected)


def test_sampled_rollout_env_and_values(setup, value_fn, sampled_run):
    state, new_state, batch, metrics = sampled_run
    reference = _check_values(setup, value_fn, batch, state.env_state.env_state, new_state.obs)
    np.testing.assert_allclose(batch.reward, np.stack(reference["reward"]), atol=1e-6)
    np.testing.assert_array_equal(batch.terminated, np.stack(reference["terminated"]))
    np.testing.assert_array_equal(batch.truncated, np.stack(reference["truncated"]))
    # Episode statistics: returns of the episodes that ended, at the turn they ended.
    done = np.asarray(batch.terminated | batch.truncated)
    np.testing.assert_array_equal(metrics["returned_episode"], done)
    rewards = np.asarray(batch.reward)
    returns, running = np.zeros_like(rewards), np.zeros(ENVS, np.float32)
    for t in range(batch.turns):
        running = running + rewards[t]
        returns[t] = running
        running = np.where(done[t], 0.0, running)
    np.testing.assert_allclose(
        np.where(done, metrics["episode_return"], 0), np.where(done, returns, 0), atol=1e-5
    )


def test_scripted_agent_rewards_and_state_carry(setup, value_fn):
    rollout = setup["scripted"]
    state = rollout.init(jax.random.key(1), ENVS)
    turns = 2  # two calls of 2 turns: the episodes (3 steps) are truncated in the second call
    state_1, batch_1, metrics_1 = rollout.run(state, *setup["weights"], num_turns=turns)
    state_2, batch_2, metrics_2 = rollout.run(state_1, *setup["weights"], num_turns=turns)
    assert rollout.run.compiled._cache_size() == 1  # no recompilation across calls

    left = setup["env"].action_names.index("Left")
    for batch in (batch_1, batch_2):
        assert np.asarray(batch.valid).all()
        np.testing.assert_array_equal(batch.action, left)
        np.testing.assert_array_equal(batch.format_reward, FORMAT[0])
        # The thought span ends where the "action": marker's token begins.
        tok = setup["tokenizer"]
        ids = setup["scripted_ids"]
        thought = tok.decode(ids[np.asarray(batch.thought_mask[0, 0])[: len(ids)]])
        action = tok.decode(ids[np.asarray(batch.action_mask[0, 0])[: len(ids)]])
        assert (thought + action).startswith(SCRIPTED_TEXT)
        assert replies.ACTION_MARKER in action and replies.ACTION_MARKER not in thought
    # Rewards and flags equal stepping the env with "Left" over both calls.
    actions = np.full((2 * turns, ENVS), left, np.int32)
    reference = _step_reference(setup, state.env_state.env_state, actions)
    joined = lambda name: np.concatenate([getattr(batch_1, name), getattr(batch_2, name)])
    np.testing.assert_allclose(joined("reward"), np.stack(reference["reward"]), atol=1e-6)
    np.testing.assert_array_equal(joined("terminated"), np.stack(reference["terminated"]))
    np.testing.assert_array_equal(joined("truncated"), np.stack(reference["truncated"]))
    # The episodes span the two calls: truncated at step MAX_STEPS, i.e. turn 0 of call 2.
    np.testing.assert_array_equal(batch_2.truncated[0], True)
    np.testing.assert_array_equal(metrics_2["episode_length"][0], MAX_STEPS)
    np.testing.assert_allclose(
        metrics_2["episode_return"][0], np.sum(np.stack(reference["reward"])[:MAX_STEPS], 0)
    )
    assert not np.asarray(metrics_1["returned_episode"]).any()
    # The second call starts from the first one's observation; values bootstrap correctly.
    np.testing.assert_array_equal(batch_2.prompt_ids[0], _prompts(setup, state_1.obs)[0])
    _check_values(setup, value_fn, batch_1, state.env_state.env_state, state_1.obs)
    _check_values(setup, value_fn, batch_2, state_1.env_state.env_state, state_2.obs)
