"""The gym_cards games of RL4VLM in pure JAX: Points24, EZPoints, NumberLine, Blackjack.

Rules follow RL4VLM's `gym_cards` and Gymnasium's `blackjack.py` (METHOD.md section 5); each module
documents its rules and the points where we chose. Host-side solvers live in `solver.py` (a plain
Python transcription of the formula games' rules is the tests' `support/cards_reference.py`). What
the agent is told of each game is in `agent.py` (`AgentSpec`), with the experts in `expert.py` and
the thought-grounding grammars in `grounding.py`.
"""

from gtr_turbo_jax.envs.cards.blackjack import Blackjack, BlackjackParams, BlackjackState
from gtr_turbo_jax.envs.cards.ezpoints import EZPoints
from gtr_turbo_jax.envs.cards.formula import FormulaParams, FormulaState, evaluate_formula
from gtr_turbo_jax.envs.cards.numberline import NumberLine, NumberLineParams, NumberLineState
from gtr_turbo_jax.envs.cards.points24 import Points24
from gtr_turbo_jax.envs.cards.solver import formula_actions, solve, solve24, solve_ezpoints

__all__ = [
    "Blackjack",
    "BlackjackParams",
    "BlackjackState",
    "EZPoints",
    "FormulaParams",
    "FormulaState",
    "NumberLine",
    "NumberLineParams",
    "NumberLineState",
    "Points24",
    "evaluate_formula",
    "formula_actions",
    "solve",
    "solve24",
    "solve_ezpoints",
]
