"""Per-env prompt templates, assembled into fixed-length token arrays inside jit.

A prompt is the chat template around one user turn: the image placeholder (`<|image_pad|>` x N)
and the env's text (RL4VLM's wording for the card games, RAGEN/VAGEN's rules and symbols for
Sokoban, all asking for the JSON reply whose last key is `"action"`). The text has static parts and
dynamic slots (the Points24/EZPoints formula, the Sokoban grid, optionally the last K actions).
On the host, `make_template`
tokenizes the static parts once and, for each slot, a table of the token ids of every symbol
rendering; inside jit, `assemble` gathers the slot rows from the env's `prompt_fields` and compacts
everything with a cumulative-sum scatter.

Tokenizing the pieces apart equals tokenizing the whole text only if no BPE pre-token crosses a
piece boundary. With Qwen2's split regex that holds when every slot symbol is rendered as a space
followed by the symbol (a row's last Sokoban cell also carries the newline), and the static text
after a slot starts with a space; `tests/text/test_prompts.py` checks the equality on random
states of every env.

Padding is on the left (the models' convention, `models/qwen2_5_vl.py`): the last prompt token sits
at index `max_length - 1`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from transformers import PreTrainedTokenizerBase

from gtr_turbo_jax.text.tokenizer import IMAGE_PAD_TOKEN, encode_chat, image_user_turn

JSON_RULE = (
    " Reply with one valid JSON object and nothing else, in this format: {reply}. The value of"
    ' "action" must be exactly one of the actions listed above.'
)
FORMULA_RULES = (
    " Each turn you choose one of {actions}; the number or operator you choose is appended to"
    " the formula, and '=' ends the game. 'J', 'Q' and 'K' count as '10'. The goal is a formula"
    " that evaluates to {target} and uses the number of every card exactly once. A '_' in the"
    " formula marks a number that was not among the unused cards and was dropped."
)

HISTORY_TEXT = " Your previous actions, oldest first:{history} (end of actions)."
# Sokoban's optional symbolic hint (`positions=True`): where the player, boxes and targets are.
# A model reads positions off the grid by counting rows and columns, which a tiny CPU model does
# not learn in minutes (its rotary attention has no absolute positions); listed, they are a copy.
POSITIONS_TEXT = " Cells as (row, column):{player}{box}{target} (end of cells)."

# Content follows RL4VLM's gym_cards prompts (card games) and RAGEN/VAGEN's Sokoban prompt (goal,
# symbols, rules, the meaning of each move), in our own words. The text around a slot keeps the
# tokenization rule of the module docstring: a slot is preceded by any text and followed by a space.
TEXTS: dict[str, str] = {
    "points24": (
        "You are an expert 24 points card game player. You are observing four cards in the image."
        " The current formula is:{formula} (end of formula)."
        + FORMULA_RULES.format(
            actions="'1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '+', '-', '*', '/', '(',"
            " ')', '='",
            target=24,
        )
    ),
    "ezpoints": (
        "You are an expert card game player. You are observing two cards in the image. The"
        " current formula is:{formula} (end of formula)."
        + FORMULA_RULES.format(
            actions="'1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '+', '*', '='", target=12
        )
    ),
    "numberline": (
        "You are playing a game called number line. The image shows a target number and a current"
        " number, both between 0 and 5. Your goal is to move the current number to the target:"
        " each turn choose '+' to add one to the current number or '-' to subtract one."
    ),
    "blackjack": (
        "You are a blackjack player. You are observing the current game state in the image: the"
        " dealer's face-up card and your cards. You can choose between 'stand' (keep your hand and"
        " let the dealer play) and 'hit' (take one more card). You win with a total closer to 21"
        " than the dealer's without going over 21; an ace counts 1 or 11, 'J', 'Q' and 'K' count"
        " 10."
    ),
    "sokoban": (
        "You are a Sokoban solver. Goal: push every box onto a target. Symbols: '#' wall, '_'"
        " floor, 'O' target, 'X' box, '√' box on a target, 'P' you, 'S' you on a target. Rules:"
        " you can push a box by walking into it, but never pull it or push two boxes at once; you"
        " cannot walk through walls. Actions: 'Up' moves you to the row above, 'Down' to the row"
        " below, 'Left' to the column on the left, 'Right' to the column on the right. Positions"
        " are (row, column), counted from (0, 0) at the top-left cell. The current grid, row by"
        " row:\n{grid} Choose your next action."
    ),
}
# The card games ask for the state fields before the thoughts (RL4VLM); every thought is asked to
# state what it sees first, in the words `rollout/metrics.py`'s grounding grammar reads.
REPLIES: dict[str, str] = {
    "points24": (
        '{"cards": [x, y, z, w], "formula": "the current formula", "thoughts": "first read the'
        " cards and the formula, then check whether the formula equals 24: if so choose '=',"
        ' otherwise think about which number or operator to append to reach 24", "action":'
        ' "a number or an operator"}'
    ),
    "ezpoints": (
        '{"cards": [x, y], "formula": "the current formula", "thoughts": "first read the cards and'
        " the formula, then check whether the formula is complete: if so choose '=', otherwise"
        ' think about which number or operator to append to reach 12", "action": "a number or an'
        ' operator"}'
    ),
    "numberline": (
        '{"current number": x, "target number": y, "thoughts": "first read the current and target'
        ' numbers, then think about which action brings the current number closer to the target",'
        ' "action": "+" or "-"}'
    ),
    "blackjack": (
        '{"thoughts": "first say your total and the dealer\'s card, then think about which action'
        ' to choose", "action": "stand" or "hit"}'
    ),
    "sokoban": (
        '{"thoughts": "first say where you, the boxes and the targets are, as (row, column), then'
        ' think about which move brings a box closer to a target", "action": "Up" or "Down" or'
        ' "Left" or "Right"}'
    ),
}
FORMULA_BLANK = "_"  # how a rejected number's blank is written in the prompt

# The "brief" style: the same slots and reply format in a few words, for tiny models on a CPU where
# every prompt token is paid for in each rollout prefill and each update's forward and backward
# (the Sokoban prompt shrinks from ~430 to ~170 tokens with the tiny tokenizer). Real models get the
# full wording (the default).
BRIEF_TEXTS: dict[str, str] = {
    "points24": "Cards in the image. Formula:{formula} (end). Reach 24 using every card once.",
    "ezpoints": "Cards in the image. Formula:{formula} (end). Reach 12 using both cards once.",
    "numberline": "Number line: move the current number to the target with '+' or '-'.",
    "blackjack": "Blackjack: 'stand' or 'hit'; get closer to 21 than the dealer, never over.",
    "sokoban": (
        "Sokoban: push the box onto the target. '#' wall, '_' floor, 'O' target, 'X' box, '√' box"
        " on target, 'P' you, 'S' you on target. Grid:\n{grid} Next move?"
    ),
}
BRIEF_REPLIES: dict[str, str] = {
    "points24": '{"thoughts": "...", "action": "a number or an operator"}',
    "ezpoints": '{"thoughts": "...", "action": "a number or an operator"}',
    "numberline": '{"thoughts": "...", "action": "+" or "-"}',
    "blackjack": '{"thoughts": "...", "action": "stand" or "hit"}',
    "sokoban": '{"thoughts": "...", "action": "Up" or "Down" or "Left" or "Right"}',
}
BRIEF_JSON_RULE = " Reply in JSON: {reply}."
# The "compact" style: the state alone (the grid, the cells, the formula), no rules and no reply
# format, for tiny models that learn both from the warm start's demonstrations. Every prompt token
# is paid for in each rollout prefill and in each update's forward and backward: the tiny Sokoban
# prompt is 109 tokens instead of the brief style's 218, which is most of an update's work.
COMPACT_TEXTS: dict[str, str] = {**BRIEF_TEXTS, "sokoban": "Grid:\n{grid}"}
COMPACT_POSITIONS_TEXT = " Cells:{player}{box}{target}"
STYLES = ("full", "brief", "compact")


@dataclass(frozen=True)
class Slot:
    """A dynamic piece: `symbols(fields) -> (int32[P] rows of the table, bool[P] present)`."""

    name: str
    renderings: tuple[str, ...]  # row r of the table is the tokenization of renderings[r]
    symbols: Callable[[Mapping[str, jax.Array]], tuple[jax.Array, jax.Array]]
    # Tokens the slot can take at most, given each rendering's token count; None: every position
    # at its longest rendering.
    max_tokens: Callable[[np.ndarray], int] | None = None


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
    style: str = "full"  # "full" wording or "brief" (see BRIEF_TEXTS)
    positions: bool = False  # Sokoban: the prompt lists the player, box and target cells


def _formula_slot(env: Any) -> Slot:
    symbols = tuple(" " + (FORMULA_BLANK if s.strip() == "" else s) for s in env.formula_symbols)

    def rows(fields):
        formula = jnp.asarray(fields["formula"], jnp.int32)
        return formula, jnp.arange(formula.shape[0]) < fields["formula_length"]

    return Slot("formula", symbols, rows)


def _grid_slot(env: Any) -> Slot:
    from gtr_turbo_jax.envs.sokoban import levels

    symbols = levels.GRID_SYMBOLS
    # Rows 0..n-1: a cell; rows n..2n-1: the same cell ending its row (with the newline).
    renderings = tuple(" " + s for s in symbols) + tuple(" " + s + "\n" for s in symbols)
    height, width = env.size

    def rows(fields):
        grid = jnp.asarray(fields["grid"], jnp.int32)
        last_column = (jnp.arange(width) == width - 1)[None, :]
        ids = grid + jnp.where(last_column, len(symbols), 0)
        return ids.reshape(-1), jnp.ones(height * width, bool)

    def max_tokens(lengths: np.ndarray) -> int:
        # Walls and floor fill any cell; the other symbols have a few cells at most: one player
        # (P or S), num_boxes boxes (X or √) and num_boxes bare targets (O). Each of those can
        # cost a cell's wall-or-floor length plus its own extra.
        n = len(symbols)
        plain = [max(lengths[o + levels.WALL], lengths[o + levels.FLOOR]) for o in (0, n)]
        total = height * ((width - 1) * plain[0] + plain[1])

        def extra(*symbols: int) -> int:  # the most one such cell adds to a plain one
            return max(
                0, *(lengths[o + s] - plain[i] for i, o in enumerate((0, n)) for s in symbols)
            )

        player = extra(levels.PLAYER, levels.PLAYER_ON_TARGET)
        per_box = extra(levels.BOX, levels.BOX_ON_TARGET) + extra(levels.TARGET)
        return total + player + env.num_boxes * per_box

    return Slot("grid", renderings, rows, max_tokens)


def _cells_slot(env: Any, kind: str) -> Slot:
    """The cells of one kind of thing (`kind`: player, box or target), row-major, as
    " kind (row, column)" each. One slot per kind keeps `max_length` tight (their words differ in
    token count)."""
    from gtr_turbo_jax.envs.sokoban import levels

    height, width = env.size
    renderings = tuple(f" {kind} ({r}, {c})" for r in range(height) for c in range(width))
    codes = {
        "box": (levels.BOX, levels.BOX_ON_TARGET),
        "target": (levels.TARGET, levels.BOX_ON_TARGET, levels.PLAYER_ON_TARGET),
    }

    def rows(fields):
        if kind == "player":
            player = jnp.asarray(fields["player"], jnp.int32)
            return (player[0] * width + player[1])[None], jnp.ones(1, bool)
        grid = jnp.asarray(fields["grid"]).reshape(-1)
        (cells,) = jnp.nonzero(jnp.isin(grid, jnp.asarray(codes[kind])), size=env.num_boxes)
        return cells.astype(jnp.int32), jnp.ones(env.num_boxes, bool)

    return Slot(kind, renderings, rows)


def _history_slot(env: Any) -> Slot:
    """The last actions, `fields["history"]`: int32[K], oldest first, -1 where there is none."""

    def rows(fields):
        history = jnp.asarray(fields["history"], jnp.int32)
        return jnp.maximum(history, 0), history >= 0

    return Slot("history", tuple(" " + name for name in env.action_names), rows)


def _slots(
    env_name: str, env: Any, history_length: int = 0, positions: bool = False
) -> dict[str, Slot]:
    slots = {}
    if env_name in ("points24", "ezpoints"):
        slots["formula"] = _formula_slot(env)
    if env_name == "sokoban":
        slots["grid"] = _grid_slot(env)
        if positions:
            slots.update({kind: _cells_slot(env, kind) for kind in ("player", "box", "target")})
    if history_length:
        slots["history"] = _history_slot(env)
    return slots


def _user_text(
    env_name: str, history_length: int, style: str = "full", positions: bool = False
) -> str:
    """The env's text with `{slot}` fields (and `{reply}`), before formatting."""
    texts, cells, rule = {
        "full": (TEXTS, POSITIONS_TEXT, JSON_RULE),
        "brief": (BRIEF_TEXTS, POSITIONS_TEXT, BRIEF_JSON_RULE),
        "compact": (COMPACT_TEXTS, COMPACT_POSITIONS_TEXT, ""),
    }[style]
    hints = (cells if positions else "") + (HISTORY_TEXT if history_length else "")
    return texts[env_name] + hints + rule


def _reply_format(env_name: str, style: str) -> str:
    return (REPLIES if style == "full" else BRIEF_REPLIES)[env_name]


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
    """The template of `env_name` (`envs.make(env_name)[0]` is `env`) under `tokenizer`.

    `style`: "full" (the anchors' wording, the default), "brief" (`BRIEF_TEXTS`, for tiny models)
    or "compact" (`COMPACT_TEXTS`: the state only; the tiny Sokoban default).

    `history_length` K > 0 adds the agent's last K actions to the prompt (RAGEN/VAGEN tell the
    agent the action just taken): `assemble` then reads `fields["history"]`, int32[K] action ids,
    oldest first, -1 for none (the rollout keeps it in its carry, it is not env state).

    `positions` (Sokoban only) lists the player's, the boxes' and the targets' cells after the grid
    (`POSITIONS_TEXT`), derived from the grid inside jit.
    """
    if env_name not in TEXTS:
        raise ValueError(f"no prompt for env {env_name!r}; valid: {', '.join(TEXTS)}")
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens={num_image_tokens}: need at least 1")
    if not isinstance(history_length, int) or history_length < 0:
        raise ValueError(f"history_length={history_length!r}: need an int >= 0 (0: no history)")
    if style not in STYLES:
        raise ValueError(f"prompt style={style!r} is not supported; valid: {', '.join(STYLES)}")
    if positions and env_name != "sokoban":
        raise ValueError(f"positions=True lists Sokoban's cells; {env_name!r} has none")
    slots = _slots(env_name, env, history_length, positions)
    text = _user_text(env_name, history_length, style, positions).format(
        reply=_reply_format(env_name, style), **{k: "\0" + k + "\0" for k in slots}
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
    # Longest prompt: each slot at its bound (default: every position at its longest rendering).
    fields = jax.eval_shape(lambda: env.prompt_fields(*_dummy_state(env)))
    fields["history"] = jax.ShapeDtypeStruct((history_length,), jnp.int32)
    max_length = 0
    for piece in pieces:
        if isinstance(piece, Slot):
            lengths = tables[piece.name][1]
            if piece.max_tokens is not None:
                max_length += int(piece.max_tokens(lengths))
                continue
            count = jax.eval_shape(piece.symbols, fields)[0].shape[0]
            max_length += count * int(lengths.max())
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
    )


def _dummy_state(env: Any) -> tuple[Any, Any]:
    params = env.default_params
    _, state = env.reset(jax.random.key(0), params)
    return state, params


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
            lengths.append(jnp.where(present, jnp.asarray(table_lengths)[symbols], 0))
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
    slots = _slots(template.env_name, env, template.history_length, template.positions)
    for name, slot in slots.items():
        symbols, present = (np.asarray(a) for a in slot.symbols(fields))
        values[name] = "".join(slot.renderings[s] for s, p in zip(symbols, present) if p)
    text = _user_text(
        template.env_name, template.history_length, template.style, template.positions
    )
    return text.format(reply=_reply_format(template.env_name, template.style), **values)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, template: PromptTemplate, env: Any, fields, num_image_tokens
) -> np.ndarray:
    """Host reference: `encode_chat` of `prompt_text` (unpadded)."""
    text = prompt_text(template, env, fields)
    return encode_chat(tokenizer, [image_user_turn(text)], num_image_tokens)
