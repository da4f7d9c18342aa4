"""Sokoban's expert (host side): a first move of a shortest solution, with its reason.

The move is the first of a shortest solution (`solver.solve`, A*, cached per grid); following it
solves a level in exactly its A* length. The reason names the plan's next push (which box goes
which way, from which cell) and, while the player walks to that cell, the gap it closes with both
numbers side by side ("row 4 to 1 is up"), so each decision in the thought is a comparison of
nearby numbers. The walk follows a fixed rule (`walk_move`: close the row gap first, then the
column gap, whenever that move is on a shortest walk; otherwise the reason says "but blocked")
instead of A*'s arbitrary tie-break between equally short walks. A state with no solution (a box
in a dead cell, a deadlock) gets `STUCK_ACTION` and `solvable=False`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gtr_turbo_jax.envs.agent import ExpertMove
from gtr_turbo_jax.envs.sokoban.levels import (
    ACTION_DELTAS,
    ACTION_NAMES,
    BOX,
    BOX_ON_TARGET,
    WALL,
)
from gtr_turbo_jax.envs.sokoban.solver import solve

STUCK_ACTION = 0  # "Up": any move is as good once no solution is left
DIRECTION_WORDS = ("up", "down", "left", "right")  # ACTION_DELTAS order


def field(fields: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in fields:
        raise ValueError(f"fields lack {key!r}; got keys {sorted(fields)}")
    return np.asarray(fields[key])


def _cell(rc: Sequence[int]) -> str:
    return f"({int(rc[0])}, {int(rc[1])})"


@functools.lru_cache(maxsize=1 << 16)
def _plan(grid_bytes: bytes, shape: tuple[int, int]) -> tuple[int, ...] | None:
    grid = np.frombuffer(grid_bytes, np.int8).reshape(shape)
    plan = solve(grid)
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


def walk_move(grid: np.ndarray, player: tuple[int, int], stand: tuple[int, int]) -> int:
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


def expert_move(env: Any, fields: Mapping[str, Any]) -> ExpertMove:
    """The expert's move in the state of `fields` (`grid`, `player`); `env` is not needed."""
    del env
    grid = field(fields, "grid").astype(np.int8)
    player = field(fields, "player")
    plan = _plan(grid.tobytes(), grid.shape)
    names = ACTION_NAMES
    if plan is None:
        stuck = names[STUCK_ACTION]
        reason = f"No box can reach a target any more, so any move will do: {stuck}."
        return ExpertMove(STUCK_ACTION, reason, False)
    if not plan:
        reason = f"Every box is on a target already: {names[STUCK_ACTION]}."
        return ExpertMove(STUCK_ACTION, reason, True)
    box, push, stand = _next_push(grid, player, plan)
    here = (int(player[0]), int(player[1]))
    goal = f"Push the box at {_cell(box)} {DIRECTION_WORDS[push]} from {_cell(stand)}"
    action = push if here == stand else walk_move(grid, here, stand)
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


def plain_reason(action_name: str) -> str:
    """The reason for a move that is not the expert's."""
    return f"I move {action_name}."
