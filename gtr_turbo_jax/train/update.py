"""The one compiled update: `update_step(state, batch, defs, config) -> (state, metrics)`.

In order, all inside one `jax.jit` (state donated; `defs` and `config` static):
1. flatten `[turns, envs]` to samples; the old per-token log-probs, values and thought entropy
   are the rollout's (its sampler scored the same tokens under the same parameters), or with
   `config.rescore` a full forward of every reply under its prompt and image (no dropout);
2. `turbo_kl`: the teacher (same base; its adapters, or its dense kernel deltas) scores the same
   replies; `rl.thought_kl` at temperature 1 on the thought tokens (`kl_estimator="forward"`:
   `rl.forward_kl` over the vocabulary, which adds the policy's own forward);
3. turn-level GAE on `[turns, envs]` and shaped advantages `A' = A + format - beta * KL` (KL = 0
   outside `turbo_kl`; where the format reward enters is `config.format_reward_mode`, see
   `advantages_and_returns`); the value target is `A' + V`; advantages normalised;
4. SFT variants: the batch's labelled teacher replies are pushed into the DAgger buffer (a
   reservoir of every correction so far, or a ring: `dagger_sampling`);
5. PPO epochs (`lax.scan`), optimizer steps over a permutation (`lax.scan`), gradient accumulation
   over micro-batches (`lax.scan`); each micro-batch is paired with `config.sft_rows` uniform
   draws from the DAgger buffer (SFT variants). A step whose gradient is not finite is skipped;
6. turbo modes: a snapshot of the task vector after every epoch; every `merge_interval` updates the
   teacher is re-merged (`merge_teacher`; `lax.cond`: merge and no-merge updates are one program).

The learning rate is set from `state.update_count` (cosine over updates). Metrics are scalars in a
dict; `finite` is 1.0 when every loss and gradient of the update was finite.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gtr_turbo_jax import rl
from gtr_turbo_jax.rl.merge import lora_task_products
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.train.config import UpdateConfig, learning_rate_at, make_optimizer
from gtr_turbo_jax.train.scoring import score_replies
from gtr_turbo_jax.train.state import (
    DaggerBuffer,
    ModelDefs,
    TrainState,
    is_dense_teacher,
    kernel_deltas,
    kernel_path,
    lora_pairs,
    teacher_weights,
)

Metrics = dict[str, jax.Array]
PyTree = Any


def check_compatible(state: TrainState, batch: Batch, config: UpdateConfig) -> None:
    """Static shape checks between batch, state and config: one ValueError line each."""
    batch.check_shapes()
    samples, per_step = batch.num_samples, config.samples_per_step
    if samples % per_step:
        raise ValueError(
            f"the batch holds turns*envs={samples} samples, not a multiple of "
            f"minibatch_size*grad_accum_steps={per_step}"
        )
    if config.uses_sft:
        dagger = state.dagger
        for name, buffer_field, batch_field in (
            ("prompt_ids", dagger.prompt_ids, batch.prompt_ids),
            ("image_patches", dagger.image_patches, batch.image_patches),
            ("teacher_ids", dagger.reply_ids, batch.teacher_ids),
        ):
            if buffer_field.shape[1:] != batch_field.shape[2:] or buffer_field.shape[0] == 0:
                raise ValueError(
                    f"Batch.{name} rows {tuple(batch_field.shape[2:])} do not fit the state's DAgger "
                    f"buffer {tuple(buffer_field.shape)}: build the state with this batch's shapes "
                    f"and mode={config.mode!r}"
                )


def _tree_where(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _global_distance(a: PyTree, b: PyTree) -> jax.Array:
    squares = jax.tree.map(lambda x, y: jnp.sum(jnp.square(x - y)), a, b)
    return jnp.sqrt(sum(jax.tree.leaves(squares), jnp.zeros((), jnp.float32)))


def _push_dagger(
    dagger: DaggerBuffer, samples: Batch, sampling: str, key: jax.Array
) -> DaggerBuffer:
    """Pushes the samples with at least one labelled token (others are dropped): into a uniform
    sample of every correction so far (`reservoir`, GTR's never-cleared buffer in bounded memory)
    or a ring of the latest (`ring`)."""
    labelled = jnp.any(samples.teacher_label_mask, axis=-1)
    if sampling == "reservoir":
        uniforms = jax.random.uniform(key, labelled.shape)
        slot = rl.reservoir_slots(dagger.count, labelled, dagger.capacity, uniforms)
    else:
        slot = rl.ring_slots(dagger.count, labelled, dagger.capacity)
    # Out-of-bounds slots (`capacity`) are dropped.
    write = lambda buffer, rows: buffer.at[slot].set(rows.astype(buffer.dtype), mode="drop")
    return DaggerBuffer(
        prompt_ids=write(dagger.prompt_ids, samples.prompt_ids),
        prompt_mask=write(dagger.prompt_mask, samples.prompt_mask),
        image_patches=write(dagger.image_patches, samples.image_patches),
        reply_ids=write(dagger.reply_ids, samples.teacher_ids),
        label_mask=write(dagger.label_mask, samples.teacher_label_mask),
        count=dagger.count + jnp.sum(labelled, dtype=jnp.int32),
    )


def merge_teacher(state: TrainState, policy: nnx.State, config: UpdateConfig) -> nnx.State:
    """The re-merged teacher, in the structure of `state.teacher`.

    EMA: `alpha * policy + (1 - alpha) * teacher`. TIES / linear: `theta_0 + merge(tau_i)` with SMA
    weights, over every snapshot so far (`merge_window="all"`, from the running sums) or the ring;
    factored, on the LoRA `a` / `b` task vectors leaf by leaf;
    dense, on the per-kernel products (`rl.merge.lora_task_products`, an `[S, in, out]` stack per
    kernel while it merges), stored as `[out, in]` kernel deltas.
    """
    dense = is_dense_teacher(state, config)
    if config.merge_method == "ema":
        target = kernel_deltas(policy, state.base, state.lora_scale) if dense else policy
        return rl.ema_merge(state.teacher, target, config.ema_alpha)
    if config.merge_window == "all":  # factored or full weights (`init_train_state` checks)
        merged = rl.running_sums_merge(
            state.snapshots, state.snapshot_count, config.merge_method, config.merge_scale
        )
        return jax.tree.map(
            lambda theta0, tau: theta0 + tau.astype(theta0.dtype), state.initial, merged
        )
    weights = rl.sma_weights(state.snapshot_valid)
    merge = lambda deltas: rl.merge_deltas(
        deltas, weights, config.merge_method, config.merge_density, config.merge_scale
    )
    if not dense:
        merged = merge(state.snapshots)
        return jax.tree.map(
            lambda theta0, tau: theta0 + tau.astype(theta0.dtype), state.initial, merged
        )
    initial, snapshots, scale = (
        lora_pairs(state.initial),
        lora_pairs(state.snapshots),
        state.lora_scale,
    )
    # Keyed by strings: pytree dict keys are sorted, and paths mix ints and strings.
    names = {"/".join(map(str, path)): path for path in snapshots}
    taus = {
        name: lora_task_products(*snapshots[path], *initial[path], scale)
        for name, path in names.items()
    }
    merged = merge(taus)
    teacher = dict(nnx.to_flat_state(state.teacher))
    return nnx.from_flat_state(
        {
            kernel_path(path): teacher[kernel_path(path)].replace(
                (
                    scale * jnp.matmul(*initial[path], preferred_element_type=jnp.float32)
                    + merged[name]
                ).T
            )
            for name, path in names.items()
        }
    )


def advantages_and_returns(
    batch: Batch, values: jax.Array, kl: jax.Array, config: UpdateConfig
) -> tuple[jax.Array, jax.Array]:
    """Shaped advantages `A'` and value targets `A' + V`, both `[turns * envs]` (not normalised).

    `values [turns, envs]`: the values of each turn's observation (the rollout's, or re-scored);
    inside an episode the next turn's value is the bootstrap, at the rollout's end
    `batch.next_value`. `kl [turns * envs]`: the thought KL (zeros outside `turbo_kl`).
    The format reward, by `config.format_reward_mode`:
    `after_gae`: `A' = GAE(r) + format - beta * KL` (GTR's code);
    `in_gae`: `A' = GAE(r + format) - beta * KL`; `ignore`: `A' = GAE(r) - beta * KL` (RL4VLM).
    """
    format_reward = batch.format_reward.astype(jnp.float32)
    placement = config.format_reward_mode
    reward = batch.reward.astype(jnp.float32)
    if placement == "in_gae":
        reward = reward + format_reward
    after = format_reward if placement == "after_gae" else jnp.zeros_like(format_reward)
    if config.advantage == "group":
        mask = rl.first_episode_mask(batch.terminated, batch.truncated)
        groups = jnp.arange(batch.envs) // config.group_size
        prints = rl.state_fingerprints(
            batch.prompt_ids.reshape(batch.num_samples, -1),
            batch.image_patches.reshape(batch.num_samples, -1),
        ).reshape(batch.turns, batch.envs, -1)
        advantages, to_go = rl.group_advantages(
            reward, mask, groups, prints, config.gamma, config.step_weight
        )
        shaped = rl.shaped_advantages(advantages.reshape(-1), after.reshape(-1), kl, config.kl_beta)
        return shaped, to_go.reshape(-1)
    continues = ~(batch.terminated.astype(bool) | batch.truncated.astype(bool))
    later_value = jnp.concatenate([values[1:], batch.next_value[-1:]], axis=0)
    has_later = jnp.arange(batch.turns)[:, None] < batch.turns - 1
    next_values = jnp.where(continues & has_later, later_value, batch.next_value)
    advantages = rl.gae(
        reward,
        values,
        next_values,
        batch.terminated,
        batch.truncated,
        config.gamma,
        config.gae_lambda,
    ).reshape(-1)
    shaped = rl.shaped_advantages(advantages, after.reshape(-1), kl, config.kl_beta)
    return shaped, shaped + values.reshape(-1)


def trained_samples(batch: Batch, config: UpdateConfig) -> jax.Array:
    """bool[turns * envs]: the samples the update trains on (under group advantages each env's
    first episode of the rollout; otherwise all)."""
    if config.advantage == "group":
        return rl.first_episode_mask(batch.terminated, batch.truncated).reshape(-1)
    return jnp.ones((batch.num_samples,), bool)


def _update_step(
    state: TrainState, batch: Batch, defs: ModelDefs, config: UpdateConfig
) -> tuple[TrainState, Metrics]:
    """One PPO / GTR / GTR-Turbo update of `state` on `batch` (see the module docstring).

    `defs` and `config` are static; `state` is donated (its arrays, the modules' too if the state
    was just built from them, are consumed). Returns `(new_state, metrics)`.
    """
    check_compatible(state, batch, config)
    grid = batch.image_grid_thw
    num_samples, micro = batch.num_samples, config.minibatch_size
    samples = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
    value_head = lambda params, hidden: nnx.merge(defs.value_head, params)(hidden)
    # `value_backbone_grad=False`: the value loss trains the head alone (the backbone's features
    # are the policy's); the paper's critic shares the backbone and its gradient.
    critic_input = (lambda h: h) if config.value_backbone_grad else jax.lax.stop_gradient

    def score(adapters, base, prompts, reply_ids, reply_mask, dropout_key=None):
        """`prompts`: anything with `prompt_ids`, `prompt_mask`, `image_patches` rows."""
        return score_replies(
            defs.model,
            base,
            adapters,
            prompts.prompt_ids,
            prompts.prompt_mask,
            prompts.image_patches,
            reply_ids,
            reply_mask,
            grid,
            dropout_key,
        )

    # 1-2. Old log-probs, values, thought entropy and (turbo_kl) the teacher's log-probs. The
    # rollout's sampler recorded the policy's own numbers for the same tokens under the same
    # parameters; `rescore` recomputes them with a full forward (a check, or for scripted
    # replies). The teacher's weights are built once, outside the loop (dense: base + deltas).
    teacher = teacher_weights(state, config) if config.mode == "turbo_kl" else None

    # The forward KL sums over the whole vocabulary: it needs the policy's logits, not only the
    # log-probs of the sampled tokens that the rollout recorded.
    forward = teacher is not None and config.kl_estimator == "forward"

    def old_scores(rows: Batch) -> dict[str, jax.Array]:
        if config.rescore or forward:
            policy = score(state.policy, state.base, rows, rows.response_ids, rows.response_mask)
        if config.rescore:
            out = {
                "token_logp": rl.token_logprobs(
                    policy.logits, rows.response_ids, config.temperature
                ),
                "logp_unit": rl.token_logprobs(policy.logits, rows.response_ids),
                "value": value_head(state.value_head, policy.prompt_hidden),
                "entropy": rl.thought_entropy(policy.logits, rows.thought_mask),
            }
        else:
            out = {
                "token_logp": rows.sampler_logp,
                "logp_unit": rows.sampler_logp_unit,
                "value": rows.value,
                "entropy": rl.masked_token_mean(rows.sampler_entropy, rows.thought_mask),
            }
        if teacher is not None:
            reference = score(*teacher, rows, rows.response_ids, rows.response_mask)
            scope = rl.kl_scope_mask(rows.thought_mask, rows.action_mask, config.kl_scope)
            if forward:
                out["kl"] = rl.forward_kl(
                    policy.logits, reference.logits, scope, rows.valid, config.kl_invalid_value
                )
            else:
                out["kl"] = rl.thought_kl(
                    out["logp_unit"],
                    rl.token_logprobs(reference.logits, rows.response_ids),
                    scope,
                    rows.valid,
                    config.kl_estimator,
                    config.kl_clip,
                    config.kl_invalid_value,
                )
        return out

    if config.rescore or teacher is not None:  # forwards: a micro-batch at a time
        chunked = jax.tree.map(lambda x: x.reshape(-1, micro, *x.shape[1:]), samples)
        old = jax.lax.map(old_scores, chunked)
        old = jax.tree.map(lambda x: x.reshape(num_samples, *x.shape[2:]), old)
    else:
        old = old_scores(samples)
    old = jax.lax.stop_gradient(old)
    # The thought tokens of PPO's lambda-weighted log-prob (`thought_skip_tokens`: the authors'
    # sum leaves out the reply's first tokens).
    summed = lambda rows: rl.skip_leading_tokens(rows.thought_mask, config.thought_skip_tokens)
    old_logp = rl.lambda_logprob(
        old["token_logp"], summed(samples), samples.action_mask, config.thought_lambda
    )
    kl = old.get("kl", jnp.zeros((num_samples,), jnp.float32))

    # 3. GAE on [turns, envs], shaped advantages and value targets.
    shaped, returns = advantages_and_returns(
        batch, old["value"].reshape(batch.turns, batch.envs), kl, config
    )
    trained = trained_samples(batch, config)
    normalized = rl.normalize_advantages(shaped, trained, eps=config.advantage_eps)

    # 4. DAgger buffer.
    dagger = state.dagger
    if config.uses_sft:  # its own key, so the other draws of the update stay as they are
        dagger_key = jax.random.fold_in(state.key, 1)
        dagger = _push_dagger(dagger, samples, config.dagger_sampling, dagger_key)
    dagger_filled = jnp.minimum(dagger.count, max(dagger.capacity, 1))

    # 5. PPO.
    optimizer = make_optimizer(config)
    lr = learning_rate_at(config, state.update_count)
    clip_state, adam_state = state.opt_state
    adam_state = adam_state._replace(
        hyperparams={**adam_state.hyperparams, "learning_rate": lr.astype(jnp.float32)}
    )
    opt_state = (clip_state, adam_state)

    def loss_fn(trainable, index, key):
        policy, value_params = trainable
        rows = jax.tree.map(lambda x: x[index], samples)
        # No dropout in the PPO forward: the old log-probs (the sampler's, or the re-scoring's)
        # were taken without it, so the ratio is exactly 1 before the first step. LoRA dropout
        # stays in the SFT term.
        _, sft_key, sft_dropout_key = jax.random.split(key, 3)
        scores = score(policy, state.base, rows, rows.response_ids, rows.response_mask)
        token_logp = rl.token_logprobs(scores.logits, rows.response_ids, config.temperature)
        value_terms = (
            value_head(value_params, critic_input(scores.prompt_hidden)),
            old["value"][index],
            returns[index],
        )
        clipping = dict(
            clip_eps=config.clip_eps,
            value_clip_eps=config.value_clip_eps,
            value_coef=config.value_coef,
            ratio_guard=config.ratio_guard,
        )
        rows_trained = trained[index]
        if config.ratio_level == "token":
            weights = rl.lambda_token_weights(summed(rows), rows.action_mask, config.thought_lambda)
            loss, metrics = rl.token_ppo_loss(
                token_logp, old["token_logp"][index], weights, normalized[index], *value_terms,
                rows_trained, **clipping,
            )  # fmt: skip
        else:
            logp = rl.lambda_logprob(
                token_logp, summed(rows), rows.action_mask, config.thought_lambda
            )
            loss, metrics = rl.ppo_loss(
                logp, old_logp[index], normalized[index], *value_terms, rows_trained,
                **clipping,
            )  # fmt: skip
        if config.uses_sft:
            pick = jax.random.randint(sft_key, (config.sft_rows,), 0, dagger_filled)
            pairs = dagger.rows(pick)
            # The whole reply is attended (the action span too): only labels are masked, and the
            # right padding comes after every labelled token, so causality makes it harmless.
            reply_mask = jnp.ones_like(pairs.reply_ids)
            sft_scores = score(
                policy, state.base, pairs, pairs.reply_ids, reply_mask, sft_dropout_key
            )
            sft = rl.sft_loss(sft_scores.logits, pairs.reply_ids, pairs.label_mask)
            sft = jnp.where(dagger.count > 0, sft, 0.0)
            loss = loss + config.sft_coef * sft
            metrics = {**metrics, "loss": loss, "sft_loss": sft}
        return loss, metrics

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def optimizer_step(carry, step):
        trainable, opt_state = carry
        indices, keys = step  # [accum, micro], [accum]

        def accumulate(grad_sum, micro_step):
            grads, metrics = grad_fn(trainable, *micro_step)
            return jax.tree.map(jnp.add, grad_sum, grads), metrics

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        grad_sum, metrics = jax.lax.scan(accumulate, zeros, (indices, keys))
        grads = jax.tree.map(lambda g: g / config.grad_accum_steps, grad_sum)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(metrics["loss"]))
        updates, new_opt_state = optimizer.update(grads, opt_state, trainable)
        if config.value_lr_scale != 1.0:  # the critic's own step size (static: one program)
            scaled = jax.tree.map(lambda u: u * config.value_lr_scale, updates[1])
            updates = (updates[0], scaled)
        new_trainable = optax.apply_updates(trainable, updates)
        # A non-finite step is skipped, not applied: the state stays usable, `finite` reports it.
        carry = _tree_where(finite, (new_trainable, new_opt_state), (trainable, opt_state))
        metrics = jax.tree.map(jnp.mean, metrics)
        return carry, {**metrics, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32)}

    def epoch(carry, key):
        trainable, opt_state, snapshots, snapshot_valid, snapshot_count = carry
        order_key, step_key = jax.random.split(key)
        indices = jax.random.permutation(order_key, num_samples)
        indices = indices.reshape(-1, config.grad_accum_steps, micro)
        keys = jax.random.split(step_key, indices.shape[:2])
        (trainable, opt_state), metrics = jax.lax.scan(
            optimizer_step, (trainable, opt_state), (indices, keys)
        )
        if config.uses_snapshots:
            task_vector = jax.tree.map(jnp.subtract, trainable[0], state.initial)
            if config.merge_window == "all":
                density = config.merge_density if config.merge_method == "ties" else None
                snapshots = rl.running_sums_push(snapshots, task_vector, density)
            else:
                snapshots, snapshot_valid = rl.push_snapshot(
                    snapshots, snapshot_valid, snapshot_count, task_vector
                )
            snapshot_count = snapshot_count + 1
        return (trainable, opt_state, snapshots, snapshot_valid, snapshot_count), metrics

    key, epochs_key = jax.random.split(state.key)
    carry = (
        state.trainable,
        opt_state,
        state.snapshots,
        state.snapshot_valid,
        state.snapshot_count,
    )
    carry, step_metrics = jax.lax.scan(
        epoch, carry, jax.random.split(epochs_key, config.ppo_epochs)
    )
    (policy, value_params), opt_state, snapshots, snapshot_valid, snapshot_count = carry

    # 6. Teacher merge.
    state = state.replace(
        snapshots=snapshots, snapshot_valid=snapshot_valid, snapshot_count=snapshot_count
    )
    merged_now = jnp.zeros((), bool)
    teacher = state.teacher
    distance = jnp.zeros((), jnp.float32)
    if config.uses_teacher:
        merged_now = (state.update_count + 1) % config.merge_interval == 0
        # `teacher_source="initial"`: the paper's static-teacher ablation (Fig. 6), never re-merged.
        merged_now = merged_now & (config.teacher_source == "merged")
        teacher = jax.lax.cond(
            merged_now, lambda: merge_teacher(state, policy, config), lambda: state.teacher
        )
        dense = is_dense_teacher(state, config)
        as_teacher = kernel_deltas(policy, state.base, state.lora_scale) if dense else policy
        distance = _global_distance(teacher, as_teacher)

    valid = samples.valid.astype(bool)
    any_valid = jnp.any(valid)
    metrics = {name: jnp.mean(value) for name, value in step_metrics.items()}
    metrics.update(
        finite=jnp.min(step_metrics["finite"]),
        grad_norm_max=jnp.max(step_metrics["grad_norm"]),
        learning_rate=lr,
        kl_mean=jnp.sum(jnp.where(valid, kl, 0.0)) / jnp.maximum(jnp.sum(valid), 1),
        kl_max=jnp.where(any_valid, jnp.max(jnp.where(valid, kl, -jnp.inf)), 0.0),
        thought_entropy=jnp.mean(old["entropy"]),
        value_mean=jnp.mean(old["value"]),
        advantage_mean=jnp.mean(shaped),
        advantage_std=jnp.std(shaped),
        return_mean=jnp.mean(returns),
        reward_mean=jnp.mean(batch.reward.astype(jnp.float32)),
        valid_fraction=jnp.mean(valid.astype(jnp.float32)),
        # 0 unless `rescore`: how far the full forward's log-probs are from the sampler's.
        sampler_logp_gap=rl.masked_token_mean(
            jnp.abs(old["token_logp"] - samples.sampler_logp), samples.response_mask
        ).mean(),
        teacher_policy_distance=distance,
        merged=merged_now.astype(jnp.float32),
        dagger_size=dagger_filled.astype(jnp.float32),
    )
    finite_metrics = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
    metrics["finite"] = (metrics["finite"] > 0) & finite_metrics
    metrics["finite"] = metrics["finite"].astype(jnp.float32)

    new_state = state.replace(
        policy=policy,
        value_head=value_params,
        teacher=teacher,
        opt_state=opt_state,
        dagger=dagger,
        key=key,
        update_count=state.update_count + 1,
    )
    return new_state, metrics


update_step = jax.jit(_update_step, static_argnames=("defs", "config"), donate_argnames=("state",))
