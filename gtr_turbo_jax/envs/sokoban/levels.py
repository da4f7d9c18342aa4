"""Sokoban cells, the text grid, and level banks on disk (numpy, host side).

A level is an `int8[rows, cols]` grid of cell ids, the ids of gym-sokoban's `room_state`, printed
with RAGEN's symbols (`GRID_SYMBOLS[id]`). A bank is a stack of levels of one size and box count
with each level's shortest solution length, stored as an `.npz` file with the keys `levels` and
`solution_lengths`. Shipped banks live in `gtr_turbo_jax/assets/sokoban/`, one file per size, box
count and split, named `{rows}x{cols}_{boxes}box_{split}.npz`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

WALL, FLOOR, TARGET, BOX_ON_TARGET, BOX, PLAYER, PLAYER_ON_TARGET = range(7)
GRID_SYMBOLS: tuple[str, ...] = ("#", "_", "O", "√", "X", "P", "S")
ACTION_NAMES: tuple[str, ...] = ("Up", "Down", "Left", "Right")
# (row, col) step of each action, in ACTION_NAMES order.
ACTION_DELTAS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))
SPLITS: tuple[str, ...] = ("train", "test")

_REGENERATE_HINT = (
    "python -m gtr_turbo_jax.envs.sokoban.generator --size ROWS COLS --boxes N --out DIR"
)


def text_grid(grid: np.ndarray | Sequence[Sequence[int]]) -> str:
    """The grid as text, one line per row, one symbol of `GRID_SYMBOLS` per cell."""
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"a grid is a non-empty 2-D array of cell ids, got shape {grid.shape}")
    if grid.min() < 0 or grid.max() >= len(GRID_SYMBOLS):
        raise ValueError(
            f"cell ids must be in 0..{len(GRID_SYMBOLS) - 1}, got {grid.min()}..{grid.max()}"
        )
    return "\n".join("".join(GRID_SYMBOLS[int(c)] for c in row) for row in grid)


def parse_grid(text: str) -> np.ndarray:
    """Inverse of `text_grid`: `int8[rows, cols]` cell ids (blank lines and indentation ignored)."""
    rows = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError(f"a text grid needs rows of equal length, got {[len(r) for r in rows]}")
    ids = {s: i for i, s in enumerate(GRID_SYMBOLS)}
    bad = sorted({c for r in rows for c in r} - set(ids))
    if bad:
        raise ValueError(f"unknown grid symbol(s) {bad}; valid: {' '.join(GRID_SYMBOLS)}")
    return np.array([[ids[c] for c in r] for r in rows], np.int8)


def count_boxes(levels: np.ndarray) -> np.ndarray:
    """Boxes per level (`levels`: `[..., rows, cols]`)."""
    return ((levels == BOX) | (levels == BOX_ON_TARGET)).sum(axis=(-2, -1))


def check_levels(levels: np.ndarray, num_boxes: int, source: str = "levels") -> None:
    """Raise ValueError unless every level has one player and `num_boxes` boxes and targets."""
    player = ((levels == PLAYER) | (levels == PLAYER_ON_TARGET)).sum(axis=(-2, -1))
    targets = np.isin(levels, (TARGET, BOX_ON_TARGET, PLAYER_ON_TARGET)).sum(axis=(-2, -1))
    boxes = count_boxes(levels)
    for what, counts, want in (("players", player, 1), ("boxes", boxes, num_boxes)):
        wrong = np.flatnonzero(counts != want)
        if wrong.size:
            i = int(wrong[0])
            raise ValueError(f"{source}: level {i} has {counts[i]} {what}, expected {want}")
    wrong = np.flatnonzero(targets != boxes)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(f"{source}: level {i} has {targets[i]} targets for {boxes[i]} boxes")


@dataclasses.dataclass(frozen=True)
class LevelBank:
    """Levels of one size and box count, with the length of each one's shortest solution."""

    levels: np.ndarray  # int8[N, rows, cols] cell ids
    solution_lengths: np.ndarray  # int16[N] moves of the shortest solution

    def __post_init__(self):
        levels = np.asarray(self.levels)
        lengths = np.asarray(self.solution_lengths)
        if levels.ndim != 3 or levels.shape[0] == 0:
            raise ValueError(f"levels must be [N >= 1, rows, cols], got shape {levels.shape}")
        if lengths.shape != levels.shape[:1]:
            raise ValueError(f"solution_lengths {lengths.shape} do not match {len(levels)} levels")
        object.__setattr__(self, "levels", levels.astype(np.int8))
        object.__setattr__(self, "solution_lengths", lengths.astype(np.int16))

    def __len__(self) -> int:
        return self.levels.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.levels.shape[1]), int(self.levels.shape[2]))

    @property
    def num_boxes(self) -> int:
        return int(count_boxes(self.levels[0]))

    @property
    def players(self) -> np.ndarray:
        """int32[N, 2] (row, col) of each level's player."""
        is_player = ((self.levels == PLAYER) | (self.levels == PLAYER_ON_TARGET)).reshape(
            len(self), -1
        )
        rows, cols = np.divmod(np.argmax(is_player, axis=1), self.levels.shape[2])
        return np.stack([rows, cols], axis=1).astype(np.int32)


def save_bank(path: str | Path, bank: LevelBank) -> Path:
    """Write `bank` as a compressed `.npz` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: numpy would otherwise append ".npz"
        np.savez_compressed(f, levels=bank.levels, solution_lengths=bank.solution_lengths)
    return path


def load_bank(
    path: str | Path, size: Sequence[int] | None = None, num_boxes: int | None = None
) -> LevelBank:
    """Read a bank written by `save_bank`, checking its size and box count when given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Sokoban level bank {path} not found; write one with {_REGENERATE_HINT}"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"levels", "solution_lengths"} - set(data.files)
            if missing:
                raise ValueError(f"missing array(s) {', '.join(sorted(missing))}")
            bank = LevelBank(data["levels"], data["solution_lengths"])
        check_levels(bank.levels, bank.num_boxes, str(path))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(
            f"corrupt Sokoban level bank {path} ({err}); regenerate it with {_REGENERATE_HINT}"
        ) from None
    wrong_size = size is not None and bank.size != tuple(size)
    wrong_boxes = num_boxes is not None and bank.num_boxes != num_boxes
    if wrong_size or wrong_boxes:
        want_size = "x".join(map(str, size if size is not None else bank.size))
        want_boxes = num_boxes if num_boxes is not None else bank.num_boxes
        raise ValueError(
            f"Sokoban level bank {path} holds {bank.size[0]}x{bank.size[1]} levels with "
            f"{bank.num_boxes} box(es); expected {want_size} with {want_boxes} box(es)"
        )
    return bank


def bank_filename(size: Sequence[int], num_boxes: int, split: str) -> str:
    return f"{size[0]}x{size[1]}_{num_boxes}box_{split}.npz"


def shipped_bank_path(size: Sequence[int], num_boxes: int, split: str) -> Path | None:
    """Path of the bank shipped with the package for this size, box count and split, if any."""
    folder = importlib.resources.files("gtr_turbo_jax") / "assets" / "sokoban"
    path = Path(str(folder / bank_filename(size, num_boxes, split)))
    return path if path.is_file() else None


# Banks the package ships (size, boxes) -> (train levels, test levels, seed). The generator's
# `--shipped` flag rewrites exactly these; an unshipped size is generated in memory on first use
# (`generator.default_bank`).
SHIPPED_BANKS: dict[tuple[int, int, int], tuple[int, int, int]] = {
    (6, 6, 1): (5000, 200, 0),
    (8, 8, 2): (3000, 200, 1),
    (10, 10, 4): (2000, 200, 2),
}
