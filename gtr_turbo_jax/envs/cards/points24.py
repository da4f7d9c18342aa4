"""Points24 (gym_cards `Points24-v0`): make 24 from four cards with `+ - * / ( )`.

Four cards, ranks 1..13 drawn uniformly with random suits (J, Q, K count 10); 17 actions
`1..10 + - * / ( ) =`; rules and rewards in `formula.py`. `solvable_only=True` deals uniformly among
the rank tuples that can make `target` (off by default, as in the paper).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gtr_turbo_jax.envs.cards.agent import POINTS24
from gtr_turbo_jax.envs.cards.checks import check_bool
from gtr_turbo_jax.envs.cards.formula import FormulaCardGame
from gtr_turbo_jax.envs.cards.sampling import below, random_words
from gtr_turbo_jax.envs.cards.solver import solvable_table


class Points24(FormulaCardGame):
    """Overrides: `target=24`, `max_formula_length=20`, `solvable_only=False` (constructor);
    `max_steps_in_episode=300`, `correct_reward=10.0`, `penalty=-1.0` (params)."""

    num_cards = 4
    operators = ("+", "-", "*", "/", "(", ")")
    image_width = 448
    agent_spec = POINTS24

    def __init__(self, target: int = 24, max_formula_length: int = 20, solvable_only: bool = False):
        check_bool("solvable_only", solvable_only)
        super().__init__(target, max_formula_length)
        self.solvable_only = bool(solvable_only)
        if self.solvable_only:
            self._solvable_deals = jnp.asarray(solvable_rank_tuples(self.target))

    @property
    def name(self) -> str:
        return "Points24-gtr"

    def deal(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        words = random_words(key, 2 * self.num_cards)
        suits = below(words[: self.num_cards], 4)
        if not self.solvable_only:
            return below(words[self.num_cards :], 13) + 1, suits
        flat = self._solvable_deals[below(words[-1], self._solvable_deals.shape[0])]
        ranks = jnp.stack([(flat // 13**p) % 13 for p in (3, 2, 1, 0)]) + 1
        return ranks.astype(jnp.int32), suits


def solvable_rank_tuples(target: int = 24) -> np.ndarray:
    """int32[k]: the solvable ordered rank tuples (r1..r4 in 1..13) as base-13 numbers of r - 1."""
    values = np.minimum(np.arange(1, 14), 10) - 1  # rank index -> value index
    table = solvable_table(target, 4, 10)
    by_rank = table[np.ix_(values, values, values, values)]
    flat = np.flatnonzero(by_rank).astype(np.int32)
    if flat.size == 0:
        raise ValueError(
            f"no four cards make target={target}; solvable_only needs a reachable target"
        )
    return flat
