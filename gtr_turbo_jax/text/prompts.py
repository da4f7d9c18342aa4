"""Prompt templates, assembled into fixed-length token arrays inside jit.

A prompt is the chat template around one user turn: the image placeholder (`<|image_pad|>` x N)
and the env's text in the chosen style, all asking for the JSON reply whose last key is `"action"`.
The env's `AgentSpec` (`envs.agent`) gives the wording, the reply format and the dynamic slots
(a formula, a grid, the optional positions hint); this module adds the generic parts: the reply
rule, the optional last K actions, the tokenization.
On the host, `make_template`
tokenizes the static parts once and, for each slot, a table of the token ids of every symbol
rendering; inside jit, `assemble` gathers the slot rows from the env's `prompt_fields` and compacts
everything with a cumulative-sum scatter.

Tokenizing the pieces apart equals tokenizing the whole text only if no BPE pre-token crosses a
piece boundary. With Qwen2's split regex that holds when every slot symbol is rendered as a space
followed by the symbol (a grid row's last cell also carries the newline), and the static text
after a slot starts with a space; `tests/text/test_prompts.py` checks the equality on random
states of every env.

Padding is on the left (the models' convention, `models/qwen2_5_vl.py`): the last prompt token sits
at index `max_length - 1`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from transformers import PreTrainedTokenizerBase

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.agent import AgentSpec, Slot
from gtr_turbo_jax.text.tokenizer import IMAGE_PAD_TOKEN, encode_chat, image_user_turn

JSON_RULE = (
    " Reply with one valid JSON object and nothing else, in this format: {reply}. The value of"
    ' "action" must be exactly one of the actions listed above.'
)
HISTORY_TEXT = " Your previous actions, oldest first:{history} (end of actions)."
# The "brief" style: the same slots and reply format in a few words, for tiny models on a CPU where
# every prompt token is paid for in each rollout prefill and each update's forward and backward
# (the Sokoban prompt shrinks from ~430 to ~170 tokens with the tiny tokenizer). Real models get the
# full wording (the default).
BRIEF_JSON_RULE = " Reply in JSON: {reply}."
# The "compact" style: the state alone (the grid, the cells, the formula), no rules and no reply
# format, for tiny models that learn both from the warm start's demonstrations. Every prompt token
# is paid for in each rollout prefill and in each update's forward and backward: the tiny Sokoban
# prompt is 109 tokens instead of the brief style's 218, which is most of an update's work.
RULES = {"full": JSON_RULE, "brief": BRIEF_JSON_RULE, "compact": ""}
STYLES = tuple(RULES)


@jax.tree_util.register_static
@dataclass(frozen=True, eq=False)
class PromptTemplate:
    """Static token segments around slots; built once on the host by `make_template`."""

    env_name: str
    pieces: tuple[tuple[int, ...] | Slot, ...]  # static token ids, or a slot
    tables: Mapping[str, tuple[np.ndarray, np.ndarray]]  # slot -> (int32[R, S], int32[R])
    max_length: int  # the longest prompt any state can give
    pad_id: int
    history_length: int = 0  # K: the prompt lists the last K actions (`fields["history"]`)
    style: str = "full"  # one of STYLES
    positions: bool = False  # the prompt adds the env's positions hint (`AgentSpec.positions`)
    # slot -> the tokens it may take (`Slot.token_budget`): its text is cut after the last whole
    # symbol within them. Slots not listed are never cut.
    budgets: Mapping[str, int] = field(default_factory=dict)


def _history_slot(env: Any) -> Slot:
    """The last actions, `fields["history"]`: int32[K], oldest first, -1 where there is none."""

    def rows(fields):
        history = jnp.asarray(fields["history"], jnp.int32)
        return jnp.maximum(history, 0), history >= 0

    return Slot("history", tuple(" " + name for name in env.action_names), rows)


def _slots(
    spec: AgentSpec, env: Any, history_length: int = 0, positions: bool = False
) -> dict[str, Slot]:
    slots = dict(spec.slots(env))
    if positions:
        slots.update(spec.positions.slots(env))
    if history_length:
        slots["history"] = _history_slot(env)
    return slots


def _user_text(
    spec: AgentSpec, history_length: int, style: str = "full", positions: bool = False
) -> str:
    """The env's text with `{slot}` fields (and `{reply}`), before formatting."""
    hints = (spec.positions.texts[style] if positions else "") + (
        HISTORY_TEXT if history_length else ""
    )
    return spec.texts[style] + hints + RULES[style]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_template(
    env_name: str,
    env: Any,
    tokenizer: PreTrainedTokenizerBase,
    num_image_tokens: int,
    history_length: int = 0,
    style: str = "full",
    positions: bool = False,
) -> PromptTemplate:
    """The template of `env_name` (`envs.make(env_name)[0]` is `env`) under `tokenizer`, worded
    by the env's `AgentSpec`.

    `style`: "full" (the anchors' wording, the default), "brief" (a few words, for tiny models)
    or "compact" (the state only, no reply format; the tiny Sokoban default).

    `history_length` K > 0 adds the agent's last K actions to the prompt (RAGEN/VAGEN tell the
    agent the action just taken): `assemble` then reads `fields["history"]`, int32[K] action ids,
    oldest first, -1 for none (the rollout keeps it in its carry, it is not env state).

    `positions` adds the env's positions hint (`AgentSpec.positions`: Sokoban lists the player's,
    the boxes' and the targets' cells after the grid, derived from the grid inside jit).
    """
    spec = envs.agent_spec(env_name)
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens={num_image_tokens}: need at least 1")
    if not isinstance(history_length, int) or history_length < 0:
        raise ValueError(f"history_length={history_length!r}: need an int >= 0 (0: no history)")
    if style not in STYLES:
        raise ValueError(f"prompt style={style!r} is not supported; valid: {', '.join(STYLES)}")
    if style not in spec.texts:
        raise ValueError(
            f"env {env_name!r} has no {style!r} prompt; its styles: {', '.join(spec.texts)}"
        )
    if positions and (spec.positions is None or style not in spec.positions.texts):
        raise ValueError(
            f"positions=True adds the env's positions hint; {env_name!r} has none in style {style!r}"
        )
    slots = _slots(spec, env, history_length, positions)
    text = _user_text(spec, history_length, style, positions).format(
        reply=spec.replies[style], **{k: "\0" + k + "\0" for k in slots}
    )
    chat = tokenizer.apply_chat_template(
        [image_user_turn(text)], tokenize=False, add_generation_prompt=True
    )
    chat = chat.replace(IMAGE_PAD_TOKEN, IMAGE_PAD_TOKEN * num_image_tokens)
    pieces: list[tuple[int, ...] | Slot] = []
    for i, part in enumerate(chat.split("\0")):
        if i % 2:
            pieces.append(slots[part])
        elif part:
            pieces.append(_encode(tokenizer, part))
    tables = {}
    for name, slot in slots.items():
        encoded = [_encode(tokenizer, r) for r in slot.renderings]
        table = np.zeros((len(encoded), max(map(len, encoded))), np.int32)
        for r, ids in enumerate(encoded):
            table[r, : len(ids)] = ids
        tables[name] = (table, np.asarray([len(ids) for ids in encoded], np.int32))
    # Longest prompt: each slot at its bound (default: every position at its longest rendering),
    # or at its token budget where that is less.
    fields = _field_shapes(env)
    fields["history"] = jax.ShapeDtypeStruct((history_length,), jnp.int32)
    max_length, budgets = 0, {}
    for piece in pieces:
        if isinstance(piece, Slot):
            lengths = tables[piece.name][1]
            count = jax.eval_shape(piece.symbols, fields)[0].shape[0]
            if piece.max_tokens is not None:
                bound = int(piece.max_tokens(lengths))
            else:
                bound = count * int(lengths.max())
            if piece.token_budget is not None:
                budgets[piece.name] = int(piece.token_budget(lengths, count))
                bound = min(bound, budgets[piece.name])
            max_length += bound
        else:
            max_length += len(piece)
    return PromptTemplate(
        env_name=env_name,
        pieces=tuple(pieces),
        tables=tables,
        max_length=max_length,
        pad_id=int(tokenizer.convert_tokens_to_ids(tokenizer.pad_token)),
        history_length=history_length,
        style=style,
        positions=positions,
        budgets=budgets,
    )


def _field_shapes(env: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """The prompt fields' shapes: a JAX env's `prompt_fields` of a reset state, traced; a Python
    env's (`envs.PythonEnv`) `prompt_field_shapes()` where it has one (no game started: it may be
    a whole simulator), else its observation of one reset, less its image."""
    if hasattr(env, "prompt_field_shapes"):
        return dict(env.prompt_field_shapes())
    if not hasattr(env, "prompt_fields"):
        obs = env.reset(0)
        return {
            k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype)
            for k, v in obs.items()
            if k != "image"
        }

    def fields():
        params = env.default_params
        _, state = env.reset(jax.random.key(0), params)
        return env.prompt_fields(state, params)

    return jax.eval_shape(fields)


def assemble(
    template: PromptTemplate, fields: Mapping[str, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """`(int32[L], bool[L])`: the prompt of one env state, left-padded to `template.max_length`.

    `fields` is the env's `prompt_fields`, plus `"history"` (int32[K]) when the template has one.
    """
    if template.history_length:
        if "history" not in fields:
            raise ValueError(
                f"the template lists the last {template.history_length} actions: fields need "
                "'history', int32[K] action ids oldest first, -1 for none"
            )
        chex.assert_shape(fields["history"], (template.history_length,))
    rows, lengths = [], []
    for piece in template.pieces:
        if isinstance(piece, Slot):
            table, table_lengths = template.tables[piece.name]
            symbols, present = piece.symbols(fields)
            rows.append(jnp.asarray(table)[symbols])
            counts = jnp.where(present, jnp.asarray(table_lengths)[symbols], 0)
            if piece.name in template.budgets:  # past the budget every symbol is cut
                counts = jnp.where(jnp.cumsum(counts) <= template.budgets[piece.name], counts, 0)
            lengths.append(counts)
        else:
            rows.append(jnp.asarray(piece, jnp.int32)[None, :])
            lengths.append(jnp.asarray([len(piece)], jnp.int32))
    width = max(r.shape[1] for r in rows)
    ids = jnp.concatenate([jnp.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows])
    counts = jnp.concatenate(lengths)
    valid = jnp.arange(width)[None, :] < counts[:, None]
    ends = jnp.cumsum(counts)
    size = template.max_length
    start = size - ends[-1]  # left padding
    dest = jnp.where(valid, start + (ends - counts)[:, None] + jnp.arange(width), size)
    out = jnp.full(size, template.pad_id, jnp.int32).at[dest.ravel()].set(ids.ravel(), mode="drop")
    mask = jnp.arange(size) >= start
    return out, mask


def prompt_text(template: PromptTemplate, env: Any, fields: Mapping[str, Any]) -> str:
    """The user text of one state on the host (plain Python): what `assemble` tokenizes."""
    values = {}
    spec = envs.agent_spec(template.env_name)
    slots = _slots(spec, env, template.history_length, template.positions)
    for name, slot in slots.items():
        symbols, present = (np.asarray(a) for a in slot.symbols(fields))
        kept = [int(s) for s, p in zip(symbols, present) if p]
        if name in template.budgets:  # `assemble`'s cut: the symbols within the budget
            tokens = np.cumsum(template.tables[name][1][np.asarray(kept, np.int64)])
            kept = kept[: int(np.sum(tokens <= template.budgets[name]))]
        values[name] = "".join(slot.renderings[s] for s in kept)
    text = _user_text(spec, template.history_length, template.style, template.positions)
    return text.format(reply=spec.replies[template.style], **values)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, template: PromptTemplate, env: Any, fields, num_image_tokens
) -> np.ndarray:
    """Host reference: `encode_chat` of `prompt_text` (unpadded)."""
    text = prompt_text(template, env, fields)
    return encode_chat(tokenizer, [image_user_turn(text)], num_image_tokens)
