"""How far the free teacher is from the policy: thought KL of a turbo run's checkpoint.

    python experiments/teacher_kl.py RUN_DIR [--batches 4] [--step N] [--evaluate]

Restores the run's training state (its newest checkpoint, or `--step`), plays `--batches` rollout
batches with its policy and sampler, and scores the replies under (a) the merged teacher the run
trains against and (b) the starting model theta_0 (the paper's static-teacher ablation, the
teacher furthest behind). For each: the mean thought KL the update puts in the advantage
(`rl.thought_kl` with the run's estimator, valid replies), the KL summed over a reply's thought
tokens, and the share of thought tokens whose k1 exceeds 0.1 nats. With the policy's thought
entropy per token this says whether a small mean KL is a teacher that agrees everywhere or one that
disagrees on a few tokens (the decisions) among many copied ones. `--evaluate` also plays the
run's held-out evaluation (its levels and key, greedy) with the policy, the merged teacher and
theta_0 each as the agent: whether the free teacher is a better agent than the policy it guides
(the paper's premise). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from gtr_turbo_jax import rl
from gtr_turbo_jax.train.commands import restore_run
from gtr_turbo_jax.train.learner import Learner
from gtr_turbo_jax.train.run_config import read_run_config as run_config
from gtr_turbo_jax.train.scoring import score_replies
from gtr_turbo_jax.train.teacher import teacher_weights


def kl_stats(agent, reference, thought_mask, valid, estimator="k1_clipped", clip=10.0):
    """Per valid reply: the update's thought KL (`rl.thought_kl`), the clipped k1 summed over the
    reply's thought tokens, and per thought token whether k1 exceeds 0.1 nats (numpy arrays)."""
    kl = rl.thought_kl(agent, reference, thought_mask, valid, estimator, clip, 0.0)
    k1 = np.asarray(agent, np.float64) - np.asarray(reference, np.float64)
    mask, valid = np.asarray(thought_mask, bool), np.asarray(valid, bool)
    per_reply = np.where(mask, np.clip(k1, 0.0, clip), 0.0).sum(-1)
    return {
        "kl": np.asarray(kl)[valid],
        "reply_kl": per_reply[valid],
        "over": (k1[mask & valid[:, None]] > 0.1).astype(np.float64),
    }


def agent_weights(state, update) -> dict[str, tuple]:
    """`(adapters, base)` of each agent: the policy, the merged teacher as the update runs its
    forward (a dense merge: zero adapters on shifted kernels) and theta_0."""
    return {
        "policy": (state.policy, state.base),
        "teacher": teacher_weights(state, update),
        "initial": (state.initial, state.base),
    }


def thought_kl_stats(learner: Learner, state, num_batches: int) -> dict[str, float]:
    update, config = learner.setup.update, learner.config
    graphdef = learner.defs.model

    @jax.jit
    def scored(batch, weights):
        adapters, base = weights
        rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
        logits = score_replies(
            graphdef, base, adapters, rows.prompt_ids, rows.prompt_mask,
            rows.image_patches, rows.response_ids, rows.response_mask, batch.image_grid_thw,
        ).logits  # fmt: skip
        return rl.token_logprobs(logits, rows.response_ids)

    agents = agent_weights(state, update)
    teachers = {name: agents[name] for name in ("teacher", "initial")}
    parts: dict[str, list[np.ndarray]] = {}
    rollout_state = learner.init_rollout()
    for _ in range(num_batches):
        rollout_state, batch, _ = learner.rollout.run(
            rollout_state, state.base, state.policy, state.value_head,
            config.train.turns_per_update,
        )  # fmt: skip
        rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
        mask = np.asarray(rows.thought_mask, bool)
        parts.setdefault("entropy", []).append(np.asarray(rows.sampler_entropy)[mask])
        for name, weights in teachers.items():
            stats = kl_stats(
                rows.sampler_logp_unit, scored(batch, weights), rows.thought_mask, rows.valid,
                update.kl_estimator, update.kl_clip,
            )  # fmt: skip
            for key, values in stats.items():
                parts.setdefault(f"{name}_{key}", []).append(values)
    means = {name: float(np.mean(np.concatenate(p))) for name, p in parts.items()}
    return {
        "thought_entropy_per_token": means.pop("entropy"),
        **{f"{k}_mean": v for k, v in means.items()},
        "thought_tokens": int(sum(len(p) for p in parts["teacher_over"])),
    }


def held_out_success(learner: Learner, state) -> dict[str, float]:
    """Held-out success of the policy, the merged teacher and theta_0 played as the agent (the
    teacher with the weights of its forward in the update)."""
    agents = agent_weights(state, learner.setup.update)
    evaluate = lambda adapters, base: learner.evaluator(
        base, adapters, state.value_head, learner.keys["eval"]
    ).metrics["success_rate"]
    return {f"{name}_success": float(evaluate(*weights)) for name, weights in agents.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--evaluate", action="store_true", help="held-out success of each")
    args = parser.parse_args(argv)
    config = run_config(args.run_dir)
    external = config.rl.get("teacher_source") == "external"
    if (
        config.rl.mode not in ("turbo_kl", "turbo_sft")
        or config.rl.merge_method == "ema"
        or external
    ):
        parser.error("the run must be a turbo run with a TIES / linear merge (it keeps theta_0)")
    learner, state, host = restore_run(args.run_dir, args.step, config)
    result = {"update": host["update"], **thought_kl_stats(learner, state, args.batches)}
    if args.evaluate:
        result.update(held_out_success(learner, state))
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
