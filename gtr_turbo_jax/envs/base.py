"""The contract every environment of ours keeps, on top of gymnax's `Environment`.

gymnax 1.0 gives `reset(key, params) -> (obs, state)` and `step(key, state, action, params) -> (obs,
state, reward, terminated, truncated, info)` with automatic reset and `info["final_observation"]`.
On top of that a `VisualEnv`:
- names its legal actions (`action_names`, the strings a reply's `"action"` must contain);
- renders its state into `uint8[H, W, 3]` inside JAX (`render`);
- exposes the fields a prompt needs as fixed-shape arrays (`prompt_fields`), so that prompts can be
  assembled inside jit;
- clips out-of-range actions into `[0, num_actions)` inside jit (the documented rule; host code that
  can raise, such as the host adapter, raises instead);
- carries its `agent_spec` (`envs.agent.AgentSpec`): the prompt's wording and reply format, and the
  optional expert and grounding grammar; the layers above ask the env through it, never by name.

Static configuration (shapes, sizes) lives on the env object, which is hashed by identity and is a
static argument of jit; values that may change without recompiling (rewards, step limits, level
banks) live in `EnvParams`, a pytree.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces

from gtr_turbo_jax.envs.agent import AgentSpec


class VisualEnv(environment.Environment):
    """Base class: observation = `{"image": uint8[H, W, 3], **prompt_fields}`."""

    action_names: tuple[str, ...] = ()
    # What the agent is told of the env (`envs.agent`); None: it cannot be trained by the CLI.
    agent_spec: ClassVar[AgentSpec | None] = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def render(self, state: Any, params: Any) -> jax.Array:
        """`uint8[H, W, 3]` picture of `state`; jittable."""
        raise NotImplementedError

    def prompt_fields(self, state: Any, params: Any) -> dict[str, jax.Array]:
        """Fixed-shape integer arrays a prompt template reads (formula symbols, grid, ...)."""
        return {}

    def observe(self, key: jax.Array, state: Any, action: Any, params: Any) -> dict[str, jax.Array]:
        del key, action
        return {"image": self.render(state, params), **self.prompt_fields(state, params)}

    def clip_action(self, action: jax.Array) -> jax.Array:
        return jnp.clip(jnp.asarray(action, jnp.int32), 0, self.num_actions - 1)

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key, state, action, params=None):
        return super().step(key, state, self.clip_action(action), params)

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    def action_space(self, params: Any = None) -> spaces.Discrete:
        return spaces.Discrete(self.num_actions)

    def observation_space(self, params: Any = None) -> spaces.Dict:
        params = self.default_params if params is None else params
        obs = jax.eval_shape(lambda p: self.reset_env(jax.random.key(0), p)[0], params)
        return spaces.Dict({name: _box_for(leaf) for name, leaf in obs.items()})


def _box_for(leaf: jax.ShapeDtypeStruct) -> spaces.Box:
    """The full range of the leaf's dtype (images: 0..255)."""
    if jnp.issubdtype(leaf.dtype, jnp.integer):
        info = jnp.iinfo(leaf.dtype)
        return spaces.Box(info.min, info.max, leaf.shape, leaf.dtype)
    return spaces.Box(-jnp.inf, jnp.inf, leaf.shape, leaf.dtype)
