"""The host-driven rollout against the compiled one on Sokoban: same seed, identical batches.

The host side steps `PySokoban`s (the independent pure-Python twin) behind a plain
`HostEnvAdapter`: env i's seed is the bits of `split(key, n)[i]`, the key JAX env i gets, and the
twin starts level `seed % N` where `Sokoban._draw_start` takes `bits(key) % N`. Everything else (prompts, model, sampling, parsing, rewards, flags, values,
episode statistics, prompt fields) must then agree field by field.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.host import HostEnvAdapter
from gtr_turbo_jax.envs.sokoban import PySokoban
from gtr_turbo_jax.envs.wrappers import EpisodeStatistics
from gtr_turbo_jax.models import LoRAConfig, ValueHead, from_pretrained, get_config
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.rollout.evaluate import Evaluator
from gtr_turbo_jax.rollout.host import _episode_statistics, make_host_rollout
from gtr_turbo_jax.rollout.multiturn import EPISODE_METRICS, make_rollout
from gtr_turbo_jax.rollout.sampler import SampleOutput, SamplingConfig
from gtr_turbo_jax.text.image import ImageConfig, num_image_tokens
from gtr_turbo_jax.text.parse import make_reply_spec
from gtr_turbo_jax.text.prompts import make_template
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path
from gtr_turbo_jax.train.state import ModelDefs, split_model

ENVS, MAX_STEPS, REPLY_LEN, TILE = 3, 3, 16, 14
NUM_LEVELS = 8
FORMAT = (0.5, -2.0)
IMAGE_CONFIG = ImageConfig()
# Thoughts, then the action: "Left" for env 0, no single legal action for the others (random).
SCRIPTED = ('{"thoughts": "go left", "action": "Left"}', '{"thoughts": "hmm", "action": "?"}')


@pytest.fixture(scope="module")
def text():
    """The env, its prompt template (with a 2-action history) and reply spec: no model."""
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    env, params = envs.make("sokoban", tile_size=TILE, max_steps_in_episode=MAX_STEPS)
    params = params.replace(levels=jax.tree.map(lambda x: x[:NUM_LEVELS], params.levels))
    height, width, _ = env.image_shape
    image_tokens = num_image_tokens(height, width, IMAGE_CONFIG)
    template = make_template(
        "sokoban", env, tokenizer, image_tokens, history_length=2, style="brief"
    )
    spec = make_reply_spec(tokenizer, env.action_names)
    return dict(tokenizer=tokenizer, env=env, params=params, template=template, spec=spec)


def _twin_adapter(levels: np.ndarray) -> HostEnvAdapter:
    """PySokobans behind the plain adapter: env i's seed is the bits of the key JAX env i gets,
    and PySokoban starts level `seed % N` as Sokoban draws `bits(key) % N`."""
    twin = lambda: PySokoban(bank=levels, max_steps_in_episode=MAX_STEPS, tile_size=TILE)
    return HostEnvAdapter(twin, ENVS)


@pytest.fixture(scope="module")
def setup(text, tmp_path_factory):
    tokenizer, env, params = text["tokenizer"], text["env"], text["params"]
    template, spec = text["template"], text["spec"]
    levels = np.asarray(params.levels.grids)
    checkpoint = write_random_checkpoint(tmp_path_factory.mktemp("host"), get_config("micro"), 3)
    model = from_pretrained(checkpoint, lora=LoRAConfig(rank=4, alpha=8.0, dropout=0.0))
    graphdef, policy, base = split_model(model)
    value_graphdef, value_head = nnx.split(
        ValueHead(model.config.text.hidden_size, widths=(16,), rngs=nnx.Rngs(1)), nnx.Param
    )
    defs = ModelDefs(graphdef, value_graphdef)
    sampling = SamplingConfig(
        max_new_tokens=REPLY_LEN, top_k=50, repetition_penalty=1.2, eos_ids=(2,)
    )

    rows = []
    for text in SCRIPTED:
        ids = tokenizer.encode(text + "<|im_end|>")[:REPLY_LEN]
        rows.append(np.pad(ids, (0, REPLY_LEN - len(ids))))
    rows += [rows[-1]] * (ENVS - len(rows))
    scripted_ids = np.asarray(rows, np.int32)

    def scripted(prompt_ids, prompt_mask, key):
        del prompt_ids, prompt_mask, key
        mask = scripted_ids != 0
        zeros = jnp.zeros(mask.shape, jnp.float32)
        return SampleOutput(jnp.asarray(scripted_ids), jnp.asarray(mask), zeros, zeros, mask.sum(1))

    def both(**options):
        common = (template, spec, IMAGE_CONFIG, sampling, defs)
        compiled = make_rollout(env, params, *common, format_reward=FORMAT, **options)
        host = make_host_rollout(_twin_adapter(levels), *common, format_reward=FORMAT, **options)
        return compiled, host

    return dict(
        weights=(base, policy, value_head), both=both, scripted=scripted, env=env, defs=defs
    )


def _assert_identical(compiled, host):
    """Every leaf of (Batch, metrics) equal, by name: ids, masks, flags, actions, rewards and
    fields exactly; model outputs up to float32 rounding (a value forward fused differently in
    the scan and alone differs in the last bit)."""
    (c_batch, c_metrics), (h_batch, h_metrics) = compiled, host
    assert c_batch.image_grid_thw == h_batch.image_grid_thw
    c_leaves = jax.tree_util.tree_leaves_with_path((c_batch, c_metrics))
    h_leaves = jax.tree_util.tree_leaves_with_path((h_batch, h_metrics))
    assert [p for p, _ in c_leaves] == [p for p, _ in h_leaves]
    for (path, c), (_, h) in zip(c_leaves, h_leaves):
        name = jax.tree_util.keystr(path)
        assert c.shape == h.shape and c.dtype == h.dtype, name
        if name.endswith(("value", "sampler_logp")):
            np.testing.assert_allclose(c, h, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(np.asarray(c), np.asarray(h), err_msg=name)


def _run_both(setup, compiled, host, key, calls):
    """`calls` rollout calls of the given turn counts from the same key; returns the outputs."""
    c_state, h_state = compiled.init(key, ENVS), host.init(key, ENVS)
    outputs = []
    for turns in calls:
        c_state, c_batch, c_metrics = compiled.run(c_state, *setup["weights"], num_turns=turns)
        h_state, h_batch, h_metrics = host.run(h_state, *setup["weights"], num_turns=turns)
        _assert_identical((c_batch, c_metrics), (h_batch, h_metrics))
        for name, value in c_state.obs.items():
            np.testing.assert_array_equal(np.asarray(value), h_state.obs[name], err_msg=name)
        np.testing.assert_array_equal(c_state.history, h_state.history)
        outputs.append((c_batch, c_metrics))
    return outputs


@pytest.mark.slow  # compiles the decode loop twice (the scan's and the host's): ~40 s on 2 cores
def test_sampled_host_rollout_equals_the_compiled_one(setup):
    compiled, host = setup["both"]()
    ((batch, metrics),) = _run_both(setup, compiled, host, jax.random.key(4), [MAX_STEPS + 1])
    # The run covered what matters: episode ends (the step limit) and more than one level.
    np.testing.assert_array_equal(batch.truncated[MAX_STEPS - 1], True)
    assert np.asarray(metrics["returned_episode"]).sum() >= ENVS
    assert len(np.unique(np.asarray(metrics["fields"]["grid"][0]), axis=0)) > 1
    assert np.asarray(batch.response_mask).sum(-1).min() > 1  # sampled replies, not all EOS


@pytest.mark.slow  # three model compilations (scan, act, values): ~35 s on 2 cores
def test_scripted_host_rollout_equals_the_compiled_one_across_calls(setup):
    compiled, host = setup["both"](reply_fn=setup["scripted"])
    outputs = _run_both(setup, compiled, host, jax.random.key(5), [2, 2])
    (batch_1, _), (batch_2, metrics_2) = outputs
    left = setup["env"].action_names.index("Left")
    np.testing.assert_array_equal(batch_1.action[:, 0], left)
    np.testing.assert_array_equal(batch_1.valid, True)  # both replies are valid JSON
    # Episodes span the calls: truncated at step 3, turn 0 of the second call.
    np.testing.assert_array_equal(batch_2.truncated[0], True)
    np.testing.assert_array_equal(metrics_2["episode_length"][0], MAX_STEPS)
    # One compilation per jitted piece, none per turn or call.
    assert compiled.run.compiled._cache_size() == 1
    assert host.run.act._cache_size() == 1
    assert host.run.values._cache_size() == 1
    assert host.run.finish._cache_size() == 1


def test_host_episode_statistics_equal_the_wrapper():
    """The host's running returns and lengths against `EpisodeStatistics` over a JAX env."""
    env, params = envs.make("sokoban", tile_size=TILE, max_steps_in_episode=MAX_STEPS)
    stats_env = EpisodeStatistics(env)
    keys = jax.random.split(jax.random.key(0), ENVS)
    _, state = jax.vmap(stats_env.reset, (0, None))(keys, params)
    step = jax.jit(jax.vmap(stats_env.step, (0, 0, 0, None)))
    episode_return, episode_length = np.zeros(ENVS, np.float32), np.zeros(ENVS, np.int32)
    actions = np.random.default_rng(0).integers(0, 4, (2 * MAX_STEPS + 1, ENVS))
    for turn_actions in actions:
        _, state, reward, terminated, truncated, info = step(keys, state, turn_actions, params)
        done = np.asarray(terminated | truncated)
        ours, episode_return, episode_length = _episode_statistics(
            episode_return, episode_length, np.asarray(reward), done
        )
        for name in EPISODE_METRICS:
            np.testing.assert_array_equal(ours[name], np.asarray(info[name]), err_msg=name)
        np.testing.assert_array_equal(episode_return, state.episode_return)
        np.testing.assert_array_equal(episode_length, state.episode_length)


def test_host_rollout_rejects_bad_arguments(text):
    levels = np.asarray(text["params"].levels.grids)
    sampling = SamplingConfig(max_new_tokens=REPLY_LEN)
    common = (text["template"], text["spec"], IMAGE_CONFIG, sampling, None)  # no model needed
    host = make_host_rollout(_twin_adapter(levels), *common)
    assert host.image_grid == (1, 6, 6)  # read off the Python env's image (84 x 84 pixels)
    with pytest.raises(ValueError, match="num_envs=2 but the adapter holds 3 envs"):
        host.init(jax.random.key(0), 2)
    state = host.init(jax.random.key(0), ENVS)
    with pytest.raises(ValueError, match="num_turns=0: need an int >= 1"):
        host.run(state, None, None, None, num_turns=0)
    no_image = make_host_rollout(lambda: PySokoban(bank=levels, render_image=False), *common)
    with pytest.raises(ValueError, match="needs an 'image'"):  # a PythonEnv: seen at the reset
        no_image.init(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="differ from the env's"):
        make_host_rollout(
            lambda: PySokoban(bank=levels),
            *common[:1],
            text["spec"].replace(action_names=(b"Up", b"Down")),
            *common[2:],
        )
    with pytest.raises(ValueError, match="format_reward=.*need"):
        make_host_rollout(lambda: PySokoban(bank=levels), *common, format_reward=(1.0,))


# ~20 s: three evaluations compiled
@pytest.mark.slow
def test_the_host_evaluator_plays_rounds_on_envs_it_builds_once(text, setup):
    """`envs_at_once`: rounds of at most that many envs, round r from `fold_in(key, r)`; the envs
    are built once per round size (a Python env may be a whole simulator) and reused by every
    later evaluation; rounds as large as the evaluation are the single batch from `key`."""
    levels = np.asarray(text["params"].levels.grids)
    built = []

    def factory():
        built.append(1)
        return PySokoban(bank=levels, max_steps_in_episode=MAX_STEPS, tile_size=TILE)

    sampling = SamplingConfig(max_new_tokens=REPLY_LEN, top_k=50, eos_ids=(2,))
    common = (text["template"], text["spec"], IMAGE_CONFIG, sampling, setup["defs"])
    rollout = make_host_rollout(factory, *common)
    evaluator = Evaluator("sokoban", rollout, text["tokenizer"], 5, MAX_STEPS, 1, envs_at_once=2)
    key = jax.random.key(3)
    first = evaluator(*setup["weights"], key)
    assert len(built) == 1 + 2 + 1  # the probe's env, a round of 2 (used twice) and one of 1
    second = evaluator(*setup["weights"], key)
    assert len(built) == 4  # nothing rebuilt
    played = lambda result: [(e.actions, e.rewards, e.replies) for e in result.episodes]
    assert len(first.episodes) == 5 and played(first) == played(second)
    assert first.episodes[0].frames and not first.episodes[1].frames  # record=1: the first only
    alone = dataclasses.replace(evaluator, num_episodes=2, record=0, envs_at_once=None)
    assert played(first)[2:4] == played(alone(*setup["weights"], jax.random.fold_in(key, 1)))
    whole = dataclasses.replace(evaluator, envs_at_once=5)(*setup["weights"], key)
    single = dataclasses.replace(evaluator, envs_at_once=None)(*setup["weights"], key)
    assert played(whole) == played(single)
    with pytest.raises(ValueError, match="envs_at_once=0: need an int >= 1 or None"):
        dataclasses.replace(evaluator, envs_at_once=0)
