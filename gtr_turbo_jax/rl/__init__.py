"""Pure RL functions: GAE, group (GiGPO) advantages, the epochs' minibatch orders,
lambda-weighted log-probs, PPO losses, teacher guidance, teacher merges.

Nothing here imports the rest of the package; every function is jit- and vmap-friendly, with
configuration values (floats, estimator names) static and validated in Python.
"""

from gtr_turbo_jax.rl.gae import gae
from gtr_turbo_jax.rl.group import first_episode_mask, group_advantages, state_fingerprints
from gtr_turbo_jax.rl.guidance import (
    KL_ESTIMATORS,
    KL_SCOPES,
    forward_kl,
    kl_scope_mask,
    sft_loss,
    shaped_advantages,
    thought_kl,
)
from gtr_turbo_jax.rl.logprob import (
    lambda_logprob,
    lambda_token_weights,
    masked_token_mean,
    skip_leading_tokens,
    thought_entropy,
    token_entropy,
    token_logprobs,
)
from gtr_turbo_jax.rl.merge import (
    LORA_MERGE_MODES,
    MERGE_METHODS,
    RUNNING_ROWS,
    ema_merge,
    linear_merge,
    lora_product,
    lora_task_products,
    merge_deltas,
    merge_lora,
    push_snapshot,
    running_sums_init,
    running_sums_merge,
    running_sums_push,
    sma_weights,
    ties_merge,
)
from gtr_turbo_jax.rl.minibatch import packed_steps, shuffled_steps
from gtr_turbo_jax.rl.ppo import normalize_advantages, ppo_loss, token_ppo_loss
from gtr_turbo_jax.rl.reservoir import reservoir_slots, ring_slots

__all__ = [
    "KL_ESTIMATORS",
    "KL_SCOPES",
    "LORA_MERGE_MODES",
    "RUNNING_ROWS",
    "MERGE_METHODS",
    "ema_merge",
    "forward_kl",
    "first_episode_mask",
    "gae",
    "group_advantages",
    "kl_scope_mask",
    "lambda_logprob",
    "lambda_token_weights",
    "linear_merge",
    "lora_product",
    "lora_task_products",
    "masked_token_mean",
    "merge_deltas",
    "merge_lora",
    "normalize_advantages",
    "packed_steps",
    "ppo_loss",
    "push_snapshot",
    "reservoir_slots",
    "ring_slots",
    "running_sums_init",
    "running_sums_merge",
    "running_sums_push",
    "sft_loss",
    "shaped_advantages",
    "shuffled_steps",
    "skip_leading_tokens",
    "sma_weights",
    "state_fingerprints",
    "thought_entropy",
    "token_entropy",
    "thought_kl",
    "ties_merge",
    "token_logprobs",
    "token_ppo_loss",
]
