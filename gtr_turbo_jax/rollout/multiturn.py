"""The compiled multi-turn rollout: one `jax.jit` that scans over turns for a batch of envs.

Each turn: the carried observation -> prompt (`text.prompts.assemble`) and image patches
(`text.image.preprocess_images`) -> one prefill of the policy (base + LoRA) that also gives the
value (`ValueHead` on the last prompt token's hidden state) -> the KV-cache decode loop of the
sampler (`rollout.sampler.decode`) -> `text.parse.parse_reply_ids` -> `env.step` (gymnax automatic
reset, wrapped in `EpisodeStatistics`) -> one row of the `Batch`.

`RolloutState` (env states, last observations, action history, PRNG key) is returned and passed back
in, so episodes span rollouts (and updates). The observation is carried, as in PureJaxRL, so a turn
never re-renders what the previous step already produced.

`next_value[t]` (the value of the observation reached by step t, before any automatic reset):
- the episode continues: the next turn's `value` (the same observation, the same parameters);
- truncated: one prefill-only forward of the value head on `info["final_observation"]`, under a
  `lax.cond` that runs only in turns where some env truncated;
- the rollout's last turn: one prefill-only forward on the carried observation after the scan;
- terminated (and not truncated): 0 (`rl.gae` does not bootstrap there).
All values come from the same (policy, value head) parameters as the turn's `value`.

Key schedule (per turn): `key -> (key, sample_key, parse_key, step_key)` by `jax.random.split`;
the parse and step keys are split once more per env. The parse key only matters for replies with no
single legal action name (a uniform random action, as `parse_reply_ids` documents).

A scripted policy can replace the decode loop (`reply_fn`): it receives the prompts and a key and
returns a `SampleOutput` of reply tokens, so the env and parse plumbing can be checked with fixed
replies; the prefill (and so the value) still runs on the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx, struct

from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.envs.wrappers import EpisodeStatistics
from gtr_turbo_jax.models import last_prompt_hidden
from gtr_turbo_jax.rollout import logits_processors as lp
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.rollout.constraint import ActionConstraint
from gtr_turbo_jax.rollout.sampler import Prefilled, SampleOutput, SamplingConfig, decode
from gtr_turbo_jax.text.image import ImageConfig, image_grid_thw, preprocess_images
from gtr_turbo_jax.text.parse import ReplySpec, parse_reply_ids
from gtr_turbo_jax.text.prompts import PromptTemplate, assemble
from gtr_turbo_jax.train.state import ModelDefs

# (prompt_ids [E, P], prompt_mask [E, P], key) -> replies [E, max_new_tokens]
ReplyFn = Callable[[jax.Array, jax.Array, jax.Array], SampleOutput]
EPISODE_METRICS = ("returned_episode", "episode_return", "episode_length", "success")


@struct.dataclass
class RolloutState:
    """What carries from one rollout call to the next (leading axis: envs)."""

    env_state: Any  # `EpisodeStatisticsState` of every env
    obs: dict[str, jax.Array]  # the observation each env shows now (`image` and prompt fields)
    history: jax.Array  # int32[E, K]: the last K actions, oldest first, -1 for none (K may be 0)
    key: jax.Array

    @property
    def num_envs(self) -> int:
        return self.history.shape[0]


class Rollout(NamedTuple):
    """`init(key, num_envs) -> RolloutState`; `run(rollout_state, base, policy, value_head,
    num_turns) -> (rollout_state, Batch, episode_metrics)` (jitted, `num_turns` static)."""

    init: Callable[[jax.Array, int], RolloutState]
    run: Callable[..., tuple[RolloutState, Batch, dict[str, jax.Array]]]
    image_grid: tuple[int, int, int]


def init_rollout_state(
    env: EpisodeStatistics, env_params: Any, key: jax.Array, num_envs: int, history_length: int
) -> RolloutState:
    """Resets `num_envs` envs; the rollout's own key is split off `key` first."""
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs={num_envs!r}: need an int >= 1")
    key, reset_key = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset, (0, None))(
        jax.random.split(reset_key, num_envs), env_params
    )
    history = jnp.full((num_envs, history_length), -1, jnp.int32)
    return RolloutState(env_state=env_state, obs=obs, history=history, key=key)


def _prompt_fields(obs: Mapping[str, jax.Array], history: jax.Array, history_length: int) -> dict:
    fields = {name: value for name, value in obs.items() if name != "image"}
    if history_length:
        fields["history"] = history
    return fields


def make_rollout(
    env: VisualEnv,
    env_params: Any,
    template: PromptTemplate,
    spec: ReplySpec,
    image_config: ImageConfig,
    sampling: SamplingConfig,
    defs: ModelDefs,
    *,
    format_reward: tuple[float, float] = (0.0, 0.0),
    constraint: ActionConstraint | None = None,
    reply_fn: ReplyFn | None = None,
) -> Rollout:
    """Builds the compiled rollout of `env` (a `VisualEnv`, e.g. `envs.make(name)[0]`).

    format_reward: (for a valid reply, for an invalid one), e.g. (3.0, -2.0) for Points24 SFT.
    constraint: the optional legal-action automaton of the sampler. reply_fn: a scripted policy in
    place of the decode loop (see the module docstring).
    """
    if not isinstance(env, VisualEnv):
        raise ValueError(f"env={type(env).__name__}: need a VisualEnv (from envs.make)")
    if tuple(spec.action_names) != tuple(n.encode() for n in env.action_names):
        raise ValueError(
            f"spec.action_names={spec.action_names!r} differ from the env's {env.action_names!r}: "
            "build the spec with make_reply_spec(tokenizer, env.action_names)"
        )
    if len(format_reward) != 2:
        raise ValueError(f"format_reward={format_reward!r}: need (valid_value, invalid_value)")
    height, width, _ = env.image_shape
    grid = image_grid_thw(height, width, image_config)
    history_length = template.history_length
    stats_env = EpisodeStatistics(env)
    valid_reward, invalid_reward = (float(x) for x in format_reward)
    width_reply = sampling.max_new_tokens

    def observe(obs, history):
        """Prompt ids/mask [E, P] and image patches [E, N, D] of the observations."""
        fields = _prompt_fields(obs, history, history_length)
        prompt_ids, prompt_mask = jax.vmap(assemble, (None, 0))(template, fields)
        patches = preprocess_images(obs["image"], image_config).pixel_values
        return prompt_ids, prompt_mask.astype(jnp.int32), patches

    def values_only(model, value_module, obs, history):
        """The value of each observation: a prefill-only forward, no LM head, no cache."""
        prompt_ids, prompt_mask, patches = observe(obs, history)
        out = model.forward(
            prompt_ids,
            prompt_mask,
            image_patches=patches,
            image_grid_thw=grid,
            return_logits=False,
        )
        return value_module(last_prompt_hidden(out.hidden_states, prompt_mask))

    def run(rollout_state, base, policy, value_head, env_params, spec, num_turns):
        chex.assert_rank(rollout_state.history, 2)
        num_envs = rollout_state.num_envs
        params = nnx.merge_state(policy, base)

        def modules():  # merged inside each traced body (NNX modules do not cross scan bodies)
            return nnx.merge(defs.model, params), nnx.merge(defs.value_head, value_head)

        def turn(state: RolloutState, _):
            model, value_module = modules()
            key, sample_key, parse_key, step_key = jax.random.split(state.key, 4)
            prompt_ids, prompt_mask, patches = observe(state.obs, state.history)
            prompt_len = prompt_ids.shape[1]
            cache = model.init_cache(num_envs, prompt_len + width_reply - 1)
            out = model.forward(
                prompt_ids,
                prompt_mask,
                image_patches=patches,
                image_grid_thw=grid,
                cache=cache,
                return_logits=False,
            )
            value = value_module(last_prompt_hidden(out.hidden_states, prompt_mask))
            if reply_fn is None:
                logits = model.logits(out.hidden_states[:, -1])  # left padding: last prompt token
                seen = None
                if sampling.repetition_penalty != 1.0:
                    seen = lp.seen_tokens(prompt_ids, prompt_mask, logits.shape[-1])
                prefilled = Prefilled(cache=out.cache, logits=logits, seen=seen)
                reply = decode(defs.model, params, prefilled, sample_key, sampling, constraint)[0]
            else:
                reply = reply_fn(prompt_ids, prompt_mask, sample_key)
                chex.assert_shape([reply.tokens, reply.mask], (num_envs, width_reply))
            parsed = jax.vmap(parse_reply_ids, (0, 0, None, 0))(
                reply.tokens, reply.mask, spec, jax.random.split(parse_key, num_envs)
            )
            obs, env_state, reward, terminated, truncated, info = jax.vmap(
                stats_env.step, (0, 0, 0, None)
            )(jax.random.split(step_key, num_envs), state.env_state, parsed.action, env_params)
            done = terminated | truncated
            history = state.history
            if history_length:
                history = jnp.concatenate([history[:, 1:], parsed.action[:, None]], axis=1)
            # The value of the final observation, where an episode was cut short (rare: a cond).
            truncation_value = jax.lax.cond(
                jnp.any(truncated),
                lambda: values_only(*modules(), info["final_observation"], history),
                lambda: jnp.zeros((num_envs,), jnp.float32),
            )
            history = jnp.where(done[:, None], -1, history)
            row = dict(
                prompt_ids=prompt_ids,
                prompt_mask=prompt_mask,
                image_patches=patches,
                response_ids=reply.tokens,
                response_mask=reply.mask.astype(bool),
                thought_mask=parsed.thought_mask,
                action_mask=parsed.action_mask,
                valid=parsed.valid,
                action=parsed.action,
                sampler_logp=reply.logp_raw,
                value=value,
                reward=reward.astype(jnp.float32),
                terminated=terminated,
                truncated=truncated,
                truncation_value=truncation_value,
                **{name: info[name] for name in EPISODE_METRICS},
            )
            next_state = RolloutState(env_state=env_state, obs=obs, history=history, key=key)
            return next_state, row

        rollout_state, rows = jax.lax.scan(turn, rollout_state, length=num_turns)
        bootstrap = values_only(*modules(), rollout_state.obs, rollout_state.history)
        following = jnp.concatenate([rows["value"][1:], bootstrap[None]], axis=0)
        next_value = jnp.where(
            rows["truncated"],
            rows["truncation_value"],
            jnp.where(rows["terminated"], 0.0, following),
        )
        format_value = jnp.where(rows["valid"], valid_reward, invalid_reward)
        batch = Batch(
            prompt_ids=rows["prompt_ids"],
            prompt_mask=rows["prompt_mask"],
            image_patches=rows["image_patches"],
            response_ids=rows["response_ids"],
            response_mask=rows["response_mask"],
            thought_mask=rows["thought_mask"],
            action_mask=rows["action_mask"],
            valid=rows["valid"],
            action=rows["action"],
            sampler_logp=rows["sampler_logp"],
            value=rows["value"],
            reward=rows["reward"],
            terminated=rows["terminated"],
            truncated=rows["truncated"],
            next_value=next_value,
            format_reward=format_value.astype(jnp.float32),
            teacher_ids=jnp.zeros((num_turns, num_envs, 1), jnp.int32),
            teacher_label_mask=jnp.zeros((num_turns, num_envs, 1), bool),
            image_grid_thw=grid,
        )
        metrics = {name: rows[name] for name in EPISODE_METRICS}
        return rollout_state, batch, metrics

    compiled = jax.jit(run, static_argnames=("num_turns",))

    def rollout(rollout_state, base, policy, value_head, num_turns: int):
        if not isinstance(num_turns, int) or num_turns < 1:
            raise ValueError(f"num_turns={num_turns!r}: need an int >= 1")
        return compiled(rollout_state, base, policy, value_head, env_params, spec, num_turns)

    rollout.compiled = compiled  # for `_cache_size()` checks

    def init(key: jax.Array, num_envs: int) -> RolloutState:
        return init_rollout_state(stats_env, env_params, key, num_envs, history_length)

    return Rollout(init=init, run=rollout, image_grid=grid)


__all__ = [
    "EPISODE_METRICS",
    "ReplyFn",
    "Rollout",
    "RolloutState",
    "init_rollout_state",
    "make_rollout",
]
