"""Sokoban in pure JAX (gymnax 1.0 contract), with levels drawn from a bank on device.

Rules and rewards are gym-sokoban's (as RAGEN/VAGEN use them): actions Up, Down, Left, Right; a move
into a wall, or pushing a box into a wall or another box, leaves everything in place; every step
costs `step_penalty`; a push that raises the number of boxes on targets earns
`box_on_target_reward`, one that lowers it `box_off_target_penalty`; when every box is on a target
the episode ends (terminated) with `solved_reward` on top; a move that leaves everything in place
adds `blocked_move_penalty` (0 by default, not in gym-sokoban). Episodes are truncated after
`max_steps_in_episode` steps. Cells outside the grid count as walls.

The state is the observation's own grid of cell ids, plus the player's cell, the count of boxes
off target, the level index and the time: a reset copies one row of the bank (`Levels` holds each
level's player cell and count too), an observation needs no assembly, and a move reads three cells,
writes three and updates the count, with no search of the grid. Held-out evaluation: `split="test"`
or `params_for(default_bank(size, num_boxes, "test"))`, and `reset_to(index)` walks a whole split.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment

from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.envs.sokoban.agent import AGENT
from gtr_turbo_jax.envs.sokoban.generator import check_room, default_bank
from gtr_turbo_jax.envs.sokoban.levels import (
    ACTION_DELTAS,
    ACTION_NAMES,
    BOX,
    BOX_ON_TARGET,
    FLOOR,
    PLAYER,
    PLAYER_ON_TARGET,
    SPLITS,
    TARGET,
    WALL,
    LevelBank,
    check_levels,
    load_bank,
)
from gtr_turbo_jax.envs.sokoban.render import make_atlas, tile_grid


@struct.dataclass
class EnvState(environment.EnvState):
    grid: jax.Array  # int8[rows, cols] cell ids (`GRID_SYMBOLS` order)
    player: jax.Array  # int32[2] (row, col) of the player's cell in `grid`
    boxes_off_target: jax.Array  # int32 boxes not on a target: 0 means solved
    level: jax.Array  # int32 index of the level in `EnvParams.levels`


@struct.dataclass
class Levels:
    """A level bank on device, with what a reset needs precomputed (no search per reset)."""

    grids: jax.Array  # int8[N, rows, cols] cell ids
    players: jax.Array  # int32[N, 2] each level's player cell
    boxes_off_target: jax.Array  # int32[N] each level's boxes not on a target at the start

    @classmethod
    def from_bank(cls, bank: LevelBank) -> Levels:
        off = (bank.levels == BOX).sum(axis=(1, 2))
        return cls(jnp.asarray(bank.levels), jnp.asarray(bank.players), jnp.asarray(off, jnp.int32))


@struct.dataclass
class EnvParams:
    levels: Levels  # the bank resets draw from (`Sokoban.params_for` builds one from a file)
    max_steps_in_episode: int = 100
    step_penalty: float = -0.1
    box_on_target_reward: float = 1.0
    box_off_target_penalty: float = -1.0
    solved_reward: float = 10.0
    # Not gym-sokoban's: added when a move leaves everything in place (into a wall, or a box that
    # cannot move), which a greedy policy then repeats until the step limit. 0: gym-sokoban's rules.
    blocked_move_penalty: float = 0.0


class Sokoban(VisualEnv):
    """Sokoban on a `size` room with `num_boxes` boxes; levels from a bank (see `levels.py`).

    Constructor arguments (the static overrides of `envs.make("sokoban", ...)`):
      size: (rows, cols) of the room, outer walls included; default (6, 6).
      num_boxes: boxes (and targets) per level; default 1.
      split: "train" or "test": which split of the default bank `default_params` holds.
      bank: a `.npz` bank file (or a `LevelBank`) replacing the default bank (then `split` is moot).
      tile_size: pixels per cell side in the image; default 28 (one Qwen2.5-VL visual token).
      render_image: False leaves the image out of observations (text-only prompts, benchmarks).
    Observation: `{"image": uint8[rows*T, cols*T, 3], "grid": int8[rows, cols] cell ids,
    "player": int32[2]}`.
    """

    action_names = ACTION_NAMES
    agent_spec = AGENT

    def __init__(
        self,
        size: Sequence[int] = (6, 6),
        num_boxes: int = 1,
        split: str = "train",
        bank: str | Path | LevelBank | None = None,
        tile_size: int = 28,
        render_image: bool = True,
    ):
        self.size = check_room(size, num_boxes)
        self.num_boxes = int(num_boxes)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split = split
        self.atlas = jnp.asarray(make_atlas(tile_size))
        self.tile_size = int(tile_size)
        self.render_image = bool(render_image)
        if bank is None:
            bank = default_bank(self.size, self.num_boxes, split)
        elif isinstance(bank, (str, Path)):
            bank = load_bank(bank, self.size, self.num_boxes)
        self.bank = bank
        self._default_params = self.params_for(bank)

    def params_for(self, bank: LevelBank, **values) -> EnvParams:
        """`EnvParams` drawing levels from `bank` (e.g. the held-out split), other fields from
        `values` or their defaults."""
        if not isinstance(bank, LevelBank):
            raise ValueError(f"bank must be a .npz path or a LevelBank, got {type(bank).__name__}")
        if bank.size != self.size:
            raise ValueError(
                f"bank levels are {bank.size[0]}x{bank.size[1]}, the env's size is "
                f"{self.size[0]}x{self.size[1]}"
            )
        check_levels(bank.levels, self.num_boxes, "bank")
        return EnvParams(levels=Levels.from_bank(bank), **values)

    @property
    def name(self) -> str:
        return "Sokoban"

    @property
    def default_params(self) -> EnvParams:
        return self._default_params

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.size[0] * self.tile_size, self.size[1] * self.tile_size, 3)

    # -- levels -------------------------------------------------------------------------------
    def start_state(self, index: jax.Array, params: EnvParams) -> EnvState:
        """The state at the start of bank level `index`."""
        levels = params.levels
        chex.assert_shape(levels.grids, (None, *self.size))
        return EnvState(
            time=jnp.zeros((), jnp.int32),
            grid=levels.grids[index],
            player=levels.players[index],
            boxes_off_target=levels.boxes_off_target[index],
            level=jnp.asarray(index, jnp.int32),
        )

    def _draw_start(self, key: jax.Array, params: EnvParams) -> EnvState:
        # `bits % N` is biased by at most N / 2**32, far below anything measurable here.
        index = jax.random.bits(key, (), jnp.uint32) % params.levels.grids.shape[0]
        return self.start_state(index.astype(jnp.int32), params)

    def reset_to(self, index: jax.Array, params: EnvParams | None = None):
        """`(obs, state)` at the start of bank level `index` (evaluation over a whole split)."""
        params = self.default_params if params is None else params
        state = self.start_state(index, params)
        return self.observe(jax.random.key(0), state, None, params), state

    def reset_env(self, key: jax.Array, params: EnvParams):
        state = self._draw_start(key, params)
        return self.observe(key, state, None, params), state

    # -- dynamics -----------------------------------------------------------------------------
    def _cell(self, grid: jax.Array, pos: jax.Array) -> jax.Array:
        """The cell id at `pos`, WALL outside the grid."""
        rows, cols = self.size
        inside = (pos[0] >= 0) & (pos[0] < rows) & (pos[1] >= 0) & (pos[1] < cols)
        cell = grid[jnp.clip(pos[0], 0, rows - 1), jnp.clip(pos[1], 0, cols - 1)]
        return jnp.where(inside, cell, jnp.int8(WALL))

    def move(self, state: EnvState, action: jax.Array, params: EnvParams):
        """One deterministic move: `(state, reward, terminated, info)`."""
        grid, here = state.grid, state.player
        delta = jnp.asarray(ACTION_DELTAS, jnp.int32)[action]
        dest, beyond = here + delta, here + 2 * delta
        cell_here = grid[here[0], here[1]]
        cell_dest, cell_beyond = self._cell(grid, dest), self._cell(grid, beyond)
        box_ahead = (cell_dest == BOX) | (cell_dest == BOX_ON_TARGET)
        free_beyond = (cell_beyond == FLOOR) | (cell_beyond == TARGET)
        blocked = (cell_dest == WALL) | (box_ahead & ~free_beyond)
        push = box_ahead & ~blocked

        # Whether each of the three cells is a target, read off its id.
        target_here = (cell_here == PLAYER_ON_TARGET).astype(jnp.int8)
        target_dest = ((cell_dest == TARGET) | (cell_dest == BOX_ON_TARGET)).astype(jnp.int8)
        target_beyond = (cell_beyond == TARGET).astype(jnp.int8)
        # Three writes in order (here, dest, beyond); a blocked move rewrites the player's cell
        # with its own id three times, and a plain move writes dest twice.
        player = jnp.where(blocked, here, dest)
        pushed_to = jnp.where(push, beyond, player)
        id_here = jnp.where(blocked, cell_here, FLOOR + target_here)
        id_dest = jnp.where(blocked, cell_here, PLAYER + target_dest)
        id_beyond = jnp.where(push, BOX - target_beyond, id_dest)
        grid = grid.at[here[0], here[1]].set(id_here.astype(jnp.int8))
        grid = grid.at[player[0], player[1]].set(id_dest.astype(jnp.int8))
        grid = grid.at[pushed_to[0], pushed_to[1]].set(id_beyond.astype(jnp.int8))

        change = jnp.where(push, target_beyond - target_dest, 0).astype(jnp.int32)
        boxes_off_target = state.boxes_off_target - change  # a count, not a search of the grid
        solved = boxes_off_target == 0
        reward = (
            params.step_penalty
            + jnp.where(change > 0, params.box_on_target_reward, 0.0)
            + jnp.where(change < 0, params.box_off_target_penalty, 0.0)
            + jnp.where(solved, params.solved_reward, 0.0)
            + jnp.where(blocked, params.blocked_move_penalty, 0.0)
        ).astype(jnp.float32)
        state = state.replace(
            grid=grid, player=player, boxes_off_target=boxes_off_target, time=state.time + 1
        )
        return state, reward, solved, {"pushed": push}

    def step_env(self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams):
        state, reward, terminated, info = self.move(state, action, params)
        return self.observe(key, state, action, params), state, reward, terminated, info

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key, state, action, params=None):
        """gymnax's step (automatic reset, `info["final_observation"]`), arranged for speed: a
        move draws no randomness, so the whole key goes to the reset (no split), and the
        observation is drawn once from the next state instead of selected between two."""
        params = self.default_params if params is None else params
        action = self.clip_action(action)
        stepped, reward, terminated, info = self.move(state, action, params)
        truncated = self.is_truncated(stepped, params)
        done = terminated | truncated
        restarted = self._draw_start(key, params)
        next_state = jax.tree.map(lambda r, s: jax.lax.select(done, r, s), restarted, stepped)
        info = {
            **info,
            "terminated": terminated,
            "truncated": truncated,
            "final_observation": self.observe(key, stepped, action, params),
        }
        obs = self.observe(key, next_state, action, params)
        return obs, next_state, reward, terminated, truncated, info

    def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
        return state.boxes_off_target == 0

    # -- observations -------------------------------------------------------------------------
    def prompt_fields(self, state: EnvState, params: EnvParams) -> dict[str, jax.Array]:
        return {"grid": state.grid, "player": state.player}

    def render(self, state: EnvState, params: EnvParams) -> jax.Array:
        return tile_grid(self.atlas, state.grid)

    def observe(self, key, state, action, params) -> dict[str, jax.Array]:
        fields = self.prompt_fields(state, params)
        if not self.render_image:
            return fields
        return {"image": self.render(state, params), **fields}
