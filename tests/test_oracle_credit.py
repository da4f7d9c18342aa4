"""experiments/oracle_credit.py: the solver-agreement bonus on real Sokoban steps, batched in jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtr_turbo_jax import envs
from gtr_turbo_jax.train import demos

BONUS = 0.75


@pytest.fixture(scope="module")
def oracle_credit(load_experiment):
    return load_experiment("oracle_credit")


def test_bonus_rewards_exactly_the_solvers_move(oracle_credit):
    env, params = envs.make("sokoban", size=(6, 6), num_boxes=1, tile_size=14)
    wrapped = oracle_credit.SolverCredit(env, "sokoban", BONUS)
    keys = jax.random.split(jax.random.key(3), 6)
    _, states = jax.vmap(env.reset_env, in_axes=(0, None))(keys, params)

    # The solver's moves, worked out here one state at a time in plain Python.
    grids, players = np.asarray(states.grid), np.asarray(states.player)
    expert = np.array(
        [demos.expert_action("sokoban", {"grid": g, "player": p}) for g, p in zip(grids, players)]
    )
    other = (expert + 1) % env.num_actions

    def rewards(environment, actions):
        step = lambda k, s, a: environment.step_env(k, s, a, params)[2]
        return np.asarray(jax.jit(jax.vmap(step))(keys, states, jnp.asarray(actions)))

    for actions, sign in ((expert, 1.0), (other, -1.0)):
        np.testing.assert_allclose(
            rewards(wrapped, actions), rewards(env, actions) + sign * BONUS, rtol=0, atol=1e-6
        )


def test_only_the_training_env_is_wrapped(oracle_credit):
    from gtr_turbo_jax.train.run_config import load_config
    from gtr_turbo_jax.train.setup import build_setup

    build = oracle_credit.with_solver_credit(build_setup, BONUS)
    setup = build(load_config("sokoban"))
    assert isinstance(setup.env, oracle_credit.SolverCredit) and setup.env.bonus == BONUS
    assert not isinstance(setup.eval_env, oracle_credit.SolverCredit)
    assert setup.env.name == f"{setup.eval_env.name}+SolverCredit"
