"""Sokoban in plain Python and numpy: the test reference for the JAX env, and a Python env.

Same rules, rewards, observations and constructor arguments as `env.Sokoban`, written
independently and step by step (gym-sokoban's way: look at the cell ahead, then the one beyond).
A `PythonEnv` (`envs/host.py`): `gtr-turbo train --env=gtr_turbo_jax.envs.sokoban.python_env:PySokoban`
trains it through the host rollout, on the JAX env's prompt (its `AgentSpec`). Level choice:
`reset(seed)` starts level `seed % N`, as `Sokoban` draws `bits(key) % N` from the key whose bits
the host adapter hands over as the seed, so the same run key plays the same levels in both;
`reset_to(index)` starts a given level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gtr_turbo_jax.envs.host import PythonEnv
from gtr_turbo_jax.envs.sokoban.agent import AGENT
from gtr_turbo_jax.envs.sokoban.generator import default_bank
from gtr_turbo_jax.envs.sokoban.levels import (
    ACTION_DELTAS,
    ACTION_NAMES,
    BOX,
    BOX_ON_TARGET,
    FLOOR,
    PLAYER,
    PLAYER_ON_TARGET,
    TARGET,
    WALL,
    LevelBank,
    load_bank,
)
from gtr_turbo_jax.envs.sokoban.render import make_atlas, tile_grid_np


class PySokoban(PythonEnv):
    """One Sokoban game over the levels of `bank` (a `LevelBank`, an `int8[N, rows, cols]` array
    or an `.npz` path; default: the shipped bank of `size`, `num_boxes` and `split`, as
    `Sokoban`'s)."""

    action_names = ACTION_NAMES
    agent_spec = AGENT  # `Sokoban`'s: the same prompt, reply format, expert and grounding

    def __init__(
        self,
        size: tuple[int, int] = (6, 6),
        num_boxes: int = 1,
        split: str = "train",
        bank: LevelBank | np.ndarray | str | Path | None = None,
        tile_size: int = 28,
        render_image: bool = True,
        max_steps_in_episode: int = 100,
        step_penalty: float = -0.1,
        box_on_target_reward: float = 1.0,
        box_off_target_penalty: float = -1.0,
        solved_reward: float = 10.0,
        blocked_move_penalty: float = 0.0,
    ):
        if bank is None:
            bank = default_bank(tuple(size), num_boxes, split)
        elif isinstance(bank, (str, Path)):
            bank = load_bank(bank)
        self.levels = np.asarray(bank.levels if isinstance(bank, LevelBank) else bank, np.int8)
        if self.levels.ndim != 3 or len(self.levels) == 0:
            raise ValueError(f"levels must be [N >= 1, rows, cols], got shape {self.levels.shape}")
        if max_steps_in_episode < 1:
            raise ValueError(f"max_steps_in_episode must be >= 1, got {max_steps_in_episode}")
        self.size = tuple(int(n) for n in self.levels.shape[1:])
        self.num_boxes = int(np.isin(self.levels[0], (BOX, BOX_ON_TARGET)).sum())
        self.max_steps_in_episode = int(max_steps_in_episode)
        self.step_penalty = float(step_penalty)
        self.box_on_target_reward = float(box_on_target_reward)
        self.box_off_target_penalty = float(box_off_target_penalty)
        self.solved_reward = float(solved_reward)
        self.blocked_move_penalty = float(blocked_move_penalty)
        self.tile_size = int(tile_size)
        self.atlas = make_atlas(tile_size)
        self.render_image = render_image
        self.level_index = -1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.size[0] * self.tile_size, self.size[1] * self.tile_size, 3)

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        return self.reset_to(int(seed) % len(self.levels))

    def reset_to(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self.levels):
            raise ValueError(f"level index {index} out of range 0..{len(self.levels) - 1}")
        level = self.levels[index]
        self.level_index = index
        self.walls = level == WALL
        self.targets = np.isin(level, (TARGET, BOX_ON_TARGET, PLAYER_ON_TARGET))
        self.boxes = {
            (int(r), int(c)) for r, c in np.argwhere(np.isin(level, (BOX, BOX_ON_TARGET)))
        }
        (player,) = np.argwhere(np.isin(level, (PLAYER, PLAYER_ON_TARGET)))
        self.player = (int(player[0]), int(player[1]))
        self.time = 0
        self.done = False
        return self._observation()

    def _is_wall(self, cell: tuple[int, int]) -> bool:
        rows, cols = self.walls.shape
        r, c = cell
        return not (0 <= r < rows and 0 <= c < cols) or bool(self.walls[r, c])

    def _boxes_on_target(self) -> int:
        return sum(bool(self.targets[b]) for b in self.boxes)

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        if not isinstance(action, (int, np.integer)) or not 0 <= action < len(ACTION_NAMES):
            raise ValueError(
                f"action {action!r} out of range: valid ids are 0..{len(ACTION_NAMES) - 1} "
                f"({', '.join(ACTION_NAMES)})"
            )
        if self.level_index < 0 or self.done:
            raise RuntimeError("call reset() before step(): the episode has not started or ended")
        dr, dc = ACTION_DELTAS[action]
        r, c = self.player
        ahead, beyond = (r + dr, c + dc), (r + 2 * dr, c + 2 * dc)
        before = self._boxes_on_target()
        reward = self.step_penalty
        if self._is_wall(ahead):
            reward += self.blocked_move_penalty
        elif ahead in self.boxes:
            if not self._is_wall(beyond) and beyond not in self.boxes:
                self.boxes.remove(ahead)
                self.boxes.add(beyond)
                self.player = ahead
            else:
                reward += self.blocked_move_penalty
        else:
            self.player = ahead
        after = self._boxes_on_target()
        if after > before:
            reward += self.box_on_target_reward
        elif after < before:
            reward += self.box_off_target_penalty
        terminated = after == len(self.boxes)
        if terminated:
            reward += self.solved_reward
        self.time += 1
        truncated = self.time >= self.max_steps_in_episode
        self.done = terminated or truncated
        return self._observation(), reward, terminated, truncated, {"boxes_on_target": after}

    def grid(self) -> np.ndarray:
        grid = np.where(self.walls, WALL, np.where(self.targets, TARGET, FLOOR)).astype(np.int8)
        for b in self.boxes:
            grid[b] = BOX_ON_TARGET if self.targets[b] else BOX
        grid[self.player] = PLAYER_ON_TARGET if self.targets[self.player] else PLAYER
        return grid

    def _observation(self) -> dict[str, np.ndarray]:
        grid = self.grid()
        obs = {"grid": grid, "player": np.asarray(self.player, np.int32)}
        if self.render_image:
            obs = {"image": tile_grid_np(self.atlas, grid), **obs}
        return obs
