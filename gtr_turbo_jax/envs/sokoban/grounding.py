"""Sokoban's thought-grounding grammar (`rollout.metrics`): its writer and its checker.

Claims (case-insensitive; every claim counts once): "player at (r, c)", "box at (r, c)", "box on
target at (r, c)", "target at (r, c)", with (row, column) counted from 0 at the top-left cell of the
grid (outer walls included); plurals and lists are fine: "boxes at (1, 2), (3, 4)". A box on a
target is also a box and a target; the player's cell is the `player` field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from gtr_turbo_jax.envs.sokoban.expert import field
from gtr_turbo_jax.envs.sokoban.levels import BOX, BOX_ON_TARGET, PLAYER_ON_TARGET, TARGET

_COORD = r"\(\s*\d+\s*,\s*\d+\s*\)"
_CLAIM = re.compile(
    r"\b(player|you|box(?:es)?\s+on\s+targets?|box(?:es)?|targets?)(?:\s+(?:is|are))?\s+at\s+"
    rf"({_COORD}(?:\s*(?:,|and)\s*{_COORD})*)",
    re.IGNORECASE,
)
_CELLS_OF = {
    "box": (BOX, BOX_ON_TARGET),
    "box on target": (BOX_ON_TARGET,),
    "target": (TARGET, BOX_ON_TARGET, PLAYER_ON_TARGET),
}


def describe(env: Any, fields: Mapping[str, Any]) -> str:
    """Every claim about the state: the player, each box (row-major), each bare target."""
    del env
    grid, player = field(fields, "grid"), field(fields, "player")
    claims = [f"Player at ({int(player[0])}, {int(player[1])})"]
    for r, c in zip(*np.nonzero(np.isin(grid, (BOX, BOX_ON_TARGET)))):
        what = "box on target" if grid[r, c] == BOX_ON_TARGET else "box"
        claims.append(f"{what} at ({r}, {c})")
    for r, c in zip(*np.nonzero(np.isin(grid, (TARGET, PLAYER_ON_TARGET)))):
        claims.append(f"target at ({r}, {c})")
    return ", ".join(claims) + "."


def claims(env: Any, text: str, fields: Mapping[str, Any]) -> list[bool]:
    """Truth of each claim `text` makes, in the order it makes them."""
    del env
    grid, player = field(fields, "grid"), field(fields, "player")
    found = []
    for match in _CLAIM.finditer(text):
        kind = " ".join(match.group(1).lower().split())
        kind = re.sub(r"^boxes", "box", re.sub(r"targets$", "target", kind))
        for coord in re.findall(r"\d+\s*,\s*\d+", match.group(2)):
            r, c = (int(x) for x in coord.split(","))
            inside = r < grid.shape[0] and c < grid.shape[1]
            if kind in ("player", "you"):
                found.append((r, c) == (int(player[0]), int(player[1])))
            else:
                found.append(inside and int(grid[r, c]) in _CELLS_OF[kind])
    return found
