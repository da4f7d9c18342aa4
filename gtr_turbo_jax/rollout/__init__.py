"""Turning a model and an environment into experience: the sampler (prefill + KV-cache decode),
evaluation metrics and episode recording. The multi-turn rollout lands here next."""

from gtr_turbo_jax.rollout.constraint import make_action_constraint
from gtr_turbo_jax.rollout.sampler import SampleOutput, SamplingConfig, generate, sample

__all__ = ["SampleOutput", "SamplingConfig", "generate", "make_action_constraint", "sample"]
