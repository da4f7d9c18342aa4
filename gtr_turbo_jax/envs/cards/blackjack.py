"""Blackjack (gym_cards `Blackjack-v0`): Gymnasium's `Blackjack-v1` with the table as a picture.

Rules (Gymnasium `blackjack.py`): an infinite deck, ranks 1..13 uniform (J, Q, K count 10, an ace 1
or 11). The dealer gets one card face up and one face down, the player two. `stand` (0): the dealer
draws until the hand is worth 17 or more (an ace counts 11 when that does not bust, so the dealer
stands on soft 17), then +1 win, -1 loss, 0 draw, a bust scoring 0; `hit` (1): one more card, -1
and the end on a bust, else 0. Options as Gymnasium's: `natural` pays 1.5 for a winning two-card
21, `sab` (Sutton & Barto) makes a player's natural win unless the dealer has one too.

Picture (gym_cards): "DEALER" with the face-up card and a face-down card (the hidden card stays
hidden, also on the final frame), "PLAYER" with the player's cards, five per row (the first ten
are drawn; a live hand rarely has more than six). gym_cards shows a value-10 card always as J, Q or
K; here the rank is drawn 1..13 and shown as it is (10 included), the same value distribution.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment

from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.envs.cards import render
from gtr_turbo_jax.envs.cards.agent import BLACKJACK
from gtr_turbo_jax.envs.cards.sampling import below, random_words

PLAYER_CAPACITY = 22  # 21 aces make 21; the 22nd card busts
DEALER_DRAWS = 10  # the most cards a dealer can need after the first two (checked in the tests)
DEALER_CAPACITY = 2 + DEALER_DRAWS
STAND, HIT = 0, 1


@struct.dataclass
class BlackjackState(environment.EnvState):
    player_ranks: jax.Array  # int32[PLAYER_CAPACITY]: 1..13, 0 = no card
    player_suits: jax.Array  # int32[PLAYER_CAPACITY]: 0..3
    dealer_ranks: jax.Array  # int32[DEALER_CAPACITY]: [0] face up, [1] face down, then draws
    dealer_suits: jax.Array  # int32[DEALER_CAPACITY]


@struct.dataclass
class BlackjackParams(environment.EnvParams):
    max_steps_in_episode: int = 300  # gym_cards' registration; a hand ends long before
    natural: bool = False
    sab: bool = False


def hand_value(ranks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(total, usable_ace) of a hand given as ranks with 0 for empty slots."""
    values = jnp.minimum(ranks, 10)
    hard = values.sum()
    usable_ace = (ranks == 1).any() & (hard + 10 <= 21)
    return hard + 10 * usable_ace.astype(jnp.int32), usable_ace


def is_natural(ranks: jax.Array) -> jax.Array:
    """An ace and a ten-valued card, nothing else."""
    values = jnp.minimum(ranks, 10)
    return ((ranks > 0).sum() == 2) & (values == 1).any() & (values == 10).any()


class Blackjack(VisualEnv):
    """No constructor overrides; params `max_steps_in_episode=300`, `natural=False`, `sab=False`."""

    action_names = ("stand", "hit")
    agent_spec = BLACKJACK

    CARD_HEIGHT, CARD_WIDTH = 84, 60
    CARDS_PER_ROW, ROWS = 5, 2
    HEIGHT, WIDTH = 336, 336
    TEXT_SCALE = 3

    def __init__(self):
        self._build_pictures()

    @property
    def name(self) -> str:
        return "Blackjack-gtr"

    @property
    def default_params(self) -> BlackjackParams:
        return BlackjackParams()

    def reset_env(self, key: jax.Array, params: BlackjackParams):
        ranks, suits = _draw(random_words(key, 8))
        state = BlackjackState(
            time=jnp.int32(0),
            player_ranks=jnp.zeros(PLAYER_CAPACITY, jnp.int32).at[:2].set(ranks[2:]),
            player_suits=jnp.zeros(PLAYER_CAPACITY, jnp.int32).at[:2].set(suits[2:]),
            dealer_ranks=jnp.zeros(DEALER_CAPACITY, jnp.int32).at[:2].set(ranks[:2]),
            dealer_suits=jnp.zeros(DEALER_CAPACITY, jnp.int32).at[:2].set(suits[:2]),
        )
        return self.observe(key, state, None, params), state

    def step_env(self, key, state: BlackjackState, action, params: BlackjackParams):
        ranks, suits = _draw(random_words(key, 2 * (1 + DEALER_DRAWS)))
        hit = jnp.asarray(action, jnp.int32) == HIT

        # hit: the first card into the next free slot.
        rank, suit = ranks[0], suits[0]
        slot = (state.player_ranks > 0).sum()
        player_ranks = jnp.where(hit, state.player_ranks.at[slot].set(rank), state.player_ranks)
        player_suits = jnp.where(hit, state.player_suits.at[slot].set(suit), state.player_suits)
        player_total, _ = hand_value(player_ranks)
        bust = player_total > 21

        # stand: the dealer takes the other cards while under 17.
        dealer_ranks, dealer_suits = _dealer_plays(
            ranks[1:], suits[1:], state.dealer_ranks, state.dealer_suits
        )
        dealer_ranks = jnp.where(hit, state.dealer_ranks, dealer_ranks)
        dealer_suits = jnp.where(hit, state.dealer_suits, dealer_suits)
        dealer_total, _ = hand_value(dealer_ranks)
        player_score = jnp.where(bust, 0, player_total)
        dealer_score = jnp.where(dealer_total > 21, 0, dealer_total)
        outcome = jnp.sign(player_score - dealer_score).astype(jnp.float32)
        player_natural = is_natural(player_ranks)
        outcome = jnp.where(
            params.sab,
            jnp.where(player_natural & ~is_natural(dealer_ranks), 1.0, outcome),
            jnp.where(params.natural & player_natural & (outcome == 1.0), 1.5, outcome),
        )

        reward = jnp.where(hit, jnp.where(bust, -1.0, 0.0), outcome).astype(jnp.float32)
        terminated = ~hit | bust
        state = state.replace(
            time=state.time + 1,
            player_ranks=player_ranks,
            player_suits=player_suits,
            dealer_ranks=dealer_ranks,
            dealer_suits=dealer_suits,
        )
        return self.observe(key, state, action, params), state, reward, terminated, {}

    def prompt_fields(self, state: BlackjackState, params: Any) -> dict[str, jax.Array]:
        """Gymnasium's symbolic observation: player's total, dealer's face-up value, usable ace."""
        total, usable_ace = hand_value(state.player_ranks)
        return {
            "player_sum": total,
            "dealer_card": jnp.minimum(state.dealer_ranks[0], 10),
            "usable_ace": usable_ace.astype(jnp.int32),
        }

    # --- picture --------------------------------------------------------------------------------

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.HEIGHT, self.WIDTH, 3)

    def _build_pictures(self) -> None:
        image = render.filled(self.HEIGHT, self.WIDTH, render.FELT)
        s = self.TEXT_SCALE
        render.stamp(image, render.text_mask("DEALER", s), 6, 8, render.WHITE)
        render.stamp(image, render.text_mask("PLAYER", s), 124, 8, render.WHITE)
        self._background = jnp.asarray(image)
        self._cards = jnp.asarray(render.card_atlas(self.CARD_HEIGHT, self.CARD_WIDTH, render.FELT))
        self._dealer_pos = ((32, 8), (32, 8 + self.CARD_WIDTH + 6))
        self._player_pos = (152, 6)  # top-left of the player's grid
        # The player's cards with a felt gap on their right and bottom, to lay out as a grid.
        atlas = render.card_atlas(self.CARD_HEIGHT, self.CARD_WIDTH, render.FELT)
        spaced = render.filled(self.CARD_HEIGHT + 6, self.CARD_WIDTH + 6, render.FELT)
        spaced = np.repeat(spaced[None], len(atlas), axis=0)
        spaced[:, : self.CARD_HEIGHT, : self.CARD_WIDTH] = atlas
        self._spaced_cards = jnp.asarray(spaced)

    def render(self, state: BlackjackState, params: Any) -> jax.Array:
        canvas = self._background
        up = self._cards[render.card_index(state.dealer_ranks[0], state.dealer_suits[0])]
        canvas = render.paste(canvas, up, *self._dealer_pos[0])
        canvas = render.paste(canvas, self._cards[render.CARD_BACK], *self._dealer_pos[1])
        shown = self.CARDS_PER_ROW * self.ROWS
        index = render.card_index(state.player_ranks[:shown], state.player_suits[:shown])
        grid = render.tile_grid(
            self._spaced_cards[index], self.CARDS_PER_ROW, self._spaced_cards[-1]
        )
        return render.paste(canvas, grid, *self._player_pos)


def _draw(words: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cards from an infinite deck: (ranks 1..13, suits 0..3), one per pair of random words."""
    half = words.shape[0] // 2
    return below(words[:half], 13) + 1, below(words[half:], 4)


def _dealer_plays(
    draw_ranks: jax.Array, draw_suits: jax.Array, ranks: jax.Array, suits: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The dealer's hand after taking the drawn cards in order while its value is under 17."""

    def take(hand, card):
        ranks, suits, count = hand
        rank, suit = card
        takes = hand_value(ranks)[0] < 17
        ranks = jnp.where(takes, ranks.at[count].set(rank), ranks)
        suits = jnp.where(takes, suits.at[count].set(suit), suits)
        return (ranks, suits, count + takes.astype(jnp.int32)), None

    (ranks, suits, _), _ = jax.lax.scan(
        take, (ranks, suits, jnp.int32(2)), (draw_ranks, draw_suits)
    )
    return ranks, suits
