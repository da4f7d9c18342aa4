"""Expert demonstrations written by the envs' experts: the supervised warm start's data and the oracle
teacher's replies (host side, plain Python and numpy; nothing here runs inside jit).

The expert is the env's (`AgentSpec.expert`, see `envs.agent`): it reads the env's prompt fields of
one state (unbatched numpy) and returns its action with a one-sentence reason (`expert_move`); the
shipped envs document theirs (`envs.sokoban.expert`, `envs.cards.expert`). It reads the constants
(action names, symbols, target) of the env's default instance (`envs.default_env`).

`expert_reply` wraps a state description (`rollout.metrics.describe_state`, the claims the
grounding checker reads; none when the env has no grounding grammar) and the reason into the JSON
reply the env's prompt asks for: with the "full" prompt style the state keys the env's full reply
format asks for first (`Expert.state_keys`), with "brief" and "compact" the thoughts and the action
only. For an action other than the expert's (the noisy demonstrations), the reason is a plain
statement of that action (`Expert.plain_reason`): the thoughts still describe the true state, but
do not pretend the move is the solver's.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from transformers import PreTrainedTokenizerBase

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.agent import Expert, ExpertMove
from gtr_turbo_jax.rollout.metrics import describe_state, has_grounding
from gtr_turbo_jax.text import replies
from gtr_turbo_jax.text.image import ImageConfig, image_grid_thw
from gtr_turbo_jax.text.prompts import STYLES, PromptTemplate, assemble
from gtr_turbo_jax.text.tokenizer import special_token_ids

Fields = Mapping[str, Any]


class Demo(NamedTuple):
    """One demonstration step: the prompt fields (numpy, unbatched), the image, the reply text."""

    fields: dict[str, np.ndarray]
    image: np.ndarray  # uint8[H, W, 3]
    reply: str


def _expert(env_name: str) -> Expert:
    spec = envs.agent_spec(env_name)
    if spec.expert is None:
        raise ValueError(
            f"no expert for env {env_name!r} (its AgentSpec has none): the warm start and mode "
            "'gtr' need one; set warm_start.steps=0 and another rl.mode"
        )
    return spec.expert


def action_names(env_name: str) -> tuple[str, ...]:
    return tuple(envs.default_env(env_name).action_names)


def expert_move(env_name: str, fields: Fields) -> ExpertMove:
    """The expert's action for one state (`env.prompt_fields`, unbatched), with its reason."""
    return _expert(env_name).move(envs.default_env(env_name), fields)


def expert_action(env_name: str, fields: Fields) -> int:
    """The expert's next action for one state (deterministic; see the env's expert)."""
    return expert_move(env_name, fields).action


def expert_reply(
    env_name: str, fields: Fields, action: int | None = None, style: str = "full"
) -> str:
    """The JSON reply naming `action` (default: the expert's) with thoughts that describe the state
    and say why; valid under `text.replies.parse_reply` and parsed as `action`.

    `style` is the prompt's (`text.prompts.make_template`): "full" asks for the env's state keys
    (if any) before the thoughts, "brief" and "compact" for the thoughts and the action only.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not a prompt style; valid: {', '.join(STYLES)}")
    expert = _expert(env_name)
    env = envs.default_env(env_name)
    move = expert.move(env, fields)
    names = action_names(env_name)
    action = move.action if action is None else int(action)
    if not 0 <= action < len(names):
        raise ValueError(f"action={action} out of range for {env_name}: ids 0..{len(names) - 1}")
    reason = move.reason if action == move.action else expert.plain_reason(names[action])
    reply: dict[str, Any] = {}
    if style == "full" and expert.state_keys is not None:
        reply.update(expert.state_keys(env, fields))
    seen = f"{describe_state(env_name, fields)} " if has_grounding(env_name) else ""
    reply["thoughts"] = seen + reason
    reply["action"] = names[action]
    return json.dumps(reply, ensure_ascii=False)


# --- demonstrations -----------------------------------------------------------------------------


# The env is a static argument (hashed by identity): repeated collections compile once.
@functools.partial(jax.jit, static_argnames=("env",))
def _reset(env: Any, env_params: Any, key: jax.Array):
    key, reset_key = jax.random.split(key)
    obs, state = env.reset(reset_key, env_params)
    return key, obs, state


@functools.partial(jax.jit, static_argnames=("env",))
def _step(env: Any, env_params: Any, key: jax.Array, state: Any, action: jax.Array):
    key, step_key = jax.random.split(key)
    obs, state, _, terminated, truncated, _ = env.step(step_key, state, action, env_params)
    return key, obs, state, terminated | truncated


def _host_rng(key: jax.Array) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def collect_demos(
    env_name: str,
    env: Any,
    env_params: Any,
    key: jax.Array,
    num_samples: int,
    *,
    noise: float = 0.0,
    history_length: int = 0,
    style: str = "full",
) -> list[Demo]:
    """`num_samples` steps of the expert playing `env` (`envs.make(env_name)`, wrappers allowed).

    With probability `noise` a step takes a uniformly random action instead (the reply names it,
    its thoughts still describe the true state), so the warm start is deliberately imperfect.
    A state with no solution left is not recorded where the expert says so (`restart_unsolvable`:
    Sokoban after a random push): the episode restarts. `history_length` K > 0 adds
    `fields["history"]` (the last K actions, oldest first, -1 for none, cleared at episode ends,
    as the rollout keeps it) for templates that list them; `style` is the template's (the reply
    format it asks for, see `expert_reply`).
    Deterministic given `key`.
    """
    expert = _expert(env_name)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}: need an int >= 1")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise={noise!r}: need a probability in [0, 1]")
    if not isinstance(history_length, int) or history_length < 0:
        raise ValueError(f"history_length={history_length!r}: need an int >= 0")
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not a prompt style; valid: {', '.join(STYLES)}")
    num_actions = len(env.action_names)
    key, rng_key = jax.random.split(key)
    rng = _host_rng(rng_key)
    key, obs, state = _reset(env, env_params, key)
    history = [-1] * history_length
    demos: list[Demo] = []
    while len(demos) < num_samples:
        obs = jax.device_get(obs)
        if "image" not in obs:
            raise ValueError(f"{env_name} observations have no image: build it with images on")
        fields = {name: np.asarray(value) for name, value in obs.items() if name != "image"}
        move = expert_move(env_name, fields)
        if expert.restart_unsolvable and not move.solvable:
            key, obs, state = _reset(env, env_params, key)
            history = [-1] * history_length
            continue
        action = move.action if rng.random() >= noise else int(rng.integers(num_actions))
        if history_length:
            fields["history"] = np.asarray(history, np.int32)
        reply = expert_reply(env_name, fields, action, style)
        demos.append(Demo(fields, np.asarray(obs["image"]), reply))
        key, obs, state, done = _step(env, env_params, key, state, jnp.int32(action))
        if history_length:
            history = history[1:] + [action]
        if bool(done):
            history = [-1] * history_length
    return demos


# --- tokenized demonstrations -------------------------------------------------------------------


@struct.dataclass
class DemoSet:
    """Demonstrations as fixed-shape numpy arrays, `[N, ...]`.

    Prompts are left-padded (as `assemble` pads them), replies right-padded and ending with
    `<|im_end|>`; `label_mask` covers every reply token including that EOS. Images stay uint8 (a
    tenth of the size of their patches); `patches` turns rows into the model's input.
    """

    prompt_ids: np.ndarray  # int32[N, P]
    prompt_mask: np.ndarray  # int32[N, P]
    images: np.ndarray  # uint8[N, H, W, 3]
    reply_ids: np.ndarray  # int32[N, R]
    label_mask: np.ndarray  # bool[N, R]
    actions: np.ndarray  # int32[N]: the action each reply names
    image_config: ImageConfig = struct.field(pytree_node=False, default=ImageConfig())

    def __len__(self) -> int:
        return self.reply_ids.shape[0]

    @property
    def image_grid(self) -> tuple[int, int, int]:
        height, width = self.images.shape[1:3]
        return image_grid_thw(height, width, self.image_config)


@functools.partial(jax.jit, static_argnames=("template",))
def _assemble_all(template: PromptTemplate, fields: dict[str, jax.Array]):
    return jax.vmap(assemble, (None, 0))(template, fields)


def tokenize_replies(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, width: int, *, eos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """`(int32[N, width] ids right-padded with the pad id, bool[N, width] real tokens)`, each reply
    followed by `<|im_end|>` when `eos`; a reply longer than `width` is an error."""
    special = special_token_ids(tokenizer)
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = [list(ids) + ([special.im_end] if eos else []) for ids in encoded]
    longest = max((len(r) for r in rows), default=0)
    if longest > width:
        raise ValueError(
            f"a reply has {longest} tokens{' with EOS' if eos else ''}, more than the reply width "
            f"{width}: raise the width to at least {longest}"
        )
    ids = np.full((len(rows), width), special.pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = True
    return ids, mask


def encode_demos(
    demos: Sequence[Demo],
    template: PromptTemplate,
    tokenizer: PreTrainedTokenizerBase,
    image_config: ImageConfig,
    reply_width: int,
) -> DemoSet:
    """Tokenizes demonstrations for `warm_start`: prompts by `assemble` (what the rollout feeds the
    model), replies + EOS right-padded to `reply_width`."""
    if not demos:
        raise ValueError("no demonstrations to encode")
    keys = sorted(demos[0].fields)
    if template.history_length and "history" not in keys:
        raise ValueError(
            f"the template lists the last {template.history_length} actions: collect the demos "
            f"with collect_demos(..., history_length={template.history_length})"
        )
    fields = {k: np.stack([np.asarray(d.fields[k]) for d in demos]) for k in keys}
    prompt_ids, prompt_mask = _assemble_all(template, fields)
    reply_ids, label_mask = tokenize_replies([d.reply for d in demos], tokenizer, reply_width)
    names = action_names(template.env_name)
    actions = []
    for d in demos:
        found = replies.matched_actions(d.reply, names)
        if len(found) != 1:
            raise ValueError(f"a demo reply names no single action of {names}: {d.reply!r}")
        actions.append(found[0])
    return DemoSet(
        prompt_ids=np.asarray(prompt_ids, np.int32),
        prompt_mask=np.asarray(prompt_mask, np.int32),
        images=np.stack([np.asarray(d.image, np.uint8) for d in demos]),
        reply_ids=reply_ids,
        label_mask=label_mask,
        actions=np.asarray(actions, np.int32),
        image_config=image_config,
    )
