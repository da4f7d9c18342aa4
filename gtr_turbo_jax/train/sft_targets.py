"""Where the SFT targets of a batch come from (the `teacher_ids` / `teacher_label_mask` fields).

- `gtr`: a privileged teacher corrects every turn. Ours is an oracle built on the env's solver
  (`train.oracle`), standing in for GPT-4o with a solver tool: it sees the true state and writes
  the thoughts and the action that state calls for.
- `turbo_sft`: the free teacher, the merged checkpoint, answers the same prompts with the same
  sampler as the rollout (its own adapters on the shared base, no second model in memory).

Either way the labels are the teacher's reply with the action span masked out (METHOD.md 2, 4.2),
kept for turns whose agent reply is valid; the merged teacher's unparseable replies are sampled
again (the authors' retries), and one that never parses gets no labels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gtr_turbo_jax.models import ModelDefs
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.rollout.sampler import SamplingConfig, generate
from gtr_turbo_jax.text.parse import ReplySpec, parse_reply_ids
from gtr_turbo_jax.train.config import UpdateConfig
from gtr_turbo_jax.train.state import TrainState
from gtr_turbo_jax.train.teacher import teacher_weights


def with_oracle_corrections(
    env_name: str,
    batch: Batch,
    fields: Mapping[str, np.ndarray],
    tokenizer,
    spec: ReplySpec,
    width: int,
    style: str = "full",
) -> Batch:
    """`batch` with the oracle's corrections of each turn (`fields`: the states, [T, E, ...]).

    The correction is the oracle's reply to the state (true thoughts, the solver's move); its labels
    stop before the action span, so it teaches thoughts and leaves the action to RL, as GTR. A turn
    without a valid agent reply is not corrected (GTR corrects valid replies).
    """
    from gtr_turbo_jax.train.oracle import oracle_corrections

    ids, labels = oracle_corrections(
        env_name, jax.device_get(fields), tokenizer, spec, width,
        style=style,
    )  # fmt: skip
    labels = labels & np.asarray(batch.valid, bool)[..., None]
    return batch.replace(teacher_ids=jnp.asarray(ids), teacher_label_mask=jnp.asarray(labels))


RETRY_GROWTH, RETRY_CAP = 1.1, 0.9  # the authors' retry temperatures: x1.1 per failure, <= 0.9


def retry_temperatures(temperature: float, retries: int) -> tuple[float, ...]:
    """The sampling temperature of each retry of an unparseable teacher reply."""
    out = []
    for _ in range(retries):
        temperature = min(temperature * RETRY_GROWTH, RETRY_CAP)
        out.append(temperature)
    return tuple(out)


def sample_with_retries(sample, sampling: SamplingConfig, key: jax.Array, retries: int):
    """`sample(sampling, key) -> (tokens [N, L], mask, action_mask, valid [N])`, then up to
    `retries` more draws at `retry_temperatures` for the rows whose reply does not parse yet (a
    retry runs only while some row fails; rows that parsed keep their reply)."""
    keys = jax.random.split(key, 1 + retries)
    reply = sample(sampling, keys[0])
    for retry_key, temperature in zip(keys[1:], retry_temperatures(sampling.temperature, retries)):
        retry = dataclasses.replace(sampling, temperature=temperature)
        failed = ~reply[3]
        again = jax.lax.cond(
            jnp.any(failed), lambda k, s=retry: sample(s, k), lambda k, r=reply: r, retry_key
        )
        reply = jax.tree.map(
            lambda new, old, f=failed: jnp.where(f.reshape(-1, *[1] * (new.ndim - 1)), new, old),
            again,
            reply,
        )
    return reply


def sft_labels(
    reply_mask: jax.Array, action_mask: jax.Array, teacher_valid: jax.Array, agent_valid: jax.Array
) -> jax.Array:
    """bool[N, L]: the teacher reply's tokens outside its action span, for rows where both the
    teacher's reply and the agent's own reply parse."""
    keep = teacher_valid.astype(bool) & agent_valid.astype(bool)
    return reply_mask.astype(bool) & ~action_mask.astype(bool) & keep[:, None]


@functools.partial(jax.jit, static_argnames=("defs", "config", "sampling"))
def teacher_replies(
    defs: ModelDefs,
    state: TrainState,
    config: UpdateConfig,
    batch: Batch,
    key: jax.Array,
    sampling: SamplingConfig,
    spec: ReplySpec,
) -> Batch:
    """`batch` with the merged teacher's sampled replies to its prompts as SFT targets (the
    teacher's weights as the update step sees them: factored adapters or a dense delta).

    A teacher reply that does not parse is sampled again, up to `config.teacher_retries` times at
    `retry_temperatures` (each retry runs only when some reply still fails). Labels are kept for
    turns where both the agent's reply and the teacher's parse (the method labels valid replies);
    the action span is never labelled.
    """
    adapters, base = teacher_weights(state, config)
    turns, envs = batch.turns, batch.envs
    flat = lambda x: x.reshape(turns * envs, *x.shape[2:])
    params = nnx.merge_state(adapters, base)

    def sample(sampling: SamplingConfig, key: jax.Array):
        sample_key, parse_key = jax.random.split(key)
        out = generate(
            defs.model,
            params,
            flat(batch.prompt_ids),
            flat(batch.prompt_mask),
            flat(batch.image_patches),
            sample_key,
            sampling,
            batch.image_grid_thw,
        )
        parsed = jax.vmap(parse_reply_ids, (0, 0, None, 0))(
            out.tokens, out.mask, spec, jax.random.split(parse_key, turns * envs)
        )
        return out.tokens, out.mask.astype(bool), parsed.action_mask, parsed.valid.astype(bool)

    reply = sample_with_retries(sample, sampling, key, config.teacher_retries)
    tokens, mask, action_mask, valid = reply
    labels = sft_labels(mask, action_mask, valid, flat(batch.valid))
    unflat = lambda x: x.reshape(turns, envs, *x.shape[1:])
    return batch.replace(teacher_ids=unflat(tokens), teacher_label_mask=unflat(labels))


__all__ = [
    "retry_temperatures",
    "sample_with_retries",
    "sft_labels",
    "teacher_replies",
    "with_oracle_corrections",
]
