"""Expert demonstrations written by the envs' solvers: the supervised warm start's data and the oracle
teacher's replies (host side, plain Python and numpy; nothing here runs inside jit).

The expert (`expert_move`) reads the env's prompt fields of one state (unbatched numpy) and returns
its action with a one-sentence reason:
- sokoban: a first move of a shortest solution (`envs.sokoban.solve`, A*, cached per grid);
  following it solves a level in exactly its A* length. The reason names the plan's next push
  (which box goes which way, from which cell) and, while the player walks to that cell, the gap
  it closes with both numbers side by side ("row 4 to 1 is up"), so each decision in the thought
  is a comparison of nearby numbers. The walk follows a fixed rule (`_walk_move`: close the row
  gap first, then the column gap, whenever that move is on a shortest walk; otherwise the
  reason says "but blocked") instead of A*'s arbitrary tie-break between equally short walks. A
  state with no solution (a box in a dead cell, a deadlock) gets `SOKOBAN_STUCK_ACTION` and
  `solvable=False`.
- points24 / ezpoints: the next token of the chosen solution that extends the current formula
  (blanks of rejected numbers are skipped, as the env's evaluator skips them); the chosen solution
  is the one with the fewest tokens, ties broken by its text, so the plan stays the same along an
  episode. A complete solution gets `=`; a formula no solution extends (or an unsolvable deal) gets
  `=` too (no action can fix it, so the episode ends at once) with `solvable=False`. The target is
  the default env's (24, 12).
- numberline: `+` while the current number is below the target, `-` otherwise.
- blackjack: basic strategy for hit / stand only (dealer stands on soft 17, `BLACKJACK_RULES`):
  hard totals hit up to 11, hit 12 against a dealer 2, 3 or 7..ace, hit 13..16 against 7..ace,
  stand from 17; soft totals hit up to 17, hit 18 against 9, 10 or ace, stand from 19.

`expert_reply` wraps a state description (`rollout.metrics.describe_state`, the claims the
grounding checker reads) and the reason into the JSON reply the env's prompt asks for: with the
"full" prompt style `text.prompts.REPLIES` (the card games put their state keys first), with
"brief" the thoughts and the action only. For an action other than the
expert's (the noisy demonstrations), the reason is a plain statement of that action: the
thoughts still describe the true state, but do not pretend the move is the solver's.
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
from gtr_turbo_jax.envs.cards.solver import completion, solve
from gtr_turbo_jax.envs.sokoban.levels import ACTION_DELTAS, BOX, BOX_ON_TARGET, WALL
from gtr_turbo_jax.envs.sokoban.solver import solve as solve_sokoban
from gtr_turbo_jax.rollout.metrics import FORMULA_BLANK, describe_state
from gtr_turbo_jax.text import replies
from gtr_turbo_jax.text.image import ImageConfig, image_grid_thw
from gtr_turbo_jax.text.prompts import STYLES, PromptTemplate, assemble
from gtr_turbo_jax.text.tokenizer import special_token_ids

ENV_NAMES = ("sokoban", "points24", "ezpoints", "numberline", "blackjack")
SOKOBAN_STUCK_ACTION = 0  # "Up": any move is as good once no solution is left
DIRECTION_WORDS = ("up", "down", "left", "right")  # ACTION_DELTAS order
BLACKJACK_RULES = "hit/stand basic strategy, dealer stands on soft 17"

Fields = Mapping[str, Any]


class ExpertMove(NamedTuple):
    action: int  # the expert's action id
    reason: str  # why, in one or two sentences that end with the action
    solvable: bool  # False: the state can no longer be won and `action` is the documented fallback


class Demo(NamedTuple):
    """One demonstration step: the prompt fields (numpy, unbatched), the image, the reply text."""

    fields: dict[str, np.ndarray]
    image: np.ndarray  # uint8[H, W, 3]
    reply: str


def _check_env(env_name: str) -> None:
    if env_name not in ENV_NAMES:
        raise ValueError(f"no expert for env {env_name!r}; valid: {', '.join(ENV_NAMES)}")


@functools.cache
def _default_env(env_name: str) -> Any:
    """The default env of a name: its action names, formula symbols and target."""
    _check_env(env_name)
    return envs.make(env_name)[0]


def action_names(env_name: str) -> tuple[str, ...]:
    return tuple(_default_env(env_name).action_names)


def _get(fields: Fields, key: str) -> np.ndarray:
    if key not in fields:
        raise ValueError(f"fields lack {key!r}; got keys {sorted(fields)}")
    return np.asarray(fields[key])


def _cell(rc: Sequence[int]) -> str:
    return f"({int(rc[0])}, {int(rc[1])})"


# --- sokoban ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)
def _sokoban_plan(grid_bytes: bytes, shape: tuple[int, int]) -> tuple[int, ...] | None:
    grid = np.frombuffer(grid_bytes, np.int8).reshape(shape)
    plan = solve_sokoban(grid)
    return None if plan is None else tuple(plan)


def _next_push(grid: np.ndarray, player: np.ndarray, plan: Sequence[int]):
    """(box cell, push action, cell the player pushes from) of the plan's first push. The plan
    only walks before it, so no box moves until then."""
    boxes = {tuple(map(int, rc)) for rc in np.argwhere(np.isin(grid, (BOX, BOX_ON_TARGET)))}
    here = (int(player[0]), int(player[1]))
    for action in plan:
        ahead = (here[0] + ACTION_DELTAS[action][0], here[1] + ACTION_DELTAS[action][1])
        if ahead in boxes:
            return ahead, action, here
        here = ahead
    raise ValueError(f"plan {plan} pushes no box in grid {grid.tolist()}")


def _walk_move(grid: np.ndarray, player: tuple[int, int], stand: tuple[int, int]) -> int:
    """The first move of a shortest walk from `player` to `stand` (walls and boxes block): the
    vertical move toward `stand`'s row if it is on one, else the horizontal move toward its
    column, else the first such move in action order. Any shortest walk keeps the solution
    optimal (the plan walks there before its first push, with the boxes still in place)."""
    free = ~np.isin(grid, (WALL, BOX, BOX_ON_TARGET))

    def neighbour(cell: tuple[int, int], action: int) -> tuple[int, int] | None:
        """The free cell `action` leads to from `cell`, or None."""
        r, c = cell[0] + ACTION_DELTAS[action][0], cell[1] + ACTION_DELTAS[action][1]
        inside = 0 <= r < grid.shape[0] and 0 <= c < grid.shape[1]
        return (r, c) if inside and free[r, c] else None

    dist = np.full(grid.shape, -1)
    dist[stand] = 0
    frontier = [stand]
    while frontier:  # breadth-first from the standing cell
        following = []
        for cell in frontier:
            for n in filter(None, (neighbour(cell, a) for a in range(len(ACTION_DELTAS)))):
                if dist[n] < 0:
                    dist[n] = dist[cell] + 1
                    following.append(n)
        frontier = following
    rows, cols = np.sign(stand[0] - player[0]), np.sign(stand[1] - player[1])
    preferred = [ACTION_DELTAS.index((rows, 0))] if rows else []
    preferred += [ACTION_DELTAS.index((0, cols))] if cols else []
    for action in preferred + list(range(len(ACTION_DELTAS))):
        n = neighbour(player, action)
        if n is not None and dist[n] == dist[player] - 1:
            return action
    raise ValueError(f"no walk from {player} to {stand} in grid {grid.tolist()}")


def _sokoban_move(fields: Fields) -> ExpertMove:
    grid = _get(fields, "grid").astype(np.int8)
    player = _get(fields, "player")
    plan = _sokoban_plan(grid.tobytes(), grid.shape)
    names = action_names("sokoban")
    if plan is None:
        stuck = names[SOKOBAN_STUCK_ACTION]
        reason = f"No box can reach a target any more, so any move will do: {stuck}."
        return ExpertMove(SOKOBAN_STUCK_ACTION, reason, False)
    if not plan:
        reason = f"Every box is on a target already: {names[SOKOBAN_STUCK_ACTION]}."
        return ExpertMove(SOKOBAN_STUCK_ACTION, reason, True)
    box, push, stand = _next_push(grid, player, plan)
    here = (int(player[0]), int(player[1]))
    goal = f"Push the box at {_cell(box)} {DIRECTION_WORDS[push]} from {_cell(stand)}"
    action = push if here == stand else _walk_move(grid, here, stand)
    # Both gaps to the pushing cell, each with its two numbers side by side: every decision in
    # the thought is a comparison of adjacent numbers, which a small model learns quickly.
    gaps, decided = [], False
    for axis, name in enumerate(("row", "column")):
        step = tuple(int(np.sign(stand[i] - here[i])) * (i == axis) for i in (0, 1))
        word = DIRECTION_WORDS[ACTION_DELTAS.index(step)] if any(step) else "level"
        blocked = any(step) and not decided and ACTION_DELTAS[action] != step
        decided = decided or ACTION_DELTAS[action] == step
        gaps.append(f"{name} {here[axis]} to {stand[axis]} is {word}" + " but blocked" * blocked)
    verb = "push" if here == stand else "move"
    reason = f"{goal}; {', '.join(gaps)}, so I {verb} {names[action]}."
    return ExpertMove(action, reason, True)


# --- formula games ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _solutions(env_name: str, values: tuple[int, ...]) -> tuple[tuple[str, ...], ...]:
    """Every solution of the deal as token tuples, fewest tokens first, then by text."""
    env = _default_env(env_name)
    operators = "".join(op for op in env.operators if op in "+-*/")
    formulas = solve(values, env.target, operators, parentheses="(" in env.operators)
    return tuple(tuple(f.split()) for f in sorted(formulas, key=lambda f: (len(f.split()), f)))


def _formula_tokens(env_name: str, fields: Fields) -> list[str]:
    """The formula so far as tokens, a rejected number's blank as `FORMULA_BLANK`."""
    env = _default_env(env_name)
    ids = _get(fields, "formula")[: int(_get(fields, "formula_length"))]
    return [FORMULA_BLANK if int(i) == env.blank_symbol else env.formula_symbols[i] for i in ids]


def _formula_move(env_name: str, fields: Fields) -> ExpertMove:
    env = _default_env(env_name)
    names = list(env.action_names)
    values = tuple(sorted(int(v) for v in _get(fields, "values")))
    tokens = _formula_tokens(env_name, fields)
    typed = [t for t in tokens if t != FORMULA_BLANK]
    plan = next((s for s in _solutions(env_name, values) if list(s[: len(typed)]) == typed), None)
    if plan is None:  # off the minimal-parenthesis forms: can any completion still make it?
        rest = completion(
            typed,
            values,
            env.target,
            "".join(op for op in env.operators if op in "+-*/"),
            parentheses="(" in env.operators,
            budget=env.max_formula_length - len(tokens),
        )
        plan = None if rest is None else (*typed, *rest)
    equals = names.index("=")
    if plan is None:
        reason = f"No formula from here makes {env.target}, so I end the game: '='."
        return ExpertMove(equals, reason, False)
    if len(typed) == len(plan):
        reason = f"That makes {env.target} with every card, so I finish: '='."
        return ExpertMove(equals, reason, True)
    token = plan[len(typed)]
    reason = f"Plan: {' '.join(plan)} = {env.target}. Next I append '{token}'."
    return ExpertMove(names.index(token), reason, True)


# --- numberline, blackjack ----------------------------------------------------------------------


def _numberline_move(fields: Fields) -> ExpertMove:
    current, target = int(_get(fields, "current")), int(_get(fields, "target"))
    if current < target:
        return ExpertMove(1, f"{current} is below {target}, so I go up: '+'.", True)
    return ExpertMove(0, f"{current} is not below {target}, so I go down: '-'.", True)


def blackjack_hits(total: int, dealer: int, soft: bool) -> bool:
    """Basic strategy for hit / stand (`BLACKJACK_RULES`); `dealer` is 1 for an ace."""
    weak_dealer = 2 <= dealer <= 6
    if soft:
        return total <= 17 or (total == 18 and dealer in (9, 10, 1))
    if total <= 11:
        return True
    if total == 12:
        return not 4 <= dealer <= 6
    return total <= 16 and not weak_dealer


def _blackjack_move(fields: Fields) -> ExpertMove:
    total, dealer = int(_get(fields, "player_sum")), int(_get(fields, "dealer_card"))
    soft = bool(_get(fields, "usable_ace"))
    hit = blackjack_hits(total, dealer, soft)
    shown = "an ace" if dealer == 1 else str(dealer)
    hand = f"{'soft' if soft else 'hard'} {total}"
    action = "hit" if hit else "stand"
    reason = f"Basic strategy with a {hand} against {shown}: {action}."
    return ExpertMove(int(hit), reason, True)


# --- the expert ---------------------------------------------------------------------------------


def expert_move(env_name: str, fields: Fields) -> ExpertMove:
    """The expert's action for one state (`env.prompt_fields`, unbatched), with its reason."""
    _check_env(env_name)
    if env_name == "sokoban":
        return _sokoban_move(fields)
    if env_name in ("points24", "ezpoints"):
        return _formula_move(env_name, fields)
    if env_name == "numberline":
        return _numberline_move(fields)
    return _blackjack_move(fields)


def expert_action(env_name: str, fields: Fields) -> int:
    """The solver's next action for one state (deterministic; see the module docstring)."""
    return expert_move(env_name, fields).action


def _plain_reason(env_name: str, name: str) -> str:
    """The reason written for an action that is not the expert's: a statement, no justification."""
    if env_name == "sokoban":
        return f"I move {name}."
    if env_name in ("points24", "ezpoints"):
        return "I end the game: '='." if name == "=" else f"I append '{name}'."
    return f"I choose '{name}'."


def expert_reply(
    env_name: str, fields: Fields, action: int | None = None, style: str = "full"
) -> str:
    """The JSON reply naming `action` (default: the expert's) with thoughts that describe the state
    and say why; valid under `text.replies.parse_reply` and parsed as `action`.

    `style` is the prompt's (`text.prompts.make_template`): "full" asks the card games for their
    state keys before the thoughts, "brief" for the thoughts and the action only.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not a prompt style; valid: {', '.join(STYLES)}")
    move = expert_move(env_name, fields)
    names = action_names(env_name)
    action = move.action if action is None else int(action)
    if not 0 <= action < len(names):
        raise ValueError(f"action={action} out of range for {env_name}: ids 0..{len(names) - 1}")
    reason = move.reason if action == move.action else _plain_reason(env_name, names[action])
    reply: dict[str, Any] = {}
    if style == "full" and env_name in ("points24", "ezpoints"):
        reply["cards"] = [int(v) for v in _get(fields, "values")]
        reply["formula"] = " ".join(_formula_tokens(env_name, fields))
    elif style == "full" and env_name == "numberline":
        reply["current number"] = int(_get(fields, "current"))
        reply["target number"] = int(_get(fields, "target"))
    reply["thoughts"] = f"{describe_state(env_name, fields)} {reason}"
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
    A Sokoban state with no solution left (after a random push) is not recorded: the episode
    restarts. `history_length` K > 0 adds `fields["history"]` (the last K actions, oldest first,
    -1 for none, cleared at episode ends, as the rollout keeps it) for templates that list them;
    `style` is the template's (the reply format it asks for, see `expert_reply`).
    Deterministic given `key`.
    """
    _check_env(env_name)
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
        if env_name == "sokoban" and not move.solvable:
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
