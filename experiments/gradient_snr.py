"""How much of one update's policy gradient is signal: the gradients of K independent batches.

    python experiments/gradient_snr.py --model RUN/sft_model [--batches 8] [--env sokoban] \
        [--config.sampling.temperature=1.0 --config.rl.temperature=1.0 ...]

Plays K rollout batches (`train.num_envs` x `train.turns_per_update` samples each) with the model
and takes, for each, the gradient of the PPO objective at ratio 1 (`-mean(A * log pi(a|o))`, the
update's shaped and normalised advantages, the lambda-weighted log-prob) with respect to the
policy's trainable parameters. With `g_k = s + n_k` (a shared signal plus independent noise) the
mean pairwise cosine of the `g_k` estimates `|s|^2 / (|s|^2 + |n|^2)`, so
`signal/noise = sqrt(cos / (1 - cos))` per batch; an optimizer step on `m` batches' worth of
samples has `sqrt(m)` times that. Near 0, an update moves the policy by noise: Adam turns it into
full-size steps on every parameter. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from gtr_turbo_jax import rl
from gtr_turbo_jax.train.learner import Learner
from gtr_turbo_jax.train.run_config import load_config
from gtr_turbo_jax.train.scoring import score_replies
from gtr_turbo_jax.train.update import advantages_and_returns, trained_samples


def batch_gradients(learner: Learner, num_batches: int) -> np.ndarray:
    """`[num_batches, params]`: the flattened policy gradient of each fresh rollout batch."""
    config, update = learner.config, learner.setup.update
    state = learner.init_state()
    graphdef = learner.defs.model

    @jax.jit
    def gradient(batch):
        rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
        kl = jnp.zeros((batch.num_samples,), jnp.float32)  # the teacher is the policy here
        shaped, _ = advantages_and_returns(batch, batch.value.astype(jnp.float32), kl, update)
        trained = trained_samples(batch, update)  # as the update: group runs mask later episodes
        advantages = rl.normalize_advantages(shaped, trained, eps=update.advantage_eps)

        def objective(policy):
            scores = score_replies(
                graphdef, state.base, policy, rows.prompt_ids, rows.prompt_mask,
                rows.image_patches, rows.response_ids, rows.response_mask, batch.image_grid_thw,
            )  # fmt: skip
            token_logp = rl.token_logprobs(scores.logits, rows.response_ids, update.temperature)
            logp = rl.lambda_logprob(
                token_logp, rows.thought_mask, rows.action_mask, update.thought_lambda
            )
            return -jnp.mean(advantages * logp)

        grads = jax.grad(objective)(state.policy)
        return jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(grads)])

    rollout_state = learner.init_rollout()
    grads = []
    for _ in range(num_batches):
        rollout_state, batch, _ = learner.rollout.run(
            rollout_state, state.base, state.policy, state.value_head,
            config.train.turns_per_update,
        )  # fmt: skip
        grads.append(np.asarray(gradient(batch)))
    return np.stack(grads)


def signal_to_noise(grads: np.ndarray) -> dict[str, float]:
    """Mean pairwise cosine of the rows and the per-batch signal/noise it implies."""
    unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    cosines = (unit @ unit.T)[np.triu_indices(len(grads), k=1)]
    cosine = float(np.mean(cosines))
    return {
        "batches": len(grads),
        "mean_cosine": cosine,
        "cosine_stderr": float(np.std(cosines) / math.sqrt(len(cosines))),
        "signal_to_noise": math.sqrt(max(cosine, 0.0) / (1.0 - cosine)),
        "grad_norm": float(np.mean(np.linalg.norm(grads, axis=1))),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a local HF directory (e.g. RUN/sft_model)")
    parser.add_argument("--env", default="sokoban")
    parser.add_argument("--batches", type=int, default=8)
    args, overrides = parser.parse_known_args(argv)
    if args.batches < 2:
        parser.error("--batches needs at least 2 batches to compare")
    config = load_config(
        args.env, [f"--config.model.path={args.model}", "--config.warm_start.steps=0", *overrides]
    )
    result = signal_to_noise(batch_gradients(Learner(config), args.batches))
    samples = config.train.num_envs * config.train.turns_per_update
    print(
        f"{args.batches} batches of {samples} samples: mean pairwise cosine "
        f"{result['mean_cosine']:.3f} +- {result['cosine_stderr']:.3f}, signal/noise per batch "
        f"{result['signal_to_noise']:.2f}"
    )
    print(json.dumps({"samples_per_batch": samples, **result}))


if __name__ == "__main__":
    main()
