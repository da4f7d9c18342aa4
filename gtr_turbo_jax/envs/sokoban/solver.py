"""Shortest Sokoban solutions, in moves (pure Python; the oracle for level banks and teachers).

A* over (player cell, box set), one move per edge, so the first goal popped is a shortest solution.
Cells are flat indices of the level padded with a ring of walls (no bounds checks), a box set is
the bit mask of its cells (a Python int), and the heuristic is the sum over boxes of the fewest
pushes that bring that box onto any target ignoring the other boxes: every move changes it by at
most one, so it is consistent and the search optimal. Cells from which no target can be reached
by pushes are dead: a box is never pushed onto one.
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from gtr_turbo_jax.envs.sokoban.levels import (
    ACTION_DELTAS,
    BOX,
    BOX_ON_TARGET,
    GRID_SYMBOLS,
    PLAYER,
    PLAYER_ON_TARGET,
    TARGET,
    WALL,
)

_UNREACHABLE = 1 << 30


def _push_distances(floor: list[bool], targets: list[int], steps: list[int]) -> list[int]:
    """Fewest pushes from each cell to any target for a lone box (`_UNREACHABLE` if none)."""
    dist = [_UNREACHABLE] * len(floor)
    queue = deque(targets)
    for t in targets:
        dist[t] = 0
    while queue:
        cell = queue.popleft()
        for step in steps:  # a box at `cell - step` pushed by a player at `cell - 2 step`
            box, player = cell - step, cell - 2 * step
            if floor[box] and floor[player] and dist[box] == _UNREACHABLE:
                dist[box] = dist[cell] + 1
                queue.append(box)
    return dist


def solve(level: np.ndarray, max_states: int = 2_000_000) -> list[int] | None:
    """Shortest action sequence (ids into `ACTION_NAMES`) that puts every box on a target.

    `level` is an `int[rows, cols]` grid of cell ids; cells outside it count as walls. Returns `[]`
    for a solved level and None when there is no solution, or none found after expanding
    `max_states` states.
    """
    grid = np.asarray(level)
    if grid.ndim != 2 or grid.min() < 0 or grid.max() >= len(GRID_SYMBOLS):
        raise ValueError(f"a level is a 2-D grid of cell ids 0..{len(GRID_SYMBOLS) - 1}")
    padded = np.pad(grid, 1, constant_values=WALL)
    width = padded.shape[1]
    cells = padded.reshape(-1).tolist()
    players = [i for i, c in enumerate(cells) if c in (PLAYER, PLAYER_ON_TARGET)]
    if len(players) != 1:
        raise ValueError(f"a level needs exactly one player, found {len(players)}")
    floor = [c != WALL for c in cells]
    targets = [i for i, c in enumerate(cells) if c in (TARGET, BOX_ON_TARGET, PLAYER_ON_TARGET)]
    boxes = [i for i, c in enumerate(cells) if c in (BOX, BOX_ON_TARGET)]
    if len(boxes) > len(targets):
        raise ValueError(
            f"a level with {len(boxes)} boxes needs as many targets, has {len(targets)}"
        )
    steps = [dr * width + dc for dr, dc in ACTION_DELTAS]
    push_dist = _push_distances(floor, targets, steps)
    target_mask = sum(1 << t for t in targets)

    start_boxes = sum(1 << b for b in boxes)
    if start_boxes & ~target_mask == 0:
        return []
    h0 = sum(push_dist[b] for b in boxes)
    if h0 >= _UNREACHABLE:
        return None
    num_cells = len(cells)
    start = start_boxes * num_cells + players[0]
    parent: dict[int, tuple[int, int]] = {start: (-1, -1)}
    best_moves = {start: 0}
    # Entries (f, insertion order, moves, h, player, boxes); the order makes ties deterministic.
    frontier = [(h0, 0, 0, h0, players[0], start_boxes)]
    pushed = 0
    expanded = 0
    while frontier:
        _, _, moves, h, player, box_mask = heapq.heappop(frontier)
        key = box_mask * num_cells + player
        if best_moves[key] < moves:
            continue  # a stale entry: reached more cheaply since
        expanded += 1
        if expanded > max_states:
            return None
        for action, step in enumerate(steps):
            dest = player + step
            if not floor[dest]:
                continue
            new_mask, new_h = box_mask, h
            if box_mask >> dest & 1:
                beyond = dest + step
                if not floor[beyond] or box_mask >> beyond & 1 or push_dist[beyond] == _UNREACHABLE:
                    continue
                new_mask = box_mask ^ (1 << dest) ^ (1 << beyond)
                new_h = h - push_dist[dest] + push_dist[beyond]
            new_key = new_mask * num_cells + dest
            if best_moves.get(new_key, _UNREACHABLE) <= moves + 1:
                continue
            best_moves[new_key] = moves + 1
            parent[new_key] = (key, action)
            if new_mask & ~target_mask == 0:
                return _backtrack(parent, new_key)
            pushed += 1
            heapq.heappush(frontier, (moves + 1 + new_h, pushed, moves + 1, new_h, dest, new_mask))
    return None


def _backtrack(parent: dict[int, tuple[int, int]], key: int) -> list[int]:
    actions = []
    while True:
        key, action = parent[key]
        if action < 0:
            return actions[::-1]
        actions.append(action)
