"""The compiled multi-turn rollout: one `jax.jit` that scans over turns for a batch of envs.

Each turn: the carried observation -> prompt (`text.prompts.assemble`) and image patches
(`text.image.preprocess_images`) -> one prefill of the policy (base + LoRA) that also gives the
value (`ValueHead` on the last prompt token's hidden state) -> the KV-cache decode loop of the
sampler (`rollout.sampler.decode`) -> `text.parse.parse_reply_ids` -> `env.step` (gymnax automatic
reset, wrapped in `EpisodeStatistics`) -> one row of the `Batch`. A row keeps the observation's
uint8 image; the Batch's float32 patches of all turns are made after the scan (`stacked_patches`).

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

The model side of a turn (`make_policy_turn`), a turn's record (`turn_row`) and the Batch assembly
(`finish_rollout`) are shared with the host-driven rollout (`rollout/host.py`), which steps Python
envs between jitted policy turns and so gives the same Batch for the same keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.envs.wrappers import EpisodeStatistics
from gtr_turbo_jax.models import last_prompt_hidden
from gtr_turbo_jax.models.defs import ModelDefs
from gtr_turbo_jax.rollout import logits_processors as lp
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.rollout.constraint import ActionConstraint
from gtr_turbo_jax.rollout.sampler import Prefilled, SampleOutput, SamplingConfig, decode
from gtr_turbo_jax.text.image import ImageConfig, image_grid_thw, preprocess_images
from gtr_turbo_jax.text.parse import ParsedIds, ReplySpec, parse_reply_ids
from gtr_turbo_jax.text.prompts import PromptTemplate, assemble

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


def grouped_reset(
    env: EpisodeStatistics, env_params: Any, rollout_state: RolloutState, group_size: int
) -> RolloutState:
    """Fresh episodes for every env, `group_size` consecutive envs sharing one reset key (so one
    level and start); the rollout's key moves on by one split."""
    num_envs = rollout_state.num_envs
    if num_envs % group_size:
        raise ValueError(f"{num_envs} envs do not split into groups of {group_size}")
    key, reset_key = jax.random.split(rollout_state.key)
    keys = jnp.repeat(jax.random.split(reset_key, num_envs // group_size), group_size, axis=0)
    obs, env_state = jax.vmap(env.reset, (0, None))(keys, env_params)
    history = jnp.full_like(rollout_state.history, -1)
    return RolloutState(env_state=env_state, obs=obs, history=history, key=key)


def observation_fields(obs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The observation's prompt fields: everything but the image."""
    return {name: value for name, value in obs.items() if name != "image"}


def push_history(history: jax.Array, action: jax.Array) -> jax.Array:
    """`history [E, K]` with `action [E]` appended as the newest entry (oldest dropped); numpy
    in, numpy out (the host rollout keeps its history on the host)."""
    if history.shape[1] == 0:
        return history
    xp = np if isinstance(history, np.ndarray) else jnp
    return xp.concatenate([history[:, 1:], action[:, None].astype(history.dtype)], axis=1)


class Acted(NamedTuple):
    """The policy's half of one turn for a batch of envs (leading axis: envs)."""

    prompt_ids: jax.Array  # int32[E, P], left padding
    prompt_mask: jax.Array  # int32[E, P]
    value: jax.Array  # float32[E]: the value of the observation
    reply: SampleOutput  # [E, max_new_tokens]
    parsed: ParsedIds  # batched: the action each env executes


class PolicyTurn(NamedTuple):
    """The model side of a turn, traceable, shared by the compiled and the host-driven rollout.

    params: the merged model state (`nnx.merge_state(policy, base)`); value_head: its state.
    - `observe(obs, history) -> (prompt_ids, prompt_mask, image_patches)`;
    - `values(params, value_head, obs, history) -> float32[E]`: a prefill-only forward, no LM
      head, no cache;
    - `act(params, value_head, obs, history, spec, key) -> (key, step_key, Acted)`: prompt ->
      prefill + value -> decode (or `reply_fn`) -> parse; `key` is the rollout's key, split by
      the schedule of the module docstring, `step_key` is the env step's;
    - `settle(params, value_head, history, action, terminated, truncated, final_obs) ->
      (history, truncation_value)`: after the env step, the history the next turn sees (cleared
      where an episode ended) and the value of `final_obs` where an episode was truncated (0
      everywhere when `final_obs` is None).
    """

    observe: Callable[..., tuple[jax.Array, jax.Array, jax.Array]]
    values: Callable[..., jax.Array]
    act: Callable[..., tuple[jax.Array, jax.Array, Acted]]
    settle: Callable[..., tuple[jax.Array, jax.Array]]


def make_policy_turn(
    template: PromptTemplate,
    image_config: ImageConfig,
    sampling: SamplingConfig,
    defs: ModelDefs,
    grid: tuple[int, int, int],
    *,
    constraint: ActionConstraint | None = None,
    reply_fn: ReplyFn | None = None,
) -> PolicyTurn:
    """The `PolicyTurn` of a template, sampling settings and model (see `make_rollout`)."""
    history_length = template.history_length
    width_reply = sampling.max_new_tokens

    def modules(params, value_head):
        # Merged inside each traced body: NNX modules do not cross scan / cond bodies.
        return nnx.merge(defs.model, params), nnx.merge(defs.value_head, value_head)

    def observe(obs, history):
        fields = observation_fields(obs)
        if history_length:
            fields["history"] = history
        prompt_ids, prompt_mask = jax.vmap(assemble, (None, 0))(template, fields)
        patches = preprocess_images(obs["image"], image_config).pixel_values
        return prompt_ids, prompt_mask.astype(jnp.int32), patches

    def prompt_pass(model, prompt_ids, prompt_mask, patches, max_length):
        # The lean prefill (the prompt attends to itself only, causal chunks, row by row on
        # CPU), as the sampler's: the uncached forward and a forward into an empty cache give
        # the same hidden states (to float rounding) 10-50% slower on CPU. A value needs no
        # cache: `max_length` = the prompt's, and XLA drops the unused cache writes.
        return model.prefill(
            prompt_ids,
            prompt_mask,
            max_length,
            image_patches=patches,
            image_grid_thw=grid,
            return_logits=False,
        )

    def values(params, value_head, obs, history):
        model, value_module = modules(params, value_head)
        prompt_ids, prompt_mask, patches = observe(obs, history)
        out = prompt_pass(model, prompt_ids, prompt_mask, patches, prompt_ids.shape[1])
        return value_module(last_prompt_hidden(out.hidden_states, prompt_mask))

    def act(params, value_head, obs, history, spec, key):
        chex.assert_rank(history, 2)
        num_envs = history.shape[0]
        model, value_module = modules(params, value_head)
        key, sample_key, parse_key, step_key = jax.random.split(key, 4)
        prompt_ids, prompt_mask, patches = observe(obs, history)
        # The last sampled token is never fed back: the reply needs width_reply - 1 slots.
        out = prompt_pass(
            model, prompt_ids, prompt_mask, patches, prompt_ids.shape[1] + width_reply - 1
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
        return key, step_key, Acted(prompt_ids, prompt_mask, value, reply, parsed)

    def settle(params, value_head, history, action, terminated, truncated, final_obs):
        history = push_history(history, action)
        # The value of the final observation, where an episode was cut short (rare: a cond).
        truncation_value = jnp.zeros(truncated.shape, jnp.float32)
        if final_obs is not None:
            truncation_value = jax.lax.cond(
                jnp.any(truncated),
                lambda: values(params, value_head, final_obs, history),
                lambda: truncation_value,
            )
        history = jnp.where((terminated | truncated)[:, None], -1, history)
        return history, truncation_value

    return PolicyTurn(observe=observe, values=values, act=act, settle=settle)


def turn_row(
    acted: Acted,
    obs: Mapping[str, jax.Array],
    reward: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    truncation_value: jax.Array,
    episode: Mapping[str, jax.Array],
) -> dict[str, Any]:
    """One turn's record (`[E, ...]` leaves); `finish_rollout` stacks them into a `Batch`.
    `obs` is the observation the policy acted on; `episode` holds the `EPISODE_METRICS` of the
    step (`EpisodeStatistics`' info).

    The row keeps the observation's uint8 image, not its float32 patches (8x the bytes: 4-byte
    floats, each frame twice): `finish_rollout` makes the patches of every turn in one pass, so
    the turns neither zero-fill nor write a `[T, E, N, patch_dim]` float buffer."""
    return dict(
        prompt_ids=acted.prompt_ids,
        prompt_mask=acted.prompt_mask,
        image=obs["image"],
        response_ids=acted.reply.tokens,
        response_mask=acted.reply.mask.astype(bool),
        thought_mask=acted.parsed.thought_mask,
        action_mask=acted.parsed.action_mask,
        valid=acted.parsed.valid,
        action=acted.parsed.action,
        sampler_logp=acted.reply.logp_raw,
        sampler_logp_unit=_or_zeros(acted.reply.logp_unit, acted.reply.logp_raw),
        sampler_entropy=_or_zeros(acted.reply.entropy, acted.reply.logp_raw),
        value=acted.value,
        reward=reward.astype(jnp.float32),
        terminated=terminated,
        truncated=truncated,
        truncation_value=truncation_value,
        fields=observation_fields(obs),
        **{name: episode[name] for name in EPISODE_METRICS},
    )


def _or_zeros(values: jax.Array | None, like: jax.Array) -> jax.Array:
    return jnp.zeros_like(like) if values is None else values


def stacked_patches(images: jax.Array, image_config: ImageConfig) -> jax.Array:
    """uint8[T, E, H, W, 3] -> the model's batched patches `[T, E, N, patch_dim]`: the
    `preprocess_images` the turns ran (elementwise: equal up to how XLA fuses the float math)."""
    turns, envs = images.shape[:2]
    flat = preprocess_images(images.reshape(turns * envs, *images.shape[2:]), image_config)
    return flat.pixel_values.reshape(turns, envs, *flat.pixel_values.shape[1:])


def finish_rollout(
    rows: Mapping[str, Any],
    bootstrap: jax.Array,
    format_reward: tuple[float, float],
    grid: tuple[int, int, int],
    image_config: ImageConfig,
) -> tuple[Batch, dict[str, Any]]:
    """`(Batch, episode_metrics)` from the stacked rows `[T, E, ...]` and the value of the
    observation after the last turn (`bootstrap [E]`); see the module docstring for `next_value`."""
    num_turns, num_envs = rows["reward"].shape
    following = jnp.concatenate([rows["value"][1:], bootstrap[None]], axis=0)
    next_value = jnp.where(
        rows["truncated"],
        rows["truncation_value"],
        jnp.where(rows["terminated"], 0.0, following),
    )
    valid_reward, invalid_reward = format_reward
    format_value = jnp.where(rows["valid"], valid_reward, invalid_reward)
    batch = Batch(
        prompt_ids=rows["prompt_ids"],
        prompt_mask=rows["prompt_mask"],
        image_patches=stacked_patches(rows["image"], image_config),
        response_ids=rows["response_ids"],
        response_mask=rows["response_mask"],
        thought_mask=rows["thought_mask"],
        action_mask=rows["action_mask"],
        valid=rows["valid"],
        action=rows["action"],
        sampler_logp=rows["sampler_logp"],
        sampler_logp_unit=rows["sampler_logp_unit"],
        sampler_entropy=rows["sampler_entropy"],
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
    metrics["fields"] = rows["fields"]
    return batch, metrics


# Argument checks shared with the host-driven rollout (one clear line per user mistake).


def check_reply_spec(spec: ReplySpec, action_names: Sequence[str]) -> None:
    if tuple(spec.action_names) != tuple(n.encode() for n in action_names):
        raise ValueError(
            f"spec.action_names={spec.action_names!r} differ from the env's "
            f"{tuple(action_names)!r}: build the spec with make_reply_spec(tokenizer, "
            "env.action_names)"
        )


def check_format_reward(format_reward: tuple[float, float]) -> tuple[float, float]:
    if len(format_reward) != 2:
        raise ValueError(f"format_reward={format_reward!r}: need (valid_value, invalid_value)")
    return float(format_reward[0]), float(format_reward[1])


def check_num_turns(num_turns: Any) -> None:
    if not isinstance(num_turns, int) or num_turns < 1:
        raise ValueError(f"num_turns={num_turns!r}: need an int >= 1")


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
    next_values: bool = True,
    group_size: int = 1,
) -> Rollout:
    """Builds the compiled rollout of `env` (a `VisualEnv`, e.g. `envs.make(name)[0]`).

    format_reward: (for a valid reply, for an invalid one), e.g. (3.0, -2.0) for Points24 SFT.
    constraint: the optional legal-action automaton of the sampler. reply_fn: a scripted policy in
    place of the decode loop (see the module docstring). next_values=False skips the value
    forwards of the final observations of truncated episodes and of the observation after the
    last turn (`next_value` is then 0 there): for evaluation, which needs no values.
    group_size > 1 (group advantages, `rl.group_advantages`): every call starts fresh episodes,
    envs `[g * group_size, (g + 1) * group_size)` on one level from the same start (one reset
    key per group); the carried env states are dropped.
    The episode metrics are `EPISODE_METRICS` (`[T, E]`, from `EpisodeStatistics`) and `"fields"`:
    each turn's prompt fields (the observation without its image), a dict of `[T, E, ...]` arrays.
    """
    if not isinstance(env, VisualEnv):
        raise ValueError(f"env={type(env).__name__}: need a VisualEnv (from envs.make)")
    check_reply_spec(spec, env.action_names)
    format_reward = check_format_reward(format_reward)
    height, width, _ = env.image_shape
    grid = image_grid_thw(height, width, image_config)
    history_length = template.history_length
    stats_env = EpisodeStatistics(env)
    policy_turn = make_policy_turn(
        template, image_config, sampling, defs, grid, constraint=constraint, reply_fn=reply_fn
    )

    def run(rollout_state, base, policy, value_head, env_params, spec, num_turns):
        chex.assert_rank(rollout_state.history, 2)
        num_envs = rollout_state.num_envs
        params = nnx.merge_state(policy, base)
        if group_size > 1:
            rollout_state = grouped_reset(stats_env, env_params, rollout_state, group_size)

        def turn(state: RolloutState, _):
            key, step_key, acted = policy_turn.act(
                params, value_head, state.obs, state.history, spec, state.key
            )
            obs, env_state, reward, terminated, truncated, info = jax.vmap(
                stats_env.step, (0, 0, 0, None)
            )(
                jax.random.split(step_key, num_envs),
                state.env_state,
                acted.parsed.action,
                env_params,
            )
            history, truncation_value = policy_turn.settle(
                params,
                value_head,
                state.history,
                acted.parsed.action,
                terminated,
                truncated,
                info["final_observation"] if next_values else None,
            )
            row = turn_row(
                acted,
                state.obs,
                reward,
                terminated,
                truncated,
                truncation_value,
                info,
            )
            next_state = RolloutState(env_state=env_state, obs=obs, history=history, key=key)
            return next_state, row

        rollout_state, rows = jax.lax.scan(turn, rollout_state, length=num_turns)
        if next_values:
            obs, history = rollout_state.obs, rollout_state.history
            bootstrap = policy_turn.values(params, value_head, obs, history)
        else:
            bootstrap = jnp.zeros((num_envs,), jnp.float32)
        batch, metrics = finish_rollout(rows, bootstrap, format_reward, grid, image_config)
        return rollout_state, batch, metrics

    compiled = jax.jit(run, static_argnames=("num_turns",))

    def rollout(rollout_state, base, policy, value_head, num_turns: int):
        check_num_turns(num_turns)
        return compiled(rollout_state, base, policy, value_head, env_params, spec, num_turns)

    rollout.compiled = compiled  # for `_cache_size()` checks

    def init(key: jax.Array, num_envs: int) -> RolloutState:
        return init_rollout_state(stats_env, env_params, key, num_envs, history_length)

    return Rollout(init=init, run=rollout, image_grid=grid)


__all__ = [
    "EPISODE_METRICS",
    "Acted",
    "PolicyTurn",
    "ReplyFn",
    "Rollout",
    "RolloutState",
    "finish_rollout",
    "grouped_reset",
    "init_rollout_state",
    "make_policy_turn",
    "make_rollout",
    "observation_fields",
    "push_history",
    "stacked_patches",
    "turn_row",
]
