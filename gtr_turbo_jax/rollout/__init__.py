"""Turning a model and an environment into experience: the sampler (prefill + KV-cache decode),
the compiled multi-turn rollout, evaluation metrics and episode recording."""

from gtr_turbo_jax.rollout.constraint import make_action_constraint
from gtr_turbo_jax.rollout.multiturn import Rollout, RolloutState, make_rollout
from gtr_turbo_jax.rollout.sampler import SampleOutput, SamplingConfig, generate, sample

__all__ = [
    "Rollout",
    "RolloutState",
    "SampleOutput",
    "SamplingConfig",
    "generate",
    "make_action_constraint",
    "make_rollout",
    "sample",
]
