"""EZPoints (gym_cards `EZPoints-v0`): make 12 from two cards with `+` and `*`.

Deal (gym_cards): the first card's rank is uniform in 2..13 (J, Q, K count 10); when its value
divides 12 the second card's value is 12 / value or 12 - value with equal chance, otherwise
12 - value (drawn as that number, never a face card); the two are swapped with chance 1/2. Always
solvable. 13 actions `1..10 + * =`; length cap 5; rules and rewards in `formula.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gtr_turbo_jax.envs.cards.agent import EZPOINTS
from gtr_turbo_jax.envs.cards.formula import FormulaCardGame
from gtr_turbo_jax.envs.cards.sampling import below, coin, random_words

TARGET = 12


class EZPoints(FormulaCardGame):
    """Overrides: `max_formula_length=5` (constructor); `max_steps_in_episode=300`,
    `correct_reward=10.0`, `penalty=-1.0` (params). The target is 12: the deal is built for it."""

    num_cards = 2
    operators = ("+", "*")
    image_width = 224
    agent_spec = EZPOINTS

    def __init__(self, max_formula_length: int = 5):
        super().__init__(TARGET, max_formula_length)

    @property
    def name(self) -> str:
        return "EZPoints-gtr"

    def deal(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        words = random_words(key, 5)
        first = below(words[0], 12) + 2
        value = jnp.minimum(first, 10)
        by_product = (TARGET % value == 0) & coin(words[1])
        second = jnp.where(by_product, TARGET // value, TARGET - value)
        ranks = jnp.stack([first, second])
        ranks = jnp.where(coin(words[2]), ranks[::-1], ranks)
        return ranks.astype(jnp.int32), below(words[3:], 4)
