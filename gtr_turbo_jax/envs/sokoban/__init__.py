"""Sokoban: the pure-JAX env, its level banks (reverse-play generator, shortest-path solver), a
pure-Python twin of the same rules, and what the agent is told of it (`agent.py`: the `AgentSpec`,
with the expert in `expert.py` and the thought-grounding grammar in `grounding.py`)."""

from gtr_turbo_jax.envs.sokoban.env import EnvParams, EnvState, Levels, Sokoban
from gtr_turbo_jax.envs.sokoban.generator import (
    default_bank,
    generate_bank,
    generate_level,
    generate_split,
)
from gtr_turbo_jax.envs.sokoban.levels import (
    ACTION_NAMES,
    GRID_SYMBOLS,
    LevelBank,
    load_bank,
    parse_grid,
    save_bank,
    text_grid,
)
from gtr_turbo_jax.envs.sokoban.python_env import PySokoban
from gtr_turbo_jax.envs.sokoban.render import make_atlas
from gtr_turbo_jax.envs.sokoban.solver import solve

__all__ = [
    "ACTION_NAMES",
    "GRID_SYMBOLS",
    "EnvParams",
    "EnvState",
    "LevelBank",
    "Levels",
    "PySokoban",
    "Sokoban",
    "default_bank",
    "generate_bank",
    "generate_level",
    "generate_split",
    "load_bank",
    "make_atlas",
    "parse_grid",
    "save_bank",
    "solve",
    "text_grid",
]
