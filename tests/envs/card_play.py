"""Helpers the card-game tests share: play a sequence of actions, type a formula, deal a hand."""

import jax
import jax.numpy as jnp
import numpy as np


def play(env, state, actions, params=None):
    """Step through `actions` with the public (auto-resetting) `step`; one row per step:
    (reward, terminated, truncated, observation before any reset)."""
    params = env.default_params if params is None else params
    rows = []
    for i, action in enumerate(actions):
        _, state, reward, terminated, truncated, info = env.step(
            jax.random.key(i), state, action, params
        )
        final = jax.tree.map(np.asarray, info["final_observation"])
        rows.append((float(reward), bool(terminated), bool(truncated), final))
    return rows


def typed(env, text):
    """Action ids of space-separated tokens (`=` included if written)."""
    return [env.action_names.index(t) for t in text.split()]


def deal(env, ranks):
    return env.initial_state(jnp.asarray(ranks), jnp.zeros(len(ranks), jnp.int32))


def rewards(rows):
    return [r for r, *_ in rows]
