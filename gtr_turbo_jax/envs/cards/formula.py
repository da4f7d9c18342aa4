"""The formula card games (Points24, EZPoints): gym_cards' rules on fixed-shape JAX state, and the
exact formula evaluator they share.

Rules (gym_cards `points.py` / `ezpoints.py`, METHOD.md section 5), one token appended per step:
- a number not among the unused cards gives `penalty` (-1) and appends a blank symbol (so the
  formula still grows and repeated mistakes reach the length cap), the card stays unused;
- a step taken while the formula already holds more than `max_formula_length` tokens gives
  `penalty` and truncates the episode (nothing is appended);
- `=` is not appended: it ends the episode (terminated) with `correct_reward` (+10) when the formula
  is well formed, equals `target` exactly and uses every card, `penalty` otherwise;
- anything else gives 0.

Choices where gym_cards' code (Python `eval` of the tokens joined without spaces) is not the rule it
means to implement: arithmetic is exact (rationals), so `8 / (3 - 8 / 3)` is 24 (float `eval` gives
23.999999999999996 and -1); tokens never merge, so two numbers in a row, `* *` (power) and `/ /`
(floor division) are malformed rather than `24`, `**`, `//`; unary signs are malformed (the game has
binary operators only). A formula is thus exactly an infix expression over the cards with
`+ - * /` and parentheses, which is what the solver enumerates.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment

from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.envs.cards import render
from gtr_turbo_jax.envs.cards.checks import check_int

NUMBER_NAMES = tuple(str(n) for n in range(1, 11))  # actions 0..9 are the numbers 1..10
BLANK = " "  # what a rejected number leaves in the formula

# Symbol kinds understood by `evaluate_formula`.
SKIP, NUMBER, ADD, SUB, MUL, DIV, OPEN, CLOSE = range(8)
_KIND_OF = {"+": ADD, "-": SUB, "*": MUL, "/": DIV, "(": OPEN, ")": CLOSE, BLANK: SKIP}
_NONE_PENDING = 0  # no `*` or `/` waiting for its right operand


def symbol_tables(symbols: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(kind, value) int32 tables over symbol ids: numbers have kind NUMBER and their value."""
    kinds = [NUMBER if s.isdigit() else _KIND_OF[s] for s in symbols]
    values = [int(s) if s.isdigit() else 0 for s in symbols]
    return np.asarray(kinds, np.int32), np.asarray(values, np.int32)


@struct.dataclass
class _Levels:
    """One accumulator per open parenthesis level: `sum (+|-) term (*|/) <next factor>`."""

    sum_num: jax.Array
    sum_den: jax.Array
    term_num: jax.Array
    term_den: jax.Array
    sign: jax.Array  # +1 / -1: how `term` enters `sum`
    pending: jax.Array  # _NONE_PENDING, MUL or DIV


def evaluate_formula(
    symbols: jax.Array, kinds: jax.Array, values: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Evaluate an infix formula exactly: returns `(well_formed, numerator, denominator)`.

    `symbols` is `int32[n]`, ids into the `kinds`/`values` tables, -1 for padding; SKIP symbols
    (blanks, padding) are ignored. Malformed (unbalanced parentheses, two operands or two operators
    in a row, a leading or trailing operator, empty) or dividing by zero gives `well_formed=False`.
    One left-to-right pass with a (sum, term) accumulator per parenthesis level, so `*`/`/` bind
    tighter than `+`/`-`, both left-associative. Fractions are not reduced: with k numbers <= 10
    both parts stay below 2^(k-1) * 10^k, exact in int32 for k <= 7 (the games use 2 or 4 cards).
    """
    chex.assert_rank(symbols, 1)
    n = symbols.shape[0]
    ids = jnp.clip(symbols, 0, kinds.shape[0] - 1)
    kind_seq = jnp.where(symbols >= 0, kinds[ids], SKIP)
    value_seq = jnp.where(symbols >= 0, values[ids], 0)

    depth_cap = n + 1  # levels 0..n: there are at most n open parentheses
    zeros = jnp.zeros(depth_cap, jnp.int32)
    ones = jnp.ones(depth_cap, jnp.int32)
    levels = _Levels(zeros, ones, zeros, ones, ones, zeros)
    carry = (levels, jnp.int32(0), jnp.bool_(True), jnp.bool_(True))  # depth, expect_operand, ok

    def close(lv: _Levels, d: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Value of level d: sum + sign * term."""
        num = lv.sum_num[d] * lv.term_den[d] + lv.sign[d] * lv.term_num[d] * lv.sum_den[d]
        return num, lv.sum_den[d] * lv.term_den[d]

    def step(carry, kind_value):
        lv, depth, expect_operand, ok = carry
        kind, value = kind_value
        is_number, is_open, is_close = kind == NUMBER, kind == OPEN, kind == CLOSE
        is_additive, is_multiplicative = (
            (kind == ADD) | (kind == SUB),
            (kind == MUL) | (kind == DIV),
        )
        operand_like = is_number | is_open
        operator_like = is_additive | is_multiplicative | is_close
        ok &= ~(operand_like & ~expect_operand) & ~(operator_like & expect_operand)
        ok &= ~(is_close & (depth == 0))

        here = jnp.clip(depth, 0, depth_cap - 1)
        below = jnp.clip(depth - 1, 0, depth_cap - 1)
        above = jnp.clip(depth + 1, 0, depth_cap - 1)
        closed_num, closed_den = close(lv, here)

        # A factor (a number, or a parenthesised group just closed) meets the pending * or /.
        takes_factor = is_number | is_close
        at = jnp.where(is_close, below, here)
        f_num = jnp.where(is_close, closed_num, value)
        f_den = jnp.where(is_close, closed_den, 1)
        pending = lv.pending[at]
        t_num, t_den = lv.term_num[at], lv.term_den[at]
        new_t_num = jnp.where(
            pending == MUL, t_num * f_num, jnp.where(pending == DIV, t_num * f_den, f_num)
        )
        new_t_den = jnp.where(
            pending == MUL, t_den * f_den, jnp.where(pending == DIV, t_den * f_num, f_den)
        )
        ok &= ~(takes_factor & (pending == DIV) & (f_num == 0))

        def put(array, index, cond, new):
            return array.at[index].set(jnp.where(cond, new, array[index]))

        term_num = put(lv.term_num, at, takes_factor, new_t_num)
        term_den = put(lv.term_den, at, takes_factor, new_t_den)
        pending_arr = put(lv.pending, at, takes_factor, _NONE_PENDING)
        pending_arr = put(pending_arr, here, is_multiplicative, kind)
        # `+`/`-` folds the finished term into the level's sum.
        sum_num = put(lv.sum_num, here, is_additive, closed_num)
        sum_den = put(lv.sum_den, here, is_additive, closed_den)
        sign = put(lv.sign, here, is_additive, jnp.where(kind == ADD, 1, -1))
        # `(` opens a fresh level above.
        sum_num = put(sum_num, above, is_open, 0)
        sum_den = put(sum_den, above, is_open, 1)
        sign = put(sign, above, is_open, 1)
        pending_arr = put(pending_arr, above, is_open, _NONE_PENDING)

        lv = _Levels(sum_num, sum_den, term_num, term_den, sign, pending_arr)
        depth = depth + is_open.astype(jnp.int32) - (is_close & (depth > 0)).astype(jnp.int32)
        expect_operand = jnp.where(kind == SKIP, expect_operand, ~(is_number | is_close))
        return (lv, depth, expect_operand, ok), None

    (lv, depth, expect_operand, ok), _ = jax.lax.scan(step, carry, (kind_seq, value_seq))
    num, den = close(lv, 0)
    return ok & ~expect_operand & (depth == 0), num, den


# --- the game -----------------------------------------------------------------------------------


@struct.dataclass
class FormulaState(environment.EnvState):
    ranks: jax.Array  # int32[num_cards]: 1..13, J/Q/K = 11/12/13 (each counts 10)
    suits: jax.Array  # int32[num_cards]: 0..3 = clubs, diamonds, hearts, spades
    used: jax.Array  # bool[num_cards]: the card's number is in the formula
    formula: jax.Array  # int32[max_formula_length + 1]: symbol ids, -1 after `length`
    length: jax.Array  # int32: symbols in the formula
    over_length: jax.Array  # bool: the last step found the formula past the cap (truncation)


@struct.dataclass
class FormulaParams(environment.EnvParams):
    # gym_cards registers its envs with a 300-step limit; the length cap always ends episodes first.
    max_steps_in_episode: int = 300
    correct_reward: float = 10.0
    penalty: float = -1.0  # wrong `=`, unavailable number, formula past the cap


def card_values(ranks: jax.Array) -> jax.Array:
    """Face cards (J, Q, K) count 10."""
    return jnp.minimum(ranks, 10)


class FormulaCardGame(VisualEnv):
    """Shared rules, observation and picture of Points24 and EZPoints.

    Symbol ids of the formula are the action ids of the appended tokens; the id of `=` (never
    appended) stands for the blank a rejected number leaves: `formula_symbols[id]` is its text.
    """

    num_cards: int
    operators: tuple[str, ...]  # the non-number actions before `=`
    image_width: int

    CARD_HEIGHT, CARD_WIDTH = 112, 84
    CELL_HEIGHT, CELL_WIDTH, TEXT_SCALE = 28, 34, 3
    MARGIN = 6

    def __init__(self, target: int, max_formula_length: int):
        check_int("target", target, 1, 10_000)
        check_int("max_formula_length", max_formula_length, 1, 64)
        self.target = int(target)
        self.max_formula_length = int(max_formula_length)
        self.action_names = (*NUMBER_NAMES, *self.operators, "=")
        self.equals_action = len(self.action_names) - 1
        self.blank_symbol = self.equals_action
        self.formula_symbols = (*self.action_names[:-1], BLANK)
        kinds, values = symbol_tables(self.formula_symbols)
        self._kinds, self._values = jnp.asarray(kinds), jnp.asarray(values)
        self._build_pictures()

    # --- gymnax API -----------------------------------------------------------------------------

    @property
    def default_params(self) -> FormulaParams:
        return FormulaParams()

    @property
    def formula_capacity(self) -> int:
        return self.max_formula_length + 1  # gym_cards lets the formula reach cap + 1 tokens

    def deal(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(ranks, suits) of a new hand, int32[num_cards] each."""
        raise NotImplementedError

    def reset_env(self, key: jax.Array, params: FormulaParams) -> tuple[dict, FormulaState]:
        ranks, suits = self.deal(key)
        state = self.initial_state(ranks, suits)
        return self.observe(key, state, None, params), state

    def initial_state(self, ranks: jax.Array, suits: jax.Array) -> FormulaState:
        """The state at the start of an episode dealt `ranks` (1..13) and `suits` (0..3)."""
        ranks = jnp.asarray(ranks, jnp.int32)
        chex.assert_shape(ranks, (self.num_cards,))
        return FormulaState(
            time=jnp.int32(0),
            ranks=ranks,
            suits=jnp.asarray(suits, jnp.int32),
            used=jnp.zeros(self.num_cards, bool),
            formula=jnp.full(self.formula_capacity, -1, jnp.int32),
            length=jnp.int32(0),
            over_length=jnp.bool_(False),
        )

    def step_env(self, key, state: FormulaState, action, params: FormulaParams):
        action = jnp.asarray(action, jnp.int32)
        over = state.length > self.max_formula_length
        is_number = action < len(NUMBER_NAMES)
        is_equals = action == self.equals_action

        # The number must be on an unused card (face cards count 10); take the first such card.
        matches = (card_values(state.ranks) == action + 1) & ~state.used
        rejected = is_number & ~matches.any()
        takes_card = ~over & is_number & ~rejected
        used = state.used | (takes_card & (jnp.arange(self.num_cards) == jnp.argmax(matches)))

        appends = ~over & ~is_equals
        slot = jnp.minimum(state.length, self.formula_capacity - 1)
        symbol = jnp.where(rejected, self.blank_symbol, action)
        formula = state.formula.at[slot].set(jnp.where(appends, symbol, state.formula[slot]))

        correct = self.is_solution(state)
        reward = jnp.where(
            over | rejected | (is_equals & ~correct),
            params.penalty,
            jnp.where(is_equals, params.correct_reward, 0.0),
        ).astype(jnp.float32)
        state = state.replace(
            time=state.time + 1,
            used=used,
            formula=formula,
            length=state.length + appends.astype(jnp.int32),
            over_length=over,
        )
        terminated = is_equals & ~over
        return self.observe(key, state, action, params), state, reward, terminated, {}

    def is_truncated(self, state: FormulaState, params: FormulaParams) -> jax.Array:
        return state.over_length | (state.time >= params.max_steps_in_episode)

    def is_solution(self, state: FormulaState) -> jax.Array:
        """The formula is well formed, equals `target` exactly and uses every card."""
        well_formed, num, den = evaluate_formula(state.formula, self._kinds, self._values)
        return well_formed & (num == self.target * den) & state.used.all()

    def prompt_fields(self, state: FormulaState, params: Any) -> dict[str, jax.Array]:
        return {
            "ranks": state.ranks,
            "values": card_values(state.ranks),
            "formula": state.formula,
            "formula_length": state.length,
        }

    # --- picture --------------------------------------------------------------------------------

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._background.shape

    def _build_pictures(self) -> None:
        m, ch, cw = self.MARGIN, self.CARD_HEIGHT, self.CARD_WIDTH
        width = self.image_width
        self._cells_per_line = (width - 2 * m) // self.CELL_WIDTH
        lines = -(-self.formula_capacity // self._cells_per_line)
        label_y = m + ch + 6
        self._formula_y = label_y + 7 * self.TEXT_SCALE + 4
        self._formula_x = m
        height = _round_up(self._formula_y + lines * self.CELL_HEIGHT + 2, 28)

        background = render.filled(height, width, render.FELT)
        label = render.text_mask("FORMULA:", self.TEXT_SCALE)
        render.stamp(background, label, label_y, m + 4, render.WHITE)
        self._background = jnp.asarray(background)

        gap = (width - self.num_cards * cw) // (self.num_cards + 1)
        self._card_xs = tuple(gap + i * (gap + cw) for i in range(self.num_cards))
        self._card_y = m
        self._cards = jnp.asarray(render.card_atlas(ch, cw, render.FELT))
        self._tokens = jnp.asarray(
            render.token_atlas(
                self.formula_symbols,
                self.CELL_HEIGHT,
                self.CELL_WIDTH,
                self.TEXT_SCALE,
                render.WHITE,
                render.FELT,
            )
        )

    def render(self, state: FormulaState, params: Any) -> jax.Array:
        canvas = self._background
        cards = self._cards[render.card_index(state.ranks, state.suits)]
        for i, x in enumerate(self._card_xs):
            canvas = render.paste(canvas, cards[i], self._card_y, x)
        empty = self._tokens[-1]
        tiles = self._tokens[jnp.where(state.formula >= 0, state.formula, len(self._tokens) - 1)]
        lines = render.tile_grid(tiles, self._cells_per_line, empty)
        return render.paste(canvas, lines, self._formula_y, self._formula_x)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
