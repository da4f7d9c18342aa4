"""The one compiled update: `update_step(state, batch, defs, config) -> (state, metrics)`.

In order, all inside one `jax.jit` (state donated; `defs` and `config` static), one named
function a step (`_update_step` reads as this list):
1-2. `old_scores`: flatten `[turns, envs]` to samples; the old per-token log-probs, values and
   thought entropy are the rollout's (its sampler scored the same tokens under the same
   parameters), or with `config.rescore` a full forward of every reply (no dropout); `turbo_kl`:
   the teacher (same base with its adapters or its dense kernel deltas, or an external model;
   with the image in its prompt or blind: `kl_context`) scores the same replies,
   `rl.thought_kl` at temperature 1 on the thought tokens (`kl_estimator="forward"`:
   `rl.forward_kl` over the vocabulary, which adds the policy's own forward);
3. `ppo_targets`: turn-level GAE on `[turns, envs]` and shaped advantages
   `A' = A + format - beta * KL` (`advantages_and_returns`: where the format reward enters is
   `config.format_reward_mode`); the value target is `A' + V`; advantages normalised;
4. SFT variants: the batch's labelled teacher replies are pushed into the DAgger buffer (a
   reservoir of every correction so far, or a ring: `dagger_sampling`);
5. `ppo_epochs`: epochs (`lax.scan`) of `optimizer_step`s over a permutation (`lax.scan`; with
   `pack_trained` the trained samples first and the steps holding none skipped:
   `rl.packed_steps`), each accumulating `loss_fn`'s gradient over micro-batches (`lax.scan`);
   SFT variants pair each micro-batch with `config.sft_rows` draws from the DAgger buffer; a
   step whose gradient is not finite is skipped; turbo modes snapshot the task vector after
   every epoch (`train.teacher.push_snapshot`);
6. `train.teacher.remerge`: every `merge_interval` updates the teacher is re-merged (`lax.cond`:
   merge and no-merge updates are one program); then `update_metrics`.

The learning rate is set from `state.update_count` (cosine over updates). Metrics are scalars in a
dict; `finite` is 1.0 when every loss and gradient of the update was finite.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gtr_turbo_jax import rl
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.train import teacher as teacher_lib
from gtr_turbo_jax.train.config import UpdateConfig, learning_rate_at, make_optimizer
from gtr_turbo_jax.train.scoring import blind_prompt_mask, score_replies
from gtr_turbo_jax.train.state import DaggerBuffer, ModelDefs, TrainState

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


class Scorer:
    """Forwards of the model on rows of samples: `score(adapters, base, rows, reply_ids,
    reply_mask, dropout_key)`, with the batch's static image grid (`rows`: anything with
    `prompt_ids`, `prompt_mask`, `image_patches`). `teacher`: the teacher's graph (an external
    model's, or the policy's); `blind`: without the image (`scoring.blind_prompt_mask`)."""

    def __init__(self, defs: ModelDefs, grid: tuple):
        self.defs, self.grid = defs, grid

    def __call__(
        self, adapters, base, rows, reply_ids, reply_mask, dropout_key=None, *,
        teacher: bool = False, blind: bool = False,
    ):  # fmt: skip
        graphdef = self.defs.teacher if teacher and self.defs.teacher else self.defs.model
        prompt_mask, images = rows.prompt_mask, rows.image_patches
        if blind:
            prompt_mask = blind_prompt_mask(
                rows.prompt_ids, prompt_mask, self.defs.vision_token_ids
            )
            images = None
        return score_replies(
            graphdef, base, adapters, rows.prompt_ids, prompt_mask, images, reply_ids,
            reply_mask, self.grid, dropout_key,
        )  # fmt: skip

    def value(self, params: nnx.State, hidden: jax.Array) -> jax.Array:
        return nnx.merge(self.defs.value_head, params)(hidden)


def old_scores(
    state: TrainState,
    samples: Batch,
    score: Scorer,
    config: UpdateConfig,
    trained: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per sample, before the update: the per-token log-probs at the PPO temperature
    (`token_logp`) and at 1 (`logp_unit`), the value, the thought entropy and (turbo_kl) the
    thought KL to the teacher (`kl`).

    The rollout's sampler recorded the policy's own numbers for the same tokens under the same
    parameters; `rescore` recomputes them with a full forward (a check, or for scripted replies).
    The forward KL sums over the whole vocabulary, so it needs the policy's logits too. Forwards
    run a micro-batch at a time; the teacher's weights are built once (dense: base + deltas).

    `trained` (bool[samples], `trained_samples`): the teacher scores only micro-batches holding a
    trained sample, the samples taken trained first; the others' KL is 0 (an untrained sample's
    advantage is never used: group advantages leave out the turns after an env's first episode).
    Without `rescore` only; None: every sample is scored."""
    teacher = teacher_lib.teacher_weights(state, config) if config.mode == "turbo_kl" else None
    forward = teacher is not None and config.kl_estimator == "forward"

    def scores_without_teacher(rows: Batch) -> dict[str, jax.Array]:
        """The sampler's own numbers (no forward)."""
        return {
            "token_logp": rows.sampler_logp,
            "logp_unit": rows.sampler_logp_unit,
            "value": rows.value,
            "entropy": rl.masked_token_mean(rows.sampler_entropy, rows.thought_mask),
        }

    def scores(rows: Batch) -> dict[str, jax.Array]:
        if config.rescore or forward:
            policy = score(state.policy, state.base, rows, rows.response_ids, rows.response_mask)
        if config.rescore:
            out = {
                "token_logp": rl.token_logprobs(
                    policy.logits, rows.response_ids, config.temperature
                ),
                "logp_unit": rl.token_logprobs(policy.logits, rows.response_ids),
                "value": score.value(state.value_head, policy.prompt_hidden),
                "entropy": rl.thought_entropy(policy.logits, rows.thought_mask),
            }
        else:
            out = scores_without_teacher(rows)
        if teacher is not None:
            reference = score(
                *teacher, rows, rows.response_ids, rows.response_mask,
                teacher=True, blind=config.kl_context == "blind",
            )  # fmt: skip
            scope = rl.kl_scope_mask(rows.thought_mask, rows.action_mask, config.kl_scope)
            if forward:  # an external teacher's vocabulary may be padded to another size
                vocab = min(policy.logits.shape[-1], reference.logits.shape[-1])
                out["kl"] = rl.forward_kl(
                    policy.logits[..., :vocab], reference.logits[..., :vocab], scope,
                    rows.valid, config.kl_invalid_value,
                )  # fmt: skip
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

    if config.rescore or teacher is not None:
        num_samples, micro = samples.reward.shape[0], config.minibatch_size
        unchunk = lambda x: x.reshape(num_samples, *x.shape[2:])
        chunk = lambda x: x.reshape(-1, micro, *x.shape[1:])
        if trained is None or config.rescore:
            old = jax.tree.map(unchunk, jax.lax.map(scores, jax.tree.map(chunk, samples)))
        else:
            old = jax.tree.map(
                unchunk, jax.lax.map(scores_without_teacher, jax.tree.map(chunk, samples))
            )

            def teacher_kl(args: tuple[jax.Array, Batch]) -> jax.Array:
                needed, rows = args
                kl = lambda rows: scores(rows)["kl"]
                return jax.lax.cond(needed, kl, lambda rows: jnp.zeros_like(rows.reward), rows)

            # Trained samples first (a stable sort), so that the micro-batches past them hold
            # untrained samples only and skip the teacher's forward (their KL: 0).
            order = jnp.argsort(~trained, stable=True)
            needed = trained[order].reshape(-1, micro).any(axis=-1)
            sorted_rows = jax.tree.map(lambda x: chunk(x[order]), samples)
            old["kl"] = unchunk(jax.lax.map(teacher_kl, (needed, sorted_rows)))[jnp.argsort(order)]
    else:
        old = scores(samples)
    return jax.lax.stop_gradient(old)


class Targets(NamedTuple):
    """What PPO's loss compares each sample against, all `[samples]`."""

    old_logp: jax.Array  # the lambda-weighted thought + action log-prob before the update
    token_logp: jax.Array  # [samples, reply] per-token log-probs before the update
    value: jax.Array  # the value before the update
    returns: jax.Array  # value targets `A' + V`
    advantages: jax.Array  # `A'`, normalised over the trained samples
    trained: jax.Array  # bool: the samples the update trains on


def summed_thoughts(rows: Batch, config: UpdateConfig) -> jax.Array:
    """The thought tokens of PPO's lambda-weighted log-prob (`thought_skip_tokens`: the authors'
    sum leaves out the reply's first tokens)."""
    return rl.skip_leading_tokens(rows.thought_mask, config.thought_skip_tokens)


def ppo_targets(
    batch: Batch,
    samples: Batch,
    old: dict[str, jax.Array],
    trained: jax.Array,
    config: UpdateConfig,
) -> tuple[Targets, jax.Array]:
    """The targets, and the shaped advantages before normalisation (for the metrics);
    `trained`: `trained_samples(batch, config)`."""
    kl = old.get("kl", jnp.zeros((samples.reward.shape[0],), jnp.float32))
    shaped, returns = advantages_and_returns(
        batch, old["value"].reshape(batch.turns, batch.envs), kl, config
    )
    old_logp = rl.lambda_logprob(
        old["token_logp"], summed_thoughts(samples, config), samples.action_mask,
        config.thought_lambda,
    )  # fmt: skip
    normalized = rl.normalize_advantages(shaped, trained, eps=config.advantage_eps)
    return Targets(old_logp, old["token_logp"], old["value"], returns, normalized, trained), shaped


def loss_fn(
    trainable: tuple[nnx.State, nnx.State],
    index: jax.Array,
    key: jax.Array,
    state: TrainState,
    samples: Batch,
    targets: Targets,
    dagger: DaggerBuffer,
    score: Scorer,
    config: UpdateConfig,
) -> tuple[jax.Array, Metrics]:
    """PPO's loss on the micro-batch `samples[index]` (plus, SFT modes, the SFT loss on
    `config.sft_rows` uniform draws from the DAgger buffer)."""
    policy, value_params = trainable
    rows = jax.tree.map(lambda x: x[index], samples)
    # No dropout in the PPO forward: the old log-probs (the sampler's, or the re-scoring's) were
    # taken without it, so the ratio is exactly 1 before the first step. LoRA dropout stays in
    # the SFT term.
    _, sft_key, sft_dropout_key = jax.random.split(key, 3)
    scores = score(policy, state.base, rows, rows.response_ids, rows.response_mask)
    token_logp = rl.token_logprobs(scores.logits, rows.response_ids, config.temperature)
    # `value_backbone_grad=False`: the value loss trains the head alone (the backbone's features
    # are the policy's); the paper's critic shares the backbone and its gradient.
    hidden = scores.prompt_hidden
    hidden = hidden if config.value_backbone_grad else jax.lax.stop_gradient(hidden)
    value_terms = (score.value(value_params, hidden), targets.value[index], targets.returns[index])
    clipping = dict(
        clip_eps=config.clip_eps,
        value_clip_eps=config.value_clip_eps,
        value_coef=config.value_coef,
        ratio_guard=config.ratio_guard,
    )
    summed = summed_thoughts(rows, config)
    advantages, trained = targets.advantages[index], targets.trained[index]
    if config.ratio_level == "token":
        weights = rl.lambda_token_weights(summed, rows.action_mask, config.thought_lambda)
        loss, metrics = rl.token_ppo_loss(
            token_logp, targets.token_logp[index], weights, advantages, *value_terms, trained,
            **clipping,
        )  # fmt: skip
    else:
        logp = rl.lambda_logprob(token_logp, summed, rows.action_mask, config.thought_lambda)
        loss, metrics = rl.ppo_loss(
            logp, targets.old_logp[index], advantages, *value_terms, trained, **clipping
        )
    if config.uses_sft:
        pairs = dagger.rows(jax.random.randint(sft_key, (config.sft_rows,), 0, dagger.filled))
        # The whole reply is attended (the action span too): only labels are masked, and the
        # right padding comes after every labelled token, so causality makes it harmless.
        reply_mask = jnp.ones_like(pairs.reply_ids)
        sft_scores = score(policy, state.base, pairs, pairs.reply_ids, reply_mask, sft_dropout_key)
        sft = rl.sft_loss(sft_scores.logits, pairs.reply_ids, pairs.label_mask)
        sft = jnp.where(dagger.count > 0, sft, 0.0)
        loss = loss + config.sft_coef * sft
        metrics = {**metrics, "loss": loss, "sft_loss": sft}
    return loss, metrics


def optimizer_step(carry, step, grad_fn, optimizer, config: UpdateConfig):
    """One Adam step on the mean gradient of `grad_accum_steps` micro-batches (`lax.scan`). A
    step whose gradient or loss is not finite is skipped, not applied: the state stays usable,
    the `finite` metric reports it. `pack_trained`: an inactive step (untrained samples only)
    runs no forward at all (`lax.cond`) and reports zeros (`finite` 1); the metrics add
    `active`."""
    indices, keys, active = step  # [accum, micro], [accum], bool
    if not config.pack_trained:
        return _optimizer_step(carry, (indices, keys), grad_fn, optimizer, config)
    run = lambda carry: _optimizer_step(carry, (indices, keys), grad_fn, optimizer, config)
    shapes = jax.eval_shape(run, carry)[1]
    zeros = lambda: {**jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes),
                     "finite": jnp.ones((), jnp.float32)}  # fmt: skip
    skip = lambda carry: (carry, zeros())
    carry, metrics = jax.lax.cond(active, run, skip, carry)
    return carry, {**metrics, "active": active.astype(jnp.float32)}


def _optimizer_step(carry, step, grad_fn, optimizer, config: UpdateConfig):
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
        updates = (updates[0], jax.tree.map(lambda u: u * config.value_lr_scale, updates[1]))
    new_trainable = optax.apply_updates(trainable, updates)
    carry = _tree_where(finite, (new_trainable, new_opt_state), (trainable, opt_state))
    metrics = jax.tree.map(jnp.mean, metrics)
    return carry, {**metrics, "grad_norm": grad_norm, "finite": finite.astype(jnp.float32)}


def ppo_epochs(
    state: TrainState,
    samples: Batch,
    targets: Targets,
    dagger: DaggerBuffer,
    lr: jax.Array,
    key: jax.Array,
    score: Scorer,
    config: UpdateConfig,
) -> tuple[TrainState, Metrics]:
    """`ppo_epochs` passes (`lax.scan`), each over a fresh permutation of the samples in optimizer
    steps (`lax.scan`); turbo modes snapshot the task vector after every epoch. Returns the state
    with the new policy, value head, optimizer state and snapshots, and per-step metrics."""
    optimizer = make_optimizer(config)
    clip_state, adam_state = state.opt_state
    hyperparams = {**adam_state.hyperparams, "learning_rate": lr.astype(jnp.float32)}
    opt_state = (clip_state, adam_state._replace(hyperparams=hyperparams))
    grad_fn = jax.grad(
        lambda trainable, index, key: loss_fn(
            trainable, index, key, state, samples, targets, dagger, score, config
        ),
        has_aux=True,
    )
    step = lambda carry, xs: optimizer_step(carry, xs, grad_fn, optimizer, config)

    def epoch(carry, key):
        trainable, opt_state, snapshots, snapshot_valid, snapshot_count = carry
        order_key, step_key = jax.random.split(key)
        num_samples = samples.reward.shape[0]
        shape = (num_samples // config.samples_per_step, config.grad_accum_steps,
                 config.minibatch_size)  # fmt: skip
        if config.pack_trained:
            indices, active = rl.packed_steps(order_key, targets.trained, *shape)
        else:
            indices, active = rl.shuffled_steps(order_key, num_samples, *shape)
        keys = jax.random.split(step_key, indices.shape[:2])
        (trainable, opt_state), metrics = jax.lax.scan(
            step, (trainable, opt_state), (indices, keys, active)
        )
        if config.uses_snapshots:
            snapshots, snapshot_valid, snapshot_count = teacher_lib.push_snapshot(
                state, snapshots, snapshot_valid, snapshot_count, trainable[0], config
            )
        return (trainable, opt_state, snapshots, snapshot_valid, snapshot_count), metrics

    carry = (
        state.trainable, opt_state, state.snapshots, state.snapshot_valid, state.snapshot_count
    )  # fmt: skip
    carry, metrics = jax.lax.scan(epoch, carry, jax.random.split(key, config.ppo_epochs))
    (policy, value_params), opt_state, snapshots, snapshot_valid, snapshot_count = carry
    state = state.replace(
        policy=policy,
        value_head=value_params,
        opt_state=opt_state,
        snapshots=snapshots,
        snapshot_valid=snapshot_valid,
        snapshot_count=snapshot_count,
    )
    return state, metrics


def update_metrics(
    step_metrics: Metrics,
    samples: Batch,
    old: dict[str, jax.Array],
    shaped: jax.Array,
    targets: Targets,
    **scalars: jax.Array,
) -> Metrics:
    """The update's scalars: means of the per-step metrics, the batch's and the teacher's.
    `finite` is 1.0 when every loss, gradient and metric of the update was finite."""
    valid = samples.valid.astype(bool)
    kl = old.get("kl", jnp.zeros((samples.reward.shape[0],), jnp.float32))
    scored = valid & targets.trained  # the KL of the valid replies the update trains on
    step_metrics = dict(step_metrics)
    active = step_metrics.pop("active", None)  # the steps that ran (`pack_trained` skips some)
    if active is None:
        metrics = {name: jnp.mean(value) for name, value in step_metrics.items()}
        steps_run = jnp.asarray(step_metrics["finite"].size, jnp.float32)
    else:
        metrics = {name: jnp.mean(value, where=active > 0) for name, value in step_metrics.items()}
        steps_run = jnp.sum(active)
    metrics.update(
        optimizer_steps=steps_run,
        finite=jnp.min(step_metrics["finite"]),
        grad_norm_max=jnp.max(step_metrics["grad_norm"]),
        kl_mean=jnp.sum(jnp.where(scored, kl, 0.0)) / jnp.maximum(jnp.sum(scored), 1),
        kl_max=jnp.where(jnp.any(scored), jnp.max(jnp.where(scored, kl, -jnp.inf)), 0.0),
        thought_entropy=jnp.mean(old["entropy"]),
        value_mean=jnp.mean(old["value"]),
        # Over the samples the update trains on (the others' advantages are never used; every
        # env's first turn is one, so the set is never empty).
        advantage_mean=jnp.mean(shaped, where=targets.trained),
        advantage_std=jnp.std(shaped, where=targets.trained),
        return_mean=jnp.mean(targets.returns),
        reward_mean=jnp.mean(samples.reward.astype(jnp.float32)),
        valid_fraction=jnp.mean(valid.astype(jnp.float32)),
        # Group advantages: the share of the batch in the envs' first episodes (the rest is
        # played, then left out of the update's loss).
        trained_fraction=jnp.mean(targets.trained.astype(jnp.float32)),
        # 0 unless `rescore`: how far the full forward's log-probs are from the sampler's.
        sampler_logp_gap=rl.masked_token_mean(
            jnp.abs(old["token_logp"] - samples.sampler_logp), samples.response_mask
        ).mean(),
        **scalars,
    )
    finite_metrics = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
    metrics["finite"] = ((metrics["finite"] > 0) & finite_metrics).astype(jnp.float32)
    return metrics


def _update_step(
    state: TrainState, batch: Batch, defs: ModelDefs, config: UpdateConfig
) -> tuple[TrainState, Metrics]:
    """One PPO / GTR / GTR-Turbo update of `state` on `batch` (see the module docstring).

    `defs` and `config` are static; `state` is donated (its arrays, the modules' too if the state
    was just built from them, are consumed). Returns `(new_state, metrics)`.
    """
    check_compatible(state, batch, config)
    # [turns * envs, ...] (`Batch`'s turn and env counts no longer apply: `reward.shape[0]`).
    samples = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
    score = Scorer(defs, batch.image_grid_thw)
    trained = trained_samples(batch, config)
    old = old_scores(state, samples, score, config, trained)  # 1-2
    targets, shaped = ppo_targets(batch, samples, old, trained, config)  # 3
    dagger = state.dagger
    if config.uses_sft:  # 4; its own key, so the other draws of the update stay as they are
        dagger = _push_dagger(
            dagger, samples, config.dagger_sampling, jax.random.fold_in(state.key, 1)
        )
    lr = learning_rate_at(config, state.update_count)
    key, epochs_key = jax.random.split(state.key)
    trained, step_metrics = ppo_epochs(
        state, samples, targets, dagger, lr, epochs_key, score, config
    )  # 5
    teacher, merged_now, distance = teacher_lib.remerge(
        trained, trained.policy, state.update_count, config
    )  # 6
    metrics = update_metrics(
        step_metrics, samples, old, shaped, targets,
        learning_rate=lr,
        merged=merged_now.astype(jnp.float32),
        dagger_size=dagger.filled.astype(jnp.float32),
        **({} if distance is None else {"teacher_policy_distance": distance}),
    )  # fmt: skip
    new_state = trained.replace(
        teacher=teacher, dagger=dagger, key=key, update_count=state.update_count + 1
    )
    return new_state, metrics


update_step = jax.jit(_update_step, static_argnames=("defs", "config"), donate_argnames=("state",))
