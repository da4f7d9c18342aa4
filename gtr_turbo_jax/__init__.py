"""GTR-Turbo in JAX/Flax: multi-turn RL for VLM agents, guided by a teacher merged from the policy's
own past checkpoints."""

__version__ = "0.1.0"
