"""Does RL improve the policy when the credit is exact? Training with a solver-agreement bonus.

    python experiments/oracle_credit.py [--bonus 1.0] [gtr-turbo train flags] \
        --config.rl.gamma=0.0 [--config.* overrides]
    python experiments/oracle_credit.py --gradient-snr --model DIR --config.rl.gamma=0.0 [...]

Runs `gtr-turbo train` with one change: the training env's reward gains `+bonus` on every move
that is the solver's (`train.demos.expert_action`, the move of the warm start's demonstrations)
and `-bonus` on every other move (`SolverCredit`). With `--config.rl.gamma=0.0` a reply's
advantage is then its own move's correctness: a contextual bandit with exact per-step credit that
needs no critic. The held-out evaluation plays the unchanged env, so `eval/success_rate` means
what it always does; the training metrics (`reward_mean`, `return_mean`, `success_rate`) include
the bonus.

What it tells: if the training `reward_mean` and the held-out success do not rise even here, the
update itself (step size, optimizer, sampling temperature, samples per step) limits learning, not
the credit assignment of the env's sparse reward or the critic. `--gradient-snr` runs
`experiments/gradient_snr.py` (its flags) on the same credit instead of training: how much of a
batch's policy gradient is signal when the advantages are exact. The solver runs on the host
(`jax.pure_callback`, one env at a time): fine for this diagnostic, slow for anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gtr_turbo_jax.envs import StepWrapper, VisualEnv
from gtr_turbo_jax.train import demos, trainer


class SolverCredit(StepWrapper):
    """Adds `+bonus` to the reward of a move that is the solver's, `-bonus` to any other."""

    def __init__(self, env: VisualEnv, env_name: str, bonus: float = 1.0):
        super().__init__(env)
        self.env_name = env_name
        self.bonus = float(bonus)

    def expert_action(self, state, params) -> jax.Array:
        """The solver's move in `state` (int32 scalar), computed on the host."""
        fields = self._env.prompt_fields(state, params)

        def solve(host_fields):
            host_fields = {k: np.asarray(v) for k, v in host_fields.items()}
            return np.int32(demos.expert_action(self.env_name, host_fields))

        result = jax.ShapeDtypeStruct((), jnp.int32)
        return jax.pure_callback(solve, result, fields, vmap_method="sequential")

    def step_env(self, key, state, action, params):
        wanted = self.expert_action(state, params)
        obs, next_state, reward, terminated, info = self._env.step_env(key, state, action, params)
        bonus = jnp.where(action == wanted, self.bonus, -self.bonus)
        return obs, next_state, reward + bonus.astype(reward.dtype), terminated, info


def with_solver_credit(build_setup, bonus: float):
    """`build_setup` whose training env (not the held-out one) is wrapped in `SolverCredit`."""

    def build(config):
        setup = build_setup(config)
        env = SolverCredit(setup.env, setup.env_name, bonus)
        return dataclasses.replace(setup, env=env)

    return build


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bonus", type=float, default=1.0, help="reward per agreeing move")
    parser.add_argument(
        "--gradient-snr", action="store_true", help="measure gradient_snr.py's signal/noise"
    )
    args, rest = parser.parse_known_args(argv)
    # The trainer builds its setup through this module-level name: swap it for the wrapped one.
    trainer.build_setup = with_solver_credit(trainer.build_setup, args.bonus)
    if args.gradient_snr:
        import gradient_snr  # experiments/, the script's own folder on sys.path

        gradient_snr.main(rest)
        return 0
    from gtr_turbo_jax.cli import main as cli_main

    return cli_main(["train", *rest])


if __name__ == "__main__":
    sys.exit(main())
