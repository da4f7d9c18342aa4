"""What the agent is told of Sokoban (`AgentSpec`): RAGEN/VAGEN's goal, symbols and rules in our
own words, the grid as a slot, the optional list of cells, the A* expert and the cell grammar."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from gtr_turbo_jax.envs.agent import AgentSpec, Expert, Grounding, PositionsHint, Slot
from gtr_turbo_jax.envs.sokoban import expert, grounding, levels

# The text around a slot keeps `text.prompts`' tokenization rule: any text before, a space after.
FULL_TEXT = (
    "You are a Sokoban solver. Goal: push every box onto a target. Symbols: '#' wall, '_'"
    " floor, 'O' target, 'X' box, '√' box on a target, 'P' you, 'S' you on a target. Rules:"
    " you can push a box by walking into it, but never pull it or push two boxes at once; you"
    " cannot walk through walls. Actions: 'Up' moves you to the row above, 'Down' to the row"
    " below, 'Left' to the column on the left, 'Right' to the column on the right. Positions"
    " are (row, column), counted from (0, 0) at the top-left cell. The current grid, row by"
    " row:\n{grid} Choose your next action."
)
# Every thought is asked to state what it sees first, in the words of `grounding`'s grammar.
FULL_REPLY = (
    '{"thoughts": "first say where you, the boxes and the targets are, as (row, column), then'
    ' think about which move brings a box closer to a target", "action": "Up" or "Down" or'
    ' "Left" or "Right"}'
)
BRIEF_TEXT = (
    "Sokoban: push the box onto the target. '#' wall, '_' floor, 'O' target, 'X' box, '√' box"
    " on target, 'P' you, 'S' you on target. Grid:\n{grid} Next move?"
)
BRIEF_REPLY = '{"thoughts": "...", "action": "Up" or "Down" or "Left" or "Right"}'
COMPACT_TEXT = "Grid:\n{grid}"

# The optional symbolic hint (`prompt.positions`): where the player, boxes and targets are. A
# model reads positions off the grid by counting rows and columns, which a tiny CPU model does not
# learn in minutes (its rotary attention has no absolute positions); listed, they are a copy.
POSITIONS_TEXT = " Cells as (row, column):{player}{box}{target} (end of cells)."
COMPACT_POSITIONS_TEXT = " Cells:{player}{box}{target}"


def grid_slot(env: Any) -> Slot:
    """The grid row by row, one " symbol" per cell (a row's last one with the newline)."""
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


def cells_slot(env: Any, kind: str) -> Slot:
    """The cells of one kind of thing (`kind`: player, box or target), row-major, as
    " kind (row, column)" each. One slot per kind keeps `max_length` tight (their words differ in
    token count)."""
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


AGENT = AgentSpec(
    texts={"full": FULL_TEXT, "brief": BRIEF_TEXT, "compact": COMPACT_TEXT},
    replies={"full": FULL_REPLY, "brief": BRIEF_REPLY, "compact": BRIEF_REPLY},
    slots=lambda env: {"grid": grid_slot(env)},
    positions=PositionsHint(
        texts={"full": POSITIONS_TEXT, "brief": POSITIONS_TEXT, "compact": COMPACT_POSITIONS_TEXT},
        slots=lambda env: {kind: cells_slot(env, kind) for kind in ("player", "box", "target")},
    ),
    expert=Expert(
        move=expert.expert_move, plain_reason=expert.plain_reason, restart_unsolvable=True
    ),
    grounding=Grounding(describe=grounding.describe, claims=grounding.claims),
)
