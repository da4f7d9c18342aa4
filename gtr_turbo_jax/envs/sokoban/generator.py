"""Sokoban level generation by reverse play (numpy, deterministic per seed), and the bank CLI.

As gym-sokoban does: carve a room by a random walk inside a ring of walls, put the boxes on their
targets and the player on a floor cell, then play backwards (the player walks and may pull the box
behind it), keeping the state seen whose boxes are farthest from their targets. A level is kept
only if its shortest solution (`solver.solve`) is at least `min_solution` moves; duplicates are
dropped, so the train and test splits of `generate_split` are disjoint.

    python -m gtr_turbo_jax.envs.sokoban.generator --size 6 6 --boxes 1 --n 2000 --out bank.npz
    python -m gtr_turbo_jax.envs.sokoban.generator --shipped   # rewrite the banks in assets/
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gtr_turbo_jax.envs.sokoban.levels import (
    ACTION_DELTAS,
    BOX,
    BOX_ON_TARGET,
    FLOOR,
    PLAYER,
    PLAYER_ON_TARGET,
    SHIPPED_BANKS,
    SPLITS,
    TARGET,
    WALL,
    LevelBank,
    bank_filename,
    load_bank,
    save_bank,
    shipped_bank_path,
)
from gtr_turbo_jax.envs.sokoban.solver import solve

__all__ = [
    "GENERATED_ON_USE",
    "check_room",
    "default_bank",
    "generate_bank",
    "generate_level",
    "generate_split",
    "load_bank",
    "main",
    "save_bank",
    "solve",
]

# Shapes carved around the walker at each step (row, col offsets), as gym-sokoban's masks.
_CARVE_PATTERNS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, 0),),
    ((0, 0), (0, 1)),
    ((0, 0), (1, 0)),
    ((0, 0), (0, 1), (1, 0), (1, 1)),
    ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)),
)
_TURN_PROBABILITY = 0.35
_CARVE_STEPS_PER_SIDE = 2.0
_PULL_PROBABILITY = 0.8
# The solver gives up on a candidate after this many states (the candidate is then dropped).
_SOLVER_BUDGET = 300_000
# Give up when this many candidates in a row bring no new level (the room is exhausted).
_MAX_MISSES = 5_000


def check_room(size: Sequence[int], num_boxes: int) -> tuple[int, int]:
    """Validate a room size and box count; returns the size as a `(rows, cols)` tuple."""
    if (
        isinstance(size, (str, bytes))
        or not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        raise ValueError(f"size must be (rows, cols), two ints >= 3, got {size!r}")
    rows, cols = int(size[0]), int(size[1])
    if rows < 3 or cols < 3:
        raise ValueError(f"size must be (rows, cols) with rows, cols >= 3, got {size!r}")
    if not isinstance(num_boxes, (int, np.integer)) or isinstance(num_boxes, bool) or num_boxes < 1:
        raise ValueError(f"num_boxes must be an int >= 1, got {num_boxes!r}")
    inside = (rows - 2) * (cols - 2)
    if inside < 3 * num_boxes + 2:
        raise ValueError(
            f"room {rows}x{cols} is too small for {num_boxes} box(es): its {inside} inner cells "
            f"must be at least 3 * num_boxes + 2 = {3 * num_boxes + 2}"
        )
    return rows, cols


def _carve_room(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """bool[rows, cols] floor mask carved by a random walk; the outer ring stays wall."""
    floor = np.zeros((rows, cols), bool)
    r, c = int(rng.integers(1, rows - 1)), int(rng.integers(1, cols - 1))
    dr, dc = ACTION_DELTAS[rng.integers(4)]
    for _ in range(int(_CARVE_STEPS_PER_SIDE * (rows + cols))):
        if rng.random() < _TURN_PROBABILITY:
            dr, dc = ACTION_DELTAS[rng.integers(4)]
        for pr, pc in _CARVE_PATTERNS[rng.integers(len(_CARVE_PATTERNS))]:
            if 0 < r + pr < rows - 1 and 0 < c + pc < cols - 1:
                floor[r + pr, c + pc] = True
        r, c = min(max(r + dr, 1), rows - 2), min(max(c + dc, 1), cols - 2)
    return floor


def _reverse_play(
    rng: np.random.Generator, floor: np.ndarray, targets: list[tuple[int, int]], player, moves: int
) -> tuple[list[tuple[int, int]], tuple[int, int]] | None:
    """Pull the boxes away from their targets; the farthest state seen (None if none moved)."""
    boxes = list(targets)  # boxes[i] started on targets[i]
    best, best_score = None, 0
    for _ in range(moves):
        dr, dc = ACTION_DELTAS[rng.integers(4)]
        dest = (player[0] + dr, player[1] + dc)
        if not floor[dest] or dest in boxes:
            continue
        behind = (player[0] - dr, player[1] - dc)
        if behind in boxes and rng.random() < _PULL_PROBABILITY:
            boxes[boxes.index(behind)] = player
        player = dest
        off = sum(b != t for b, t in zip(boxes, targets))
        spread = sum(abs(b[0] - t[0]) + abs(b[1] - t[1]) for b, t in zip(boxes, targets))
        if off * spread > best_score:
            best, best_score = (list(boxes), player), off * spread
    return best


def _walkable_region(
    floor: np.ndarray, boxes: set[tuple[int, int]], start: tuple[int, int]
) -> list[tuple[int, int]]:
    """Cells the player reaches from `start` without pushing, in a deterministic order."""
    region, frontier = {start}, [start]
    while frontier:
        r, c = frontier.pop()
        for dr, dc in ACTION_DELTAS:
            cell = (r + dr, c + dc)
            if floor[cell] and cell not in boxes and cell not in region:
                region.add(cell)
                frontier.append(cell)
    return sorted(region)


def generate_level(
    rng: np.random.Generator, size: Sequence[int], num_boxes: int
) -> np.ndarray | None:
    """One candidate level `int8[rows, cols]` (not yet checked by the solver), or None."""
    rows, cols = check_room(size, num_boxes)
    floor = _carve_room(rng, rows, cols)
    cells = np.argwhere(floor)
    if len(cells) < 2 * num_boxes + 2:
        return None
    chosen = rng.choice(len(cells), num_boxes + 1, replace=False)
    targets = [tuple(int(x) for x in cells[i]) for i in chosen[:num_boxes]]
    player = tuple(int(x) for x in cells[chosen[-1]])
    played = _reverse_play(rng, floor, targets, player, moves=5 * len(cells))
    if played is None:
        return None
    boxes, player = played
    # Start anywhere the player can walk to from where the reverse play left it: the level stays
    # solvable (walk back, then push) and the walk is part of the puzzle.
    region = _walkable_region(floor, set(boxes), player)
    player = region[rng.integers(len(region))]
    level = np.where(floor, FLOOR, WALL).astype(np.int8)
    for t in targets:
        level[t] = TARGET
    for b in boxes:
        level[b] = BOX_ON_TARGET if level[b] == TARGET else BOX
    level[player] = PLAYER_ON_TARGET if level[player] == TARGET else PLAYER
    return level


def generate_bank(
    size: Sequence[int],
    num_boxes: int,
    n: int,
    seed: int,
    min_solution: int = 5,
    progress: bool = False,
) -> LevelBank:
    """`n` distinct levels whose shortest solution is at least `min_solution` moves."""
    rows, cols = check_room(size, num_boxes)
    if n < 1:
        raise ValueError(f"n must be >= 1 levels, got {n}")
    rng = np.random.default_rng(seed)
    levels, lengths, seen = [], [], set()
    bar = _progress_bar(n, f"sokoban {rows}x{cols}/{num_boxes}", progress)
    misses = 0  # candidates in a row that gave no new level
    while len(levels) < n:
        if misses >= _MAX_MISSES:
            raise RuntimeError(
                f"only {len(levels)} of {n} distinct levels found for {rows}x{cols} with "
                f"{num_boxes} box(es) and min_solution={min_solution}; ask for fewer levels, a "
                "larger room or fewer boxes"
            )
        misses += 1
        level = generate_level(rng, (rows, cols), num_boxes)
        if level is None or level.tobytes() in seen:
            continue
        plan = solve(level, max_states=_SOLVER_BUDGET)
        if plan is None or len(plan) < min_solution:
            continue
        misses = 0
        seen.add(level.tobytes())
        levels.append(level)
        lengths.append(len(plan))
        bar.update(1)
    bar.close()
    return LevelBank(np.stack(levels), np.asarray(lengths))


def generate_split(
    size: Sequence[int],
    num_boxes: int,
    n_train: int,
    n_test: int,
    seed: int,
    min_solution: int = 5,
    progress: bool = False,
) -> dict[str, LevelBank]:
    """Disjoint `{"train": ..., "test": ...}` banks drawn from one generated bank."""
    bank = generate_bank(size, num_boxes, n_train + n_test, seed, min_solution, progress)
    return {
        "train": LevelBank(bank.levels[:n_train], bank.solution_lengths[:n_train]),
        "test": LevelBank(bank.levels[n_train:], bank.solution_lengths[n_train:]),
    }


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="level")


def _assets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "assets" / "sokoban"


# Levels generated on first use for a size that is not shipped (train, test).
GENERATED_ON_USE = (200, 50)


@functools.lru_cache(maxsize=16)
def default_bank(size: tuple[int, int], num_boxes: int, split: str) -> LevelBank:
    """The shipped bank, or for an unshipped size one generated deterministically (and cached)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = shipped_bank_path(size, num_boxes, split)
    if path is not None:
        return load_bank(path, size, num_boxes)
    n_train, n_test = GENERATED_ON_USE
    seed = 1000 * size[0] + 10 * size[1] + num_boxes
    try:
        banks = generate_split(size, num_boxes, n_train, n_test, seed=seed)
    except RuntimeError as err:
        raise ValueError(f"no default Sokoban bank for {size[0]}x{size[1]}: {err}") from None
    return banks[split]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gtr_turbo_jax.envs.sokoban.generator",
        description="Generate Sokoban level banks (.npz) by reverse play, BFS-checked.",
    )
    parser.add_argument("--size", type=int, nargs=2, metavar=("ROWS", "COLS"), default=(6, 6))
    parser.add_argument("--boxes", type=int, default=1)
    parser.add_argument("--n", type=int, default=2000, help="levels (train split with --test)")
    parser.add_argument("--test", type=int, default=0, help="also write a held-out split this big")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-solution", type=int, default=5)
    parser.add_argument("--out", type=Path, help=".npz file, or folder when --test is given")
    parser.add_argument("--shipped", action="store_true", help="rewrite the banks in assets/")
    args = parser.parse_args(argv)
    try:
        if args.shipped:
            jobs = [
                ((r, c), b, n_train, n_test, seed, _assets_dir())
                for (r, c, b), (n_train, n_test, seed) in SHIPPED_BANKS.items()
            ]
        elif args.out is None:
            parser.error("--out is required (or --shipped)")
        else:
            jobs = [(tuple(args.size), args.boxes, args.n, args.test, args.seed, args.out)]
        for size, boxes, n_train, n_test, seed, out in jobs:
            if n_test:
                banks = generate_split(
                    size, boxes, n_train, n_test, seed, args.min_solution, progress=True
                )
                for split, bank in banks.items():
                    path = save_bank(Path(out) / bank_filename(size, boxes, split), bank)
                    print(f"wrote {len(bank)} levels to {path}")
            else:
                bank = generate_bank(size, boxes, n_train, seed, args.min_solution, progress=True)
                print(f"wrote {len(bank)} levels to {save_bank(out, bank)}")
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
