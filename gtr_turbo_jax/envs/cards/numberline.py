"""NumberLine (gym_cards `NumberLine-v0`): move the current number to the target, one step at a time.

Rules (gym_cards `numberline.py`, METHOD.md section 5): target and current in 0..max_position,
different at the start (uniform over the ordered pairs; gym_cards' `reset` forgets to keep them
apart, its constructor and METHOD.md do); actions `-` (left) and `+` (right), clamped at the ends;
reward `goal_reward` (+1, terminated) on reaching the target, `penalty` (-1) for a move that does not
get closer (a bump into an end included), 0 otherwise; truncated after `max_steps_in_episode` steps
(2 * max_position = 10) unless that step reached the target.

Picture: "TARGET: t" and "CURRENT: c" as gym_cards draws them, and below a number line with the
target ringed in red and the current number as a blue dot.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment

from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.envs.cards import render
from gtr_turbo_jax.envs.cards.agent import NUMBERLINE
from gtr_turbo_jax.envs.cards.checks import check_int
from gtr_turbo_jax.envs.cards.sampling import below, random_words


@struct.dataclass
class NumberLineState(environment.EnvState):
    target: jax.Array  # int32
    current: jax.Array  # int32


@struct.dataclass
class NumberLineParams(environment.EnvParams):
    max_steps_in_episode: int = 10
    goal_reward: float = 1.0
    penalty: float = -1.0


class NumberLine(VisualEnv):
    """Overrides: `max_position=5` (constructor, 1..9); `max_steps_in_episode=2 * max_position`,
    `goal_reward=1.0`, `penalty=-1.0` (params)."""

    action_names = ("-", "+")
    agent_spec = NUMBERLINE

    HEIGHT, WIDTH = 224, 280
    TEXT_SCALE, DIGIT_SCALE = 4, 3
    LINE_Y, LINE_X0, LINE_X1 = 150, 30, 250

    def __init__(self, max_position: int = 5):
        check_int("max_position", max_position, 1, 9)
        self.max_position = int(max_position)
        self._build_pictures()

    @property
    def name(self) -> str:
        return "NumberLine-gtr"

    @property
    def default_params(self) -> NumberLineParams:
        return NumberLineParams(max_steps_in_episode=2 * self.max_position)

    def reset_env(self, key: jax.Array, params: NumberLineParams):
        words = random_words(key, 2)
        size = self.max_position + 1
        target = below(words[0], size)
        current = (target + 1 + below(words[1], size - 1)) % size  # any other position
        state = NumberLineState(time=jnp.int32(0), target=target, current=current)
        return self.observe(key, state, None, params), state

    def step_env(self, key, state: NumberLineState, action, params: NumberLineParams):
        current = jnp.clip(
            state.current + 2 * jnp.asarray(action, jnp.int32) - 1, 0, self.max_position
        )
        before = jnp.abs(state.current - state.target)
        after = jnp.abs(current - state.target)
        reached = after == 0
        reward = jnp.where(
            reached, params.goal_reward, jnp.where(after >= before, params.penalty, 0.0)
        )
        state = state.replace(time=state.time + 1, current=current)
        obs = self.observe(key, state, action, params)
        return obs, state, reward.astype(jnp.float32), reached, {}

    def is_truncated(self, state: NumberLineState, params: NumberLineParams) -> jax.Array:
        # gym_cards: a step that reaches the target is not also truncated.
        return (state.time >= params.max_steps_in_episode) & (state.current != state.target)

    def prompt_fields(self, state: NumberLineState, params: Any) -> dict[str, jax.Array]:
        return {"target": state.target, "current": state.current}

    # --- picture --------------------------------------------------------------------------------

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.HEIGHT, self.WIDTH, 3)

    def _tick_x(self, position: int | jax.Array) -> int | jax.Array:
        return self.LINE_X0 + position * ((self.LINE_X1 - self.LINE_X0) // self.max_position)

    def _build_pictures(self) -> None:
        image = render.filled(self.HEIGHT, self.WIDTH, render.WHITE)
        s = self.TEXT_SCALE
        advance = (render.GLYPH_WIDTH + 1) * s
        self._value_xs = []
        for row, label in enumerate(("TARGET: ", "CURRENT: ")):
            y = 16 + row * 44
            render.stamp(image, render.text_mask(label.strip(), s), y, 16, render.INK)
            self._value_xs.append(16 + len(label) * advance)
        self._value_ys = (16, 60)
        # The number line: a bar, one tick per integer, digits under the ticks.
        image[
            self.LINE_Y - 1 : self.LINE_Y + 2,
            self.LINE_X0 - 12 : self._tick_x(self.max_position) + 13,
        ] = render.INK
        for p in range(self.max_position + 1):
            x = self._tick_x(p)
            image[self.LINE_Y - 8 : self.LINE_Y + 9, x - 1 : x + 2] = render.INK
            digit = render.text_mask(str(p), self.DIGIT_SCALE)
            render.stamp_centered(image, digit, self.LINE_Y + 36, x, render.INK)
        self._background = jnp.asarray(image)
        self._digits = jnp.asarray(
            render.token_atlas(
                tuple(str(d) for d in range(10)),
                7 * s,
                render.GLYPH_WIDTH * s,
                s,
                render.INK,
                render.WHITE,
            )
        )
        self._ring = render.disk_mask(15, 11)
        self._dot = render.disk_mask(8)

    def render(self, state: NumberLineState, params: Any) -> jax.Array:
        canvas = self._background
        for value, y, x in zip((state.target, state.current), self._value_ys, self._value_xs):
            canvas = jax.lax.dynamic_update_slice(canvas, self._digits[value], (y, x, 0))
        r = self._ring.shape[0] // 2
        canvas = render.paste_mask(
            canvas, self._ring, self.LINE_Y - r, self._tick_x(state.target) - r, render.RED
        )
        r = self._dot.shape[0] // 2
        return render.paste_mask(
            canvas, self._dot, self.LINE_Y - r, self._tick_x(state.current) - r, render.BLUE
        )
