"""Batched autoregressive sampling: a prefill of the (left-padded) prompts into a fixed-size KV
cache, then a `lax.while_loop` of one-token decode steps that stops when every row has written an
EOS id or the token budget is spent.

Functional form: `generate(graphdef, params, prompt_ids, prompt_mask, image_patches, key, config)`
merges the NNX model inside the trace, so the trainer passes whichever parameters it wants (the
policy's, or the merged teacher's LoRA state) without recompiling. `sample` is `generate` under
`jax.jit` with the graph definition, the `SamplingConfig` and the image grid static: it compiles
once per (batch, prompt length, image grid, config) and never again for new prompts, keys or
parameters of the same shapes. Inside that single computation the cache is a loop carry that XLA
updates in place. For callers that want the two halves apart (prefill once, then decode), the
jitted `sample_prefill` / `sample_decode` pair hands the cache across the call boundary and
`sample_decode` donates it: the loop updates those buffers in place and hands them back.

Per-step processing, in transformers' order: repetition penalty -> action constraint (optional) ->
temperature -> top-k -> top-p; then a categorical draw (or argmax in greedy mode).

Two log-probs come back for every sampled token (see `SampleOutput`): `logp` under the processed
distribution actually sampled from, and `logp_raw` under `log_softmax(logits / temperature)` of the
model's own logits. PPO's old log-probs must be `logp_raw`: it equals what a full forward gives,
`rl.token_logprobs(forward logits, tokens, temperature)`, and the update reads it as is; `logp`
depends on the penalty, the truncation and the constraint, which the update step does not apply.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from gtr_turbo_jax import rl
from gtr_turbo_jax.models.text import KVCache
from gtr_turbo_jax.rollout import logits_processors as lp
from gtr_turbo_jax.rollout.constraint import START_STATE, ActionConstraint, advance, allowed_tokens

ImageGrid = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling settings (hashable: a `jax.jit` static argument).

    max_new_tokens: the reply budget (the output width).
    temperature: divides the logits (> 0); also the temperature of `logp_raw`.
    top_k: keep the k most likely tokens (0: off). top_p: nucleus mass (1.0: off).
    repetition_penalty: HF's rule over the prompt's and the reply's tokens so far (1.0: off);
      the prompt's padding does not count (HF's `generate` also penalizes the pad id there).
    greedy: argmax of the processed logits instead of a draw (evaluation).
    eos_ids: ids that end a row (the EOS itself is part of the reply). pad_id: fills after it.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    greedy: bool = False
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r}: need an int >= 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature!r}: need a float > 0")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r}: need an int >= 0 (0 turns it off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r}: need a float in (0, 1] (1 turns it off)")
        if not self.repetition_penalty > 0:
            raise ValueError(
                f"repetition_penalty={self.repetition_penalty!r}: need a float > 0 (1 is off)"
            )
        if not isinstance(self.eos_ids, tuple) or any(i < 0 for i in self.eos_ids):
            raise ValueError(f"eos_ids={self.eos_ids!r}: need a tuple of non-negative ints")

    @classmethod
    def paper(cls, max_new_tokens: int, eos_ids: tuple[int, ...], **changes) -> SamplingConfig:
        """GTR-Turbo's rollout sampling: temperature 0.2, top-k 5, repetition penalty 1.2."""
        settings = dict(temperature=0.2, top_k=5, repetition_penalty=1.2) | changes
        return cls(max_new_tokens=max_new_tokens, eos_ids=eos_ids, **settings)


class SampleOutput(NamedTuple):
    """A batch of replies, `[B, max_new_tokens]`, left-aligned.

    tokens: sampled ids (`pad_id` after a row's EOS). mask: True up to and including the EOS.
    logp: log-prob of each token under the distribution it was drawn from (penalty, constraint,
      temperature, top-k and top-p applied; in greedy mode the same processed logits).
    logp_raw: log-prob under `log_softmax(model logits / temperature)` only: the policy's
      log-prob that PPO needs (equals `rl.token_logprobs` of a full forward at that temperature).
    logp_unit: the same at temperature 1 (the agent's side of the thought KL to the teacher).
    entropy: the entropy (nats) of `softmax(model logits)` at each position (temperature 1).
    All are 0 where mask is False. lengths: int32[B], the number of reply tokens per row.
    The update reads `logp_raw`, `logp_unit` and `entropy` instead of re-scoring the replies
    (`UpdateConfig.rescore`); a scripted reply (`reply_fn`) may leave the last two None (zeros).
    """

    tokens: jax.Array
    mask: jax.Array
    logp: jax.Array
    logp_raw: jax.Array
    lengths: jax.Array
    logp_unit: jax.Array | None = None
    entropy: jax.Array | None = None


class Prefilled(NamedTuple):
    """The state after the prompt: the cache, the first reply token's logits and the token
    history the repetition penalty looks at (`None` when the penalty is off)."""

    cache: KVCache
    logits: jax.Array  # float32[B, V]
    seen: jax.Array | None  # bool[B, V]


def _image_inputs(image_patches: jax.Array | None, image_grid: ImageGrid | None) -> dict:
    if (image_patches is None) != (image_grid is None):
        raise ValueError(
            f"image_patches is {'None' if image_patches is None else 'given'} but image_grid is "
            f"{image_grid!r}: pass both (one static (t, h, w) grid per row) or neither"
        )
    if image_patches is None:
        return {}
    chex.assert_rank(image_patches, 3)
    return dict(image_patches=image_patches, image_grid_thw=tuple(image_grid))


def prefill(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    image_patches: jax.Array | None,
    config: SamplingConfig,
    image_grid: ImageGrid | None = None,
) -> Prefilled:
    """Runs the left-padded prompts `[B, T]` into a cache with room for the whole reply."""
    chex.assert_rank([prompt_ids, prompt_mask], 2)
    chex.assert_equal_shape([prompt_ids, prompt_mask])
    model = nnx.merge(graphdef, params)
    # The last sampled token is never fed back, so the reply needs max_new_tokens - 1 slots.
    max_length = prompt_ids.shape[1] + config.max_new_tokens - 1
    out = model.prefill(
        prompt_ids,
        prompt_mask,
        max_length,
        return_logits=False,
        **_image_inputs(image_patches, image_grid),
    )
    # Left padding: every row's last prompt token is at T-1; only its logits are needed.
    logits = model.logits(out.hidden_states[:, -1])
    seen = None
    if config.repetition_penalty != 1.0:
        seen = lp.seen_tokens(prompt_ids, prompt_mask, logits.shape[-1])
    return Prefilled(cache=out.cache, logits=logits, seen=seen)


def process_logits(
    logits: jax.Array,
    config: SamplingConfig,
    seen: jax.Array | None = None,
    allowed: jax.Array | None = None,
) -> jax.Array:
    """The distribution to sample from (float32 `[B, V]`, -inf where removed)."""
    return _process(logits, config, seen, allowed)[0]


def _process(
    logits: jax.Array,
    config: SamplingConfig,
    seen: jax.Array | None,
    allowed: jax.Array | None,
) -> tuple[jax.Array, jax.Array | None]:
    """`process_logits`, and with top-k on the k candidates' ids `[B, k]` (largest first)."""
    logits = logits.astype(jnp.float32)
    if config.repetition_penalty != 1.0:
        logits = lp.repetition_penalty(logits, seen, config.repetition_penalty)
    if allowed is not None:
        logits = jnp.where(allowed, logits, lp.NEG_INF)
    logits = logits / config.temperature
    if not 0 < config.top_k < logits.shape[-1]:  # off, or keeps the whole vocabulary
        if config.top_p < 1.0:
            logits = lp.top_p_filter(logits, config.top_p)
        return logits, None
    values, candidates = lp.top_k(logits, config.top_k)
    logits = lp.keep_at_least(logits, values[:, -1:])
    if config.top_p < 1.0:
        logits = lp.top_p_filter_top_k(logits, values, candidates, config.top_p)
    return logits, candidates


def _chosen(log_probs: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]


def _log_prob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """`log_softmax(logits)[row, tokens[row]]` without materialising the log-softmax."""
    return _chosen(logits, tokens) - jax.nn.logsumexp(logits, axis=-1)


def _draw(
    key: jax.Array,
    step: jax.Array,
    processed: jax.Array,
    candidates: jax.Array | None,
    gumbel: jax.Array | None,
) -> jax.Array:
    """A categorical draw per row at reply position `step`.

    Without top-k, `jax.random.categorical` over the vocabulary with the key folded with `step`.
    With top-k, only the k candidates take part: the argmax of their logits plus Gumbel noise
    (the Gumbel-max draw `categorical` makes), read from `gumbel [width, B, k]`, drawn for the
    whole reply at once (one RNG call per reply rather than per step: on CPU each call costs
    ~15% of a small decode step). The same distribution, as every other logit is -inf (up to
    exact ties at the k-th value, which top-k filtering keeps and this draw cuts to k).
    """
    if candidates is None:
        step_key = jax.random.fold_in(key, step)
        return jax.random.categorical(step_key, processed, axis=-1).astype(jnp.int32)
    candidate_logits = jnp.take_along_axis(processed, candidates, axis=-1)
    return _chosen(candidates, jnp.argmax(candidate_logits + gumbel[step], axis=-1))


class _Loop(NamedTuple):
    step: jax.Array  # the reply position the carried logits are for
    logits: jax.Array
    cache: KVCache
    seen: jax.Array | None
    state: jax.Array | None  # constraint automaton state per row
    done: jax.Array
    out: SampleOutput


def _emit(
    loop: _Loop, key: jax.Array, gumbel: jax.Array | None, config: SamplingConfig, constraint
) -> _Loop:
    """Chooses the token at `loop.step` from `loop.logits` and records it."""
    allowed = None if constraint is None else allowed_tokens(constraint, loop.state)
    processed, candidates = _process(loop.logits, config, loop.seen, allowed)
    if config.greedy:
        # The first candidate is the argmax (lowest index among equal maxima), as jnp.argmax.
        tokens = (
            jnp.argmax(processed, axis=-1).astype(jnp.int32)
            if candidates is None
            else candidates[:, 0]
        )
    else:
        tokens = _draw(key, loop.step, processed, candidates, gumbel)
    live = ~loop.done
    logp = _log_prob(processed, tokens)
    logp_raw = _log_prob(loop.logits / config.temperature, tokens)
    logp_unit = _log_prob(loop.logits.astype(jnp.float32), tokens)
    entropy = rl.token_entropy(loop.logits)
    tokens = jnp.where(live, tokens, config.pad_id)
    out = loop.out
    column = (slice(None), loop.step)
    record = lambda buffer, values: buffer.at[column].set(jnp.where(live, values, 0.0))
    out = out._replace(
        tokens=out.tokens.at[column].set(tokens),
        mask=out.mask.at[column].set(live),
        logp=record(out.logp, logp),
        logp_raw=record(out.logp_raw, logp_raw),
        logp_unit=record(out.logp_unit, logp_unit),
        entropy=record(out.entropy, entropy),
    )
    seen = loop.seen if loop.seen is None else lp.mark_seen(loop.seen, tokens, live)
    state = loop.state
    if constraint is not None:
        state = jnp.where(live, advance(constraint, state, tokens), state)
    done = loop.done | (live & jnp.isin(tokens, jnp.asarray(config.eos_ids, jnp.int32)))
    return loop._replace(seen=seen, state=state, done=done, out=out)


def decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prefilled: Prefilled,
    key: jax.Array,
    config: SamplingConfig,
    constraint: ActionConstraint | None = None,
) -> tuple[SampleOutput, Prefilled]:
    """The decode loop from a prefill: samples up to `max_new_tokens` per row.

    Also returns the loop's final state (the cache holding the prompt and the reply but its last
    token, the logits that chose the last token, the penalty's history), in the same buffers as
    `prefilled` when the jitted `sample_decode` is given them (it donates them).
    """
    batch, vocab = prefilled.logits.shape
    width = config.max_new_tokens
    if constraint is not None and constraint.next_state.shape[1] != vocab:
        raise ValueError(
            f"the action constraint covers {constraint.next_state.shape[1]} token ids but the "
            f"model has {vocab}: build it with vocab_size={vocab}"
        )
    empty = SampleOutput(
        tokens=jnp.full((batch, width), config.pad_id, jnp.int32),
        mask=jnp.zeros((batch, width), bool),
        logp=jnp.zeros((batch, width), jnp.float32),
        logp_raw=jnp.zeros((batch, width), jnp.float32),
        lengths=jnp.zeros((batch,), jnp.int32),
        logp_unit=jnp.zeros((batch, width), jnp.float32),
        entropy=jnp.zeros((batch, width), jnp.float32),
    )
    loop = _Loop(
        step=jnp.zeros((), jnp.int32),
        logits=prefilled.logits.astype(jnp.float32),
        cache=prefilled.cache,
        seen=prefilled.seen,
        state=None if constraint is None else jnp.full((batch,), START_STATE, jnp.int32),
        done=jnp.zeros((batch,), bool),
        out=empty,
    )
    gumbel = None
    if not config.greedy and 0 < config.top_k < vocab:
        gumbel = jax.random.gumbel(key, (width, batch, config.top_k), jnp.float32)
    emit = functools.partial(_emit, key=key, gumbel=gumbel, config=config, constraint=constraint)
    loop = emit(loop)

    def keep_going(loop: _Loop) -> jax.Array:
        return (loop.step + 1 < width) & ~jnp.all(loop.done)

    def step(loop: _Loop) -> _Loop:
        previous = (slice(None), loop.step)
        model = nnx.merge(graphdef, params)
        out = model.decode_step(
            loop.out.tokens[previous], loop.cache, valid=loop.out.mask[previous]
        )
        return emit(loop._replace(step=loop.step + 1, logits=out.logits[:, 0], cache=out.cache))

    loop = jax.lax.while_loop(keep_going, step, loop)
    out = loop.out._replace(lengths=jnp.sum(loop.out.mask, axis=-1, dtype=jnp.int32))
    return out, Prefilled(cache=loop.cache, logits=loop.logits, seen=loop.seen)


def generate(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    image_patches: jax.Array | None,
    key: jax.Array,
    config: SamplingConfig,
    image_grid: ImageGrid | None = None,
    constraint: ActionConstraint | None = None,
) -> SampleOutput:
    """Prefill + decode, traceable (call it inside a larger jit, e.g. the compiled rollout).

    prompt_ids, prompt_mask: `[B, T]`, left-padded. image_patches: `[B, N, patch_dim]` with the
    static `image_grid` (t, h, w) of every row's image, or None. key: a PRNG key (unused if greedy).
    constraint: the optional legal-action automaton (`rollout.constraint`).
    """
    prefilled = prefill(
        graphdef, params, prompt_ids, prompt_mask, image_patches, config, image_grid
    )
    return decode(graphdef, params, prefilled, key, config, constraint)[0]


_STATIC = ("graphdef", "config", "image_grid")
sample = jax.jit(generate, static_argnames=_STATIC)
sample_prefill = jax.jit(prefill, static_argnames=_STATIC)
sample_decode = jax.jit(
    decode, static_argnames=("graphdef", "config"), donate_argnames=("prefilled",)
)
